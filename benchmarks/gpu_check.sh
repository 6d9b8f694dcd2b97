#!/usr/bin/env bash
# Kernel check on an NVIDIA GPU, installing nothing: the log-prob kernel's and the packing's tests (CUDA ones
# included), then the log-prob benchmark on the GPU grid and the packed training step. Writes
# benchmarks/results/logprobs-gpu-<date>.{md,json}, logprobs-gpu-<date>-tests.txt and packing-gpu-<date>.{md,json}.
# Runs in under 10 minutes: each step has its own time limit.
#
#   bash benchmarks/gpu_check.sh            # uses .venv/bin/python if present, else python
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=.venv/bin/python

stamp=$(date -u +%Y-%m-%d)
out=benchmarks/results/logprobs-gpu-$stamp
mkdir -p benchmarks/results

if ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to torch; nothing to check" >&2
    exit 2
fi

{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    timeout 150 $PY -m pytest tests/kernels/test_linear_logprobs.py tests/unit/test_packing.py -q -p no:cacheprovider -rs
    echo "pytest exit status: $?"
} 2>&1 | tee "$out-tests.txt"
tests_status=$(tail -n 1 "$out-tests.txt" | awk '{print $NF}')

timeout 300 $PY benchmarks/bench_logprobs.py --device cuda --quick --repeats 3 --out "$out"
bench_status=$?

# the training step, padded vs prefix-shared packed rows, at a width where the projections dominate
timeout 150 $PY benchmarks/bench_packing.py --device cuda --hidden 2048 --layers 4 --micro-batch 8 \
    --shapes 128:128,512:256,1024:256,256:1024 --out "benchmarks/results/packing-gpu-$stamp"
packing_status=$?

echo "tests: exit $tests_status; benchmark: exit $bench_status; packing: exit $packing_status; results in $out.md," \
     "$out.json, $out-tests.txt, benchmarks/results/packing-gpu-$stamp.md"
[ "$tests_status" = 0 ] && [ "$bench_status" = 0 ] && [ "$packing_status" = 0 ]
