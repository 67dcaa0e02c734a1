"""invrender.allocator: freed CPU memory kept in the heap (no page faults every training step)."""

import os
import subprocess
import sys
import textwrap

import pytest

from invrender import allocator


def _run(code: str, env=None, *args: str) -> str:
    """Runs ``code`` in a fresh interpreter (the allocator setting is process-wide); its stdout."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                         env=dict(os.environ, **(env or {})), timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


# The two allocator settings, as a snippet's first lines: it reads the mode from its last argument.
_SETTING = """
    import sys, torch
    from invrender.allocator import retain_freed_memory
    if sys.argv[-1] == "retain":
        assert retain_freed_memory(True)
"""


glibc = pytest.mark.skipif(allocator._libc() is None, reason="needs glibc's mallopt")


@glibc
def test_freed_large_blocks_are_reused_without_new_page_faults():
    # Allocate and free a 256 MiB tensor ten times: with glibc's defaults every allocation is a fresh mmap whose
    # pages fault in again (65536 minor faults each); once freed memory is retained, the block is reused.
    code = _SETTING + """
    import resource
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):  # the heap grows to its size (the first reuse may still fault once)
        torch.ones(64 << 20)
    start = faults()
    for _ in range(10):
        torch.ones(64 << 20)
    print(faults() - start)
    """
    default, retained = (int(_run(code, None, mode)) for mode in ("default", "retain"))
    pages = (256 << 20) // 4096
    assert default >= 8 * pages      # the defaults fault (nearly) every one of the 10 allocations in again
    # retained: the freed block is reused; the kernel's NUMA balancing may still count a few hinting faults
    assert retained <= default // 2


@glibc
def test_freed_block_stays_resident_only_when_retained():
    code = _SETTING + """
    def resident():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    base = resident()
    x = torch.ones(64 << 20)
    del x
    print(resident() - base)
    """
    assert int(_run(code, None, "default")) < (16 << 20)    # unmapped on free
    assert int(_run(code, None, "retain")) >= (256 << 20)   # kept in the heap for the next step


@glibc
def test_retain_is_reversible_and_reported():
    out = _run("""
        from invrender import allocator
        assert not allocator.is_retained()
        assert allocator.retain_freed_memory(True) and allocator.is_retained()
        assert allocator.retain_freed_memory(False) and not allocator.is_retained()
        print("ok")
    """)
    assert out.strip() == "ok"


@glibc
def test_cli_helper_respects_the_environment_switch():
    code = """
        from invrender import allocator
        print(allocator.retain_for_cli(), allocator.is_retained())
    """
    assert _run(code, {"INVRENDER_RETAIN_FREED_MEMORY": "0"}).split() == ["False", "False"]
    assert _run(code, {"INVRENDER_RETAIN_FREED_MEMORY": "1"}).split() == ["True", "True"]


def test_not_glibc_returns_false(monkeypatch):
    monkeypatch.setattr(allocator, "_libc", lambda: None)
    assert allocator.retain_freed_memory(True) is False
