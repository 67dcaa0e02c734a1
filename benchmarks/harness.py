"""Shared benchmark harness: times an op and its reference side by side in one run.

For each case it measures forward and forward+backward separately (median of repeats after
warm-up, synchronising CUDA), the memory an op keeps (bytes of tensors saved for backward that are
not inputs, on every device; peak allocated memory on CUDA), and the ratio to the reference. Results
are appended as JSON lines to ``benchmarks/results/<device>.jsonl`` and summarised in a table.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

# Where results are appended; INVRENDER_BENCH_RESULTS redirects them (tools/gpu_check.sh collects its own).
RESULTS_DIR = os.environ.get("INVRENDER_BENCH_RESULTS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return name


def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda-" + "".join(c if c.isalnum() else "-" for c in device_name(device).lower()).strip("-")
    return "cpu"


def git_commit() -> Optional[str]:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def model_step_parser(description: str) -> "argparse.ArgumentParser":
    """The options every model training-step benchmark takes: ``--device``, ``--paper`` (the paper's sizes),
    ``--quick`` (tiny sizes, one repeat), ``--batch``, ``--repeats``, ``--threads`` (default 1), ``--no-record``."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu")
    p.add_argument("--paper", action="store_true", help="the paper's sizes")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-record", action="store_true")
    return p


def run_meta(device: torch.device) -> dict:
    """What every benchmark row records about its run: commit, device, torch, threads, the load average at the
    start (other work on the machine skews CPU times) and the UTC date."""
    return {"commit": git_commit(), "device": device_name(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average_start": os.getloadavg()[0],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_samples(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> List[float]:
    """Wall times of ``repeats`` calls of fn() in seconds, after ``warmup`` untimed ones (device synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of fn() in milliseconds."""
    return statistics.median(time_samples(fn, device, warmup, repeats)) * 1e3


def saved_bytes(fn: Callable[[], torch.Tensor], inputs: List[torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward, not counting the inputs themselves."""
    input_ptrs = {t.untyped_storage().data_ptr() for t in inputs}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in input_ptrs:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def peak_memory(fn: Callable[[], None], device: torch.device) -> Optional[int]:
    """Peak CUDA memory allocated by fn() above what was allocated before (None on CPU)."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - base


@dataclass
class Case:
    """One benchmark case: `make()` returns the differentiable inputs; `ours` / `reference` map them to an output."""

    op: str
    params: Dict[str, object]
    make: Callable[[torch.device], List[torch.Tensor]]
    ours: Callable[..., torch.Tensor]
    reference: Optional[Callable[..., torch.Tensor]] = None
    extra: Dict[str, Callable[..., torch.Tensor]] = field(default_factory=dict)
    # Peers without gradients (e.g. scipy): timed forward only.
    forward_only: Dict[str, Callable[..., object]] = field(default_factory=dict)


def _measure_impl(fn, inputs, device, warmup, repeats):
    def forward():
        with torch.no_grad():
            return fn(*inputs)

    def forward_backward():
        out = fn(*inputs)
        out.backward(torch.ones_like(out))

    for t in inputs:
        t.grad = None
    res = {
        "forward_ms": time_fn(forward, device, warmup, repeats),
        "forward_backward_ms": time_fn(forward_backward, device, warmup, repeats),
        "saved_bytes": saved_bytes(lambda: fn(*inputs), inputs),
        "peak_bytes": peak_memory(forward_backward, device),
    }
    for t in inputs:
        t.grad = None
    return res


@contextlib.contextmanager
def value_checks_off():
    """invrender's input value checks (finite inputs, indices in range: one device-to-host copy per op
    call) switched off, to measure what they cost."""
    import invrender

    invrender._C._set_value_checks(False)
    try:
        yield
    finally:
        invrender._C._set_value_checks(True)


def run_cases(cases: List[Case], device: torch.device, warmup: int, repeats: int, record: bool = True,
              unchecked: bool = False) -> List[dict]:
    """Times every case's implementations on ``device``; with ``unchecked`` also invrender with its
    value checks off (row "unchecked", and ``checks_overhead`` = checked / unchecked forward+backward)."""
    rows = []
    meta = run_meta(device)
    for case in cases:
        inputs = case.make(device)
        impls = {"invrender": case.ours}
        if case.reference is not None:
            impls["reference"] = case.reference
        impls.update(case.extra)
        results = {}
        for name, fn in impls.items():
            try:
                results[name] = _measure_impl(fn, inputs, device, warmup, repeats)
            except torch.cuda.OutOfMemoryError:  # the reference may not fit
                results[name] = None
                torch.cuda.empty_cache()
        if unchecked:
            with value_checks_off():
                results["unchecked"] = _measure_impl(case.ours, inputs, device, warmup, repeats)
        for name, fn in case.forward_only.items():
            results[name] = {"forward_ms": time_fn(lambda: fn(*inputs), device, warmup, repeats),
                             "forward_backward_ms": None, "saved_bytes": None, "peak_bytes": None}
        row = dict(meta, op=case.op, params=case.params, results=results)
        ours, theirs = results.get("invrender"), results.get("reference")
        if ours and theirs:
            row["speedup_forward"] = theirs["forward_ms"] / ours["forward_ms"]
            row["speedup_forward_backward"] = theirs["forward_backward_ms"] / ours["forward_backward_ms"]
        if ours and results.get("unchecked"):
            row["checks_overhead"] = ours["forward_backward_ms"] / results["unchecked"]["forward_backward_ms"]
        rows.append(row)
        print_row(row)
        del inputs
    if record:
        record_rows(rows, device)
    return rows


def record_rows(rows: List[dict], device: torch.device) -> str:
    """Append result rows as JSON lines to ``benchmarks/results/<device>.jsonl``; returns the path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, device_slug(device) + ".jsonl")
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"appended {len(rows)} results to {os.path.relpath(path)}")
    return path


def _fmt_bytes(n):
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


_header_printed = set()


def print_row(row):
    key = row["op"]
    if key not in _header_printed:
        _header_printed.add(key)
        print(f"\n{row['op']}  ({row['device']}, torch {row['torch']}, {row['threads']} threads)")
        print(f"{'case':38s} {'impl':10s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'saved':>10s} {'peak':>10s} {'x fwd':>7s} {'x f+b':>7s}")
    case = " ".join(f"{k}={v}" for k, v in row["params"].items())
    for name, r in row["results"].items():
        if r is None:
            print(f"{case:38s} {name:10s} {'OOM':>9s}")
            continue
        sp = ""
        if name == "invrender" and "speedup_forward" in row:
            sp = f"{row['speedup_forward']:7.2f} {row['speedup_forward_backward']:7.2f}"
        fb = "-" if r["forward_backward_ms"] is None else f"{r['forward_backward_ms']:.2f}"
        print(f"{case:38s} {name:10s} {r['forward_ms']:9.2f} {fb:>11s} "
              f"{_fmt_bytes(r['saved_bytes']):>10s} {_fmt_bytes(r['peak_bytes']):>10s} {sp}")
        case = ""


def parse_args(description: str):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="all", help="cpu, cuda or all (every device present)")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke run)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--unchecked", action="store_true",
                   help="also time invrender with its input value checks off (their cost: checks_overhead)")
    p.add_argument("--only", default=None, metavar="K=V[,K=V]",
                   help="run only the cases with these parameter values, e.g. cloud=duplicates or B=32,N=64")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "all":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
    return args, devices


def main(description: str, make_cases: Callable[[bool], List[Case]],
         keep_on_cpu: Optional[Callable[[dict], bool]] = None, cpu_repeats: int = 5) -> None:
    """Entry point shared by the bench_*.py scripts: parses the arguments and runs the cases on
    every requested device. ``keep_on_cpu(params)`` drops full-size cases too slow for a CPU."""
    args, devices = parse_args(description)
    for device in devices:
        cases = make_cases(args.quick)
        if device.type == "cpu" and not args.quick and keep_on_cpu is not None:
            cases = [c for c in cases if keep_on_cpu(c.params)]
        if args.only:
            wanted = [item.partition("=")[::2] for item in args.only.split(",")]
            cases = [c for c in cases if all(str(c.params.get(k)) == v for k, v in wanted)]
        repeats = args.repeats or (2 if args.quick else (cpu_repeats if device.type == "cpu" else 20))
        run_cases(cases, device, warmup=args.warmup, repeats=repeats, record=not args.no_record,
                  unchecked=args.unchecked)
