"""Optional test dependencies: a module that is missing skips the tests that use it, instead of
failing the collection of its whole file (the GPU machine runs ``pytest -m cuda`` without trimesh)."""

import importlib

import pytest


class _Missing:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__"):  # introspection by pytest or copy: an ordinary missing attribute
            raise AttributeError(attr)
        pytest.skip(f"{self._name} is not installed")


def optional_import(name: str):
    """The module ``name``, or a stand-in whose first attribute access skips the running test."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return _Missing(name)


def requires(name: str):
    """Mark a test that needs module ``name`` (directly or through the library) as skipped without it."""
    try:
        importlib.import_module(name)
        missing = False
    except ImportError:
        missing = True
    return pytest.mark.skipif(missing, reason=f"{name} is not installed")
