"""Errors in what a user asked for, as opposed to bugs.

Library code raises these where it checks its input (a config key, a path, a device, a category). The
command line (``invrender ...``) prints them as one line, ``invrender: error: <message>``, and exits with
status 2, as argparse does for a bad argument; every other exception keeps its traceback. Each class
also derives from the builtin exception a Python caller would expect (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

__all__ = ["UsageError", "ConfigError", "MissingInputError"]


class UsageError(Exception):
    """Base class: an invalid request by the user, reported without a traceback by the command line."""

    def __str__(self) -> str:
        # The message itself, also for the OSError subclasses (which would add "[Errno ...]" to several args).
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigError(UsageError, ValueError):
    """An invalid setting: an unknown config key, a value of the wrong type or range, an unknown data
    category, an unavailable device."""


class MissingInputError(UsageError, FileNotFoundError):
    """A file or directory the user named (config file, run directory, data root) does not exist."""
