#!/usr/bin/env bash
# GTP on one GPU, checked and timed in at most five minutes; results written to OUTDIR.
#
#   scripts/gpu_check.sh OUTDIR                                   # on a CUDA machine
#   scripts/gpu_check.sh OUTDIR --device cpu --small --compile-backend aot_eager   # CPU dry run
#
# OUTDIR/summary.md has one section per check; each check also writes its own file.
# Checks (the Python ones are in scripts/gpu_checks.py, each guarded so the rest still run):
#   nvidia-smi; the CUDA tests (pytest -m gpu); CPU vs CUDA propagated ids and zeroed entries
#   on assets/chelsea.png (fp32, TF32 off); untraced GTP / ToMe / pruning forwards under
#   torch.cuda.set_sync_debug_mode("error"); kernels per block at batch 1 and 64 (profiler);
#   the app's explore / compare / throughput on CUDA; `gtp.measure.bench` for full (timm's fused
#   attention), GTP theta 1 and 0.6, ToMe and pruning on deit_small and deit_base, batch 1,
#   64 and 256, float32 and bf16, eager, then compiled while the time budget lasts.
set -u
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR [extra gpu_checks.py options]}
shift
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
BUDGET=${GPU_CHECK_SECONDS:-290}
DEADLINE=$(( $(date +%s) + BUDGET ))
left() { echo $(( DEADLINE - $(date +%s) )); }

: > "$OUT/summary.md"
{ nvidia-smi || echo "nvidia-smi: not available"; } > "$OUT/nvidia-smi.txt" 2>&1
echo "nvidia-smi: $(head -n 12 "$OUT/nvidia-smi.txt" | grep -m1 -E 'H100|H200|A100|NVIDIA|not available' || echo see nvidia-smi.txt)" >> "$OUT/summary.md"

timeout 75 python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_path.py tests/test_trace_and_gmacs.py \
    > "$OUT/pytest_gpu.txt" 2>&1
echo "pytest -m gpu: exit $? ($(tail -n 1 "$OUT/pytest_gpu.txt"))" >> "$OUT/summary.md"

# The Python checks stop starting new sections at the deadline; the timeout is the hard stop.
timeout $(( $(left) + 10 )) python scripts/gpu_checks.py --out "$OUT" --deadline "$DEADLINE" "$@" \
    > "$OUT/gpu_checks.log" 2>&1
echo "gpu_checks.py: exit $? (log: gpu_checks.log)" >> "$OUT/summary.md"
cat "$OUT/summary.md"
