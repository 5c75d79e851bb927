#!/usr/bin/env bash
# GPU checks on a CUDA machine: the CUDA tests, then the kernel benchmark in bf16 (ratios vs dense SDPA).
#   bash scripts/gpu_check.sh [OUT_DIR]        # writes OUT_DIR/{env.txt,tests.log,bench.log,cuda-bfloat16.*}
# Runs from the repository root with the machine's own python3 (torch with CUDA); nothing is installed.
set -uo pipefail
out=${1:-results/bench_kernels/gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/tests.log"
# PATTERNS / LENGTHS: space-separated, passed as YAML lists (--patterns "[a, b]")
patterns=$(echo ${PATTERNS:-sliding_window bigbird local_2d} | sed 's/ /, /g')
lengths=$(echo ${LENGTHS:-4096 16384} | sed 's/ /, /g')
timeout "${BENCH_TIMEOUT:-300}" python3 -m hf_sparse.cli bench-kernels --device cuda --dtype bfloat16 \
  --patterns "[$patterns]" --lengths "[$lengths]" \
  --repeats 10 --warmup 3 --out "$out" 2>&1 | tee "$out/bench.log"
