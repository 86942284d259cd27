#!/usr/bin/env bash
# Set up mmrl: a virtual environment in .venv (unless one is active), the CPU torch wheel where
# no torch is installed (a bare `torch` requirement would pull the multi-GB CUDA build), then
# mmrl itself with its test extras. Source it or run it; it is safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -d .venv ] || python3 -m venv .venv
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[dev]'
