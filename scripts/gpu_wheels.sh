#!/usr/bin/env bash
# Fetch, into .whl/ (git-ignored), the wheels a bare GPU machine needs to run mmrl beside its own
# PyTorch: the packages mmrl imports that such a machine's image does not ship (hydra-core,
# omegaconf and antlr4 for the configs, gymnasium and farama-notifications for the envs). Every
# other import (torch, transformers, safetensors, tensorboard, rich, numpy, PIL, yaml, matplotlib)
# comes from the machine's image. Versions are this checkout's virtual environment's, the tested
# set. Run it here (it needs a package index); scripts/gpu_check.sh installs them there.
#
#     bash scripts/gpu_wheels.sh            # then carry .whl with scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. .venv/bin/activate
PACKAGES=(hydra-core omegaconf gymnasium farama-notifications)
pins=()
for name in "${PACKAGES[@]}"; do
  pins+=("$name==$(python -c "import importlib.metadata as m; print(m.version('$name'))")")
done
rm -rf .whl && mkdir -p .whl
# Pure-Python wheels, so the target's Python (3.12 on the lent machines) only has to be named.
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl "${pins[@]}"
# antlr4-python3-runtime (hydra's config grammar) is published as a source archive only: build its wheel.
antlr="antlr4-python3-runtime==$(python -c "import importlib.metadata as m; print(m.version('antlr4-python3-runtime'))")"
python -m pip wheel -q --no-deps -w .whl "$antlr"
ls -1 .whl
