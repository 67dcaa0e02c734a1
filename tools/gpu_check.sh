#!/usr/bin/env bash
# One-call GPU check: CUDA build, the `cuda` tests, compute-sanitizer memcheck on the CPU-vs-CUDA
# parity tests, one benchmark point per op family, and a timed training step of each model. At most
# BUDGET seconds in all (default 450: a rerun still fits a 15-minute device lease); every step has
# its own timeout, and a step that fails or runs out of time does not stop the next.
#
# Prepare here (the device machine has no internet and no trimesh), once per checkout:
#   pip download trimesh --no-deps --only-binary=:all: --python-version 3.12 -d .whl
# then call the device tool with
#   run(command="bash tools/gpu_check.sh", carry=[".whl"], timeout_s=540)
# (.whl/ is git-ignored; without it the tests that need trimesh skip, none of them is a cuda test).
#
# $OUT (default ./gpu_check_out) receives three files, within the device's 8-file limit:
#   summary.txt   one line per check: PASS/FAIL/TIMEOUT/SKIP, seconds, the headline figure
#   gpu_check.log everything the steps printed, in order
#   results.jsonl the benchmark and training-step rows (copy into benchmarks/results/)
# The build works against the device's torch 2.11 (python 3.12) as well as CI's 2.13.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.txt
RESULTS=$OUT/results.jsonl
: >"$LOG"
: >"$SUMMARY"
: >"$RESULTS"
DEADLINE=$((SECONDS + ${BUDGET:-450}))
TMP=$(mktemp -d)
DEV=${GPU_CHECK_DEVICE:-cuda}  # cpu: a dry run of the plumbing on a machine without a GPU
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0

# step NAME MAX_SECONDS CMD...: runs CMD under a timeout (the smaller of MAX_SECONDS and what the
# budget has left), output to $TMP/NAME.out and the log; sets step_rc and step_secs.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  ((left < limit)) && limit=$left
  step_out=$TMP/$name.out
  : >"$step_out"
  if ((limit < 10)); then
    step_rc=124 step_secs=0
    echo "== $name: skipped, the budget is spent" >>"$LOG"
    return
  fi
  echo "== $name (timeout ${limit}s): $*" >>"$LOG"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$step_out" 2>&1
  step_rc=$?
  step_secs=$((SECONDS - start))
  cat "$step_out" >>"$LOG"
  echo "-- $name: exit $step_rc after ${step_secs}s" >>"$LOG"
}

# report NAME HEADLINE: one summary line from step_rc / step_secs.
report() {
  local verdict=PASS
  if ((step_rc == 124 || step_rc == 137)); then verdict=TIMEOUT; elif ((step_rc != 0)); then verdict=FAIL; fi
  [ "$verdict" = PASS ] || status=1
  printf '%-26s %-7s %4ss  %s\n' "$1" "$verdict" "$step_secs" "$2" | tee -a "$SUMMARY"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; $PY --version
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; nvcc --version | tail -1; } \
  >>"$LOG" 2>&1
head -4 "$LOG" | tr '\n' ' ' | sed 's/^/machine: /' >>"$SUMMARY"
echo >>"$SUMMARY"

if ls .whl/*.whl >/dev/null 2>&1; then
  step wheels 60 $PY -m pip install -q --no-index --find-links .whl --no-deps trimesh
  report wheels "$(ls .whl | tr '\n' ' ')"
fi

ARCH=${TORCH_CUDA_ARCH_LIST:-$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 9.0)}
export TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=${MAX_JOBS:-16}
[ "$DEV" = cuda ] && export FORCE_CUDA=1
step build 200 $PY setup.py build_ext --inplace
report build "arch $ARCH: $($PY -c 'import invrender, json; print(json.dumps(invrender.build_info()))' 2>&1 | tail -1)"

# Registers, shared memory and stack of every kernel (the raymarch backward is the heavy one).
step ptxas 60 nvcc -std=c++17 -O3 -arch=sm_${ARCH/./} -Xptxas -v -Icsrc -c csrc/raymarch/raymarch_cuda.cu -o "$TMP/rm.o"
report ptxas-raymarch "max $(grep -o 'Used [0-9]* registers' "$step_out" | sort -k2 -n | tail -1), \
stack up to $(grep -o '[0-9]* bytes stack frame' "$step_out" | sort -n | tail -1)"

step cuda-tests 100 $PY -m pytest -m cuda -q -rs -p no:cacheprovider tests
report cuda-tests "$(grep -E '[0-9]+ (passed|failed|skipped|error)' "$step_out" | tail -1)"

SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
step memcheck 80 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck --report-api-errors no \
  --error-exitcode 9 $PY -m pytest -m cuda -q -x -p no:cacheprovider -k "matches_cpu" tests
report memcheck "$(grep -E 'ERROR SUMMARY' "$step_out" | tail -1) $(grep -E '[0-9]+ (passed|failed)' "$step_out" | tail -1)"

# One point per benchmark, at the sizes of the issues' CUDA targets; --unchecked also times the ops
# with their input value checks off (checks_overhead).
bench() {
  local name=$1 only=$2
  rm -rf "$TMP/bench"
  step "bench-$name" "$3" env INVRENDER_BENCH_RESULTS="$TMP/bench" \
    $PY "benchmarks/bench_$name.py" --device "$DEV" --unchecked --only "$only"
  cat "$TMP"/bench/*.jsonl >"$TMP/rows.jsonl" 2>/dev/null
  cat "$TMP/rows.jsonl" >>"$RESULTS"
  report "bench-$name" "$($PY - "$TMP/rows.jsonl" <<'EOF'
import json, sys
out = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    ours = r["results"].get("invrender") or {}
    p = ",".join(f"{k}={v}" for k, v in r["params"].items())
    s = f"{r['op']}[{p}] {ours.get('forward_backward_ms', float('nan')):.2f} ms f+b"
    if "speedup_forward_backward" in r:
        s += f" {r['speedup_forward_backward']:.1f}x ref"
    if "checks_overhead" in r:
        s += f" checks x{r['checks_overhead']:.2f}"
    out.append(s)
print("; ".join(out) or "no rows")
EOF
)"
}
bench voxels "B=32,C=1,N=64" 45
bench raymarch "B=32,C=1,image=64" 45
bench raster "B=32,layers=25" 45
bench chamfer "B=32,N=4096" 45

step train-step 60 $PY tools/time_train_step.py --device "$DEV" --steps 10 --out "$RESULTS"
report train-step "$(grep '^train step' "$step_out" | tr '\n' ' ')"

echo "status $status, $SECONDS s in all" | tee -a "$SUMMARY"
rm -rf "$TMP"
exit $status
