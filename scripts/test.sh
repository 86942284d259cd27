#!/usr/bin/env bash
# One command: set up mmrl, then run the default test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
. .venv/bin/activate 2>/dev/null || true
python -m pytest -q "$@"
