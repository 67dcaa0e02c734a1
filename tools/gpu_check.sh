#!/usr/bin/env bash
# On a GPU machine: build invrender with CUDA, run the `cuda` tests (and compute-sanitizer memcheck
# on them), run every benchmark on the GPU, and leave logs and results under $OUT (default
# ./gpu_check_out).
#
#   bash tools/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
status=0
step() { echo "== $*" | tee -a "$OUT/summary.txt"; }

nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt" | head -15
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
fi
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST MAX_JOBS=${MAX_JOBS:-16}

step "build (arch $TORCH_CUDA_ARCH_LIST)"
$PY -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
$PY -c "import invrender, json; print(json.dumps(invrender.build_info()))" | tee -a "$OUT/summary.txt"

step "cuda tests"
$PY -m pytest -m cuda -v -rs 2>&1 | tee "$OUT/cuda_tests.log" | tail -30
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
tail -1 "$OUT/cuda_tests.log" >> "$OUT/summary.txt"

step "compute-sanitizer memcheck on the cuda tests"
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SAN" --tool memcheck --error-exitcode 9 $PY -m pytest -m cuda -q -x \
  -p no:cacheprovider 2>&1 | tee "$OUT/memcheck.log" | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck.log" | tail -2 >> "$OUT/summary.txt"

step "benchmarks (cuda)"
for b in benchmarks/bench_*.py; do
  $PY "$b" --device cuda 2>&1 | tee "$OUT/$(basename "$b" .py).log" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
cp benchmarks/results/cuda-*.jsonl "$OUT/" 2>/dev/null || true
step "done (status $status)"
exit $status
