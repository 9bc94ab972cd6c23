#!/usr/bin/env bash
# GTP on one GPU in two invocations of at most 4.5 minutes each (a 15-minute device budget holds the
# machine's start and both); each writes exactly ONE archive, OUTDIR/gpu_check_<PART>.tar.gz.
#
#   scripts/gpu_check.sh --part A OUTDIR    # versions, nvidia-smi, the CUDA tests (pytest -m gpu and
#                                           # the Triton tests on CUDA), parity, syncs, kernel counts,
#                                           # the app, the eager bench, a profile of GTP theta 0.6
#   scripts/gpu_check.sh --part B OUTDIR    # the bench eager vs CUDA graphs, then vs torch.compile
#   scripts/gpu_check.sh --part A OUTDIR --device cpu --small --compile-backend aot_eager   # CPU dry run
#
# The archive holds summary.md (one section per check, read it first), one JSON per Python section
# (scripts/gpu_checks.py), the pytest logs and nvidia-smi. Every section is guarded: a failure is
# written down and the next one runs. GPU_CHECK_SECONDS (default 265) is the budget of one part.
set -u
usage="usage: scripts/gpu_check.sh --part A|B OUTDIR [gpu_checks.py options]"
[ "${1:-}" = "--part" ] || { echo "$usage" >&2; exit 2; }
PART=${2:-}
case "$PART" in A|B) ;; *) echo "$usage" >&2; exit 2 ;; esac
OUT=${3:?$usage}
shift 3
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_SECONDS:-265} ))
left() { echo $(( DEADLINE - $(date +%s) )); }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
S="$WORK/summary.md"

echo "# GTP GPU check, part $PART, $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$S"
{ nvidia-smi || echo "nvidia-smi: not available"; } > "$WORK/nvidia-smi.txt" 2>&1
echo "nvidia-smi: $(grep -m1 -oE 'NVIDIA [A-Z0-9][A-Za-z0-9 -]+|not available' "$WORK/nvidia-smi.txt" || echo see nvidia-smi.txt)" >> "$S"

if [ "$PART" = A ]; then
    # the tests marked gpu (they skip without CUDA), then the Triton kernels' tests (compiled on CUDA,
    # interpreted on a CPU); each capped so the checks below keep their time
    timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$WORK/pytest_gpu.txt" 2>&1
    echo "pytest -m gpu: exit $? ($(tail -n 1 "$WORK/pytest_gpu.txt"))" >> "$S"
    TRITON_TESTS=$(ls tests/test_*triton*.py tests/test_fused_path.py 2>/dev/null)
    if [ -n "$TRITON_TESTS" ]; then
        timeout 90 python3 -m pytest -q -p no:cacheprovider $TRITON_TESTS > "$WORK/pytest_triton.txt" 2>&1
        echo "pytest Triton tests: exit $? ($(tail -n 1 "$WORK/pytest_triton.txt"))" >> "$S"
    else
        echo "pytest Triton tests: none (no tests/test_*triton*.py)" >> "$S"
    fi
fi

# The Python checks stop starting sections at the deadline; the timeout is the hard stop.
timeout $(( $(left) > 5 ? $(left) + 10 : 15 )) python3 scripts/gpu_checks.py --part "$PART" --out "$WORK" \
    --deadline "$DEADLINE" "$@" > "$WORK/gpu_checks.log" 2>&1
echo "gpu_checks.py: exit $? (log: gpu_checks.log)" >> "$S"
tar czf "$OUT/gpu_check_$PART.tar.gz" -C "$WORK" .
cat "$S"
echo "archive: $OUT/gpu_check_$PART.tar.gz"
