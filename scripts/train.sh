#!/usr/bin/env bash
# One command: set up mmrl, then run `mmrl train` with its defaults (extra args are overrides).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
. .venv/bin/activate 2>/dev/null || true
mmrl train "$@"
