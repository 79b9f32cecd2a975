#!/usr/bin/env bash
# GPU checks and benchmarks on a machine with one NVIDIA GPU, offline, without installing the project.
#
#   bash benchmarks/gpu.sh               # from anywhere; results in benchmarks/results/gpu/
#   OUT=/tmp/gpu bash benchmarks/gpu.sh  # results elsewhere
#
# Needs python3 with torch (CUDA), triton, numpy, safetensors, tokenizers, tqdm, matplotlib and pytest.
# Wheels in .whl/ (e.g. flash-linear-attention's fla-core) are installed into /tmp/site first.
# Steps (each time-limited; a failing step is recorded and the next one still runs):
#   1. CUDA tests: pytest -m gpu (the op tests' CUDA cases included) -> $OUT/tests.log   (150 s)
#   2. fastweights bench ops --device cuda --rules sum delta gated_delta --peers
#                                                                    -> $OUT/ops_cuda.md, ops_cuda.json (200 s)
#   3. fastweights bench lm --device cuda                            -> $OUT/lm_cuda.md, lm_cuda.json   (150 s)
#   4. benchmarks/kernel_resources.py: registers, spills and shared memory of every Triton kernel as
#      the driver loaded it, beside `bench kernels`' offline prediction   -> $OUT/kernels.md, kernels.json (120 s)
# $OUT/summary.txt lists each step's exit code (124: timed out); the script exits 1 if any step failed.
# Worst case (every step hitting its limit): under 11 minutes.

set -u
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
: >"$OUT/summary.txt"
failed=0

# record NAME RC: append the step's exit code to the summary.
record() {
    echo "$1: exit $2" | tee -a "$OUT/summary.txt"
    [ "$2" -eq 0 ] || failed=1
}

shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    echo "== installing ${#wheels[@]} wheel(s) from .whl/ into /tmp/site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
    record wheels $?
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

echo "== machine"
nvidia-smi -L
python3 - <<'EOF'
import importlib

import torch

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: {torch.cuda.is_available()}")
for name in ("triton", "fla"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as e:  # a missing or broken optional package is information, not a failure
        print(f"{name}: not importable ({type(e).__name__}: {e})")
EOF

echo "== CUDA tests (timeout 150 s)"
# the tests meet many shapes: launch the preferred configurations (verified offline by bench kernels)
# instead of measuring each shape's first; step 4 exercises the measured choice
FASTWEIGHTS_TRITON_FIT=preferred timeout 150 python3 -m pytest -q -m gpu tests 2>&1 | tee "$OUT/tests.log"
record tests "${PIPESTATUS[0]}"

echo "== bench ops --device cuda (timeout 200 s)"
timeout 200 python3 -m fastweights.cli bench ops --device cuda --rules sum delta gated_delta --dtypes float32 bfloat16 \
    --dk 64 256 --peers \
    --json "$OUT/ops_cuda.json" 2>&1 | tee "$OUT/ops_cuda.md"
record "bench ops" "${PIPESTATUS[0]}"

echo "== bench lm --device cuda (timeout 150 s)"
timeout 150 python3 -m fastweights.cli bench lm --device cuda --json "$OUT/lm_cuda.json" 2>&1 | tee "$OUT/lm_cuda.md"
record "bench lm" "${PIPESTATUS[0]}"

echo "== kernel resources on this GPU vs the offline prediction (timeout 120 s)"
timeout 120 python3 benchmarks/kernel_resources.py --json "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.md"
record "kernel resources" "${PIPESTATUS[0]}"

echo "== summary ($OUT)"
cat "$OUT/summary.txt"
exit "$failed"
