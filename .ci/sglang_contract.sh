#!/usr/bin/env bash
# Contract test against the REAL SGLang argument handling (issue #12): every command line our inference server
# launches SGLang with (ACA and local settings, first launch and relaunch, each target-module setting) goes through
# SGLang's own prepare_server_args -> resolve_once -> check_server_args (tests/contracts/test_sglang_args.py).
#
# Builds a separate venv under build/sglang-contract (ignored by git; reused when its stamp matches) with the sglang
# pinned in inference_image/Dockerfile, installed --no-deps, plus only what importing its launch path needs on a
# machine without a GPU. torch/torchvision are SGLang's own pin (CUDA wheels from PyPI; they import without a GPU,
# and resolution runs with --device cpu). About 2 minutes and 6 GB on a fresh 2-core machine (measured: 118 s).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

SGLANG_VERSION=$(grep -oE 'sglang==[0-9][0-9A-Za-z.+-]*' inference_image/Dockerfile | head -1 | cut -d= -f3)
[ -n "$SGLANG_VERSION" ] || { echo "sglang pin not found in inference_image/Dockerfile" >&2; exit 1; }
# What `from sglang.srt.server_args import prepare_server_args` and the resolution pipeline import (found by
# importing until nothing was missing); versions pinned where SGLang pins them, the rest as resolved on 2026-11-30.
DEPS=(
    "torch==2.14.1" "torchvision==0.29.1" "triton==3.8.0" "transformers==5.19.0" "tokenizers==0.23.2"
    "apache-tvm-ffi==0.1.11" "sentencepiece==0.2.1" "compressed-tensors==0.18.0" "gguf==0.19.0"
    "numpy==2.4.6" "orjson==3.13.0" "psutil==7.2.2" "pybase64==1.5.1" "requests==2.34.2" "packaging==26.4"
    "pillow==13.0.0" "starlette==1.10.0" "msgspec==0.23.0" "pydantic==2.14.4" "pyzmq==27.3.0" "tqdm==4.70.1"
    "ipython==9.18.1" "aiohttp==3.14.5" "dill==0.4.1"
)
VENV=build/sglang-contract
STAMP="sglang==$SGLANG_VERSION ${DEPS[*]}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$STAMP" ]; then
    started=$(date +%s)
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --no-deps "sglang==$SGLANG_VERSION"
    echo "sglang-contract: pip names sglang's GPU-only requirements as not installed; they are left out on purpose"
    "$PY" -m pip install -q "${DEPS[@]}"
    "$PY" -c "from sglang.srt.server_args import prepare_server_args" # fail here, not in the test, if it breaks
    echo "$STAMP" > "$VENV/.stamp"
    echo "sglang-contract: installed sglang $SGLANG_VERSION and its launch-path imports in $(( $(date +%s) - started )) s"
fi

[ -x .venv/bin/python ] || make setup
SGLANG_CONTRACT_PYTHON="$PWD/$PY" .venv/bin/python -m pytest -q -ra tests/contracts/test_sglang_args.py
