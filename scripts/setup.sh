#!/usr/bin/env bash
# Set up mmrl: a virtual environment in .venv (unless one is active; an active one that runs mmrl
# from another checkout is refused, exit 2), the CPU torch wheel where
# no torch is installed (a bare `torch` requirement would pull the multi-GB CUDA build), then
# mmrl itself with its test extras. Run it (`bash scripts/setup.sh`, then `. .venv/bin/activate`);
# it is safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -d .venv ] || python3 -m venv .venv
  . .venv/bin/activate
else
  # An active environment that already runs mmrl from another checkout stays with it: installing
  # this one there would silently switch every `mmrl` of that environment to this checkout's code.
  installed=$(python -I -c "import importlib.util as u, pathlib as p; s = u.find_spec('mmrl_cli'); \
print(p.Path(s.origin).resolve().parent.parent if s and s.origin else '')" 2>/dev/null || true)
  if [ -n "$installed" ] && [ "$installed" != "$(pwd -P)" ]; then
    echo "setup.sh: the active environment $VIRTUAL_ENV runs mmrl from $installed; deactivate it (this checkout then gets its own .venv) or set up from there" >&2
    exit 2
  fi
fi
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[dev]'
