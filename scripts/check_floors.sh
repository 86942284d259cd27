#!/usr/bin/env bash
# Check the dependency floors: install the LOWEST versions of mmrl's dependencies that are known
# to work (exact `==` pins) into a throwaway virtual environment, then run the core test suite
# against them. If this passes, the floors are true; if it fails, a floor is too low.
#
# The versions below were found by bisecting released versions one package at a time (Python 3.11,
# torch 2.13.0 CPU), then confirmed together. Why each floor sits where it does:
#   transformers 5.9.0   ViTModel.layers (a ModuleList directly on the model) first appears in 5.9.0;
#                        5.8.1 and earlier: AttributeError: 'ViTModel' object has no attribute 'layers'
#   gymnasium    1.1.0   gymnasium.vector.AutoresetMode is new in 1.1.0 (1.0.0: ImportError)
#   hydra-core   1.3.0   1.2.0 does not import on Python 3.11 (dataclass "mutable default" ValueError)
#   omegaconf    2.2.1   the lowest that hydra-core 1.3 accepts (it requires omegaconf>=2.2,<2.4)
#   safetensors  0.4.3   transformers 5.9.0 requires it (ImportError below 0.4.3)
#   rich         10.7.0  rich.console.Group is new in 10.7.0 (10.6.0: ImportError)
#   tensorboard  2.17.1  2.17.0 and earlier use np.string_, removed in NumPy 2 (reading event files fails)
#   numpy        1.23.2  the oldest NumPy with a Python 3.11 wheel; nothing older could be tested here
#   minigrid     2.5.0   2.3.x registers its envs through an entry point that gymnasium 1.x no longer
#                        loads, so gym.make("BabyAI-...") raises NameNotFound
# torch is not bisected (only the 2.13.0 CPU wheel is available here); pillow and pytest are left
# for pip to resolve. Takes a few minutes; nothing outside the temporary directory is modified
# except the repository's (git-ignored) mmrl.egg-info from the editable install.
set -euo pipefail
cd "$(dirname "$0")/.."

FLOORS=(
  "transformers==5.9.0"
  "gymnasium==1.1.0"
  "hydra-core==1.3.0"
  "omegaconf==2.2.1"
  "safetensors==0.4.3"
  "rich==10.7.0"
  "tensorboard==2.17.1"
  "numpy==1.23.2"
  "minigrid==2.5.0"   # optional (dev/bench extra); without it the MiniGrid tests would be skipped
)

# Throwaway venv in a temporary directory, removed on exit (pass or fail).
tmp="$(mktemp -d -t mmrl-floors.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
py="$tmp/venv/bin/python"

echo "== installing torch 2.13.0 (CPU) and the floor versions into $tmp/venv"
"$py" -m pip install -q --upgrade pip
# One resolver call, so the floors' own dependencies (tokenizers, huggingface-hub, protobuf, ...)
# are chosen consistently with all of the pins; pip fails here if the pins contradict each other.
"$py" -m pip install -q "torch==2.13.0" "${FLOORS[@]}" pillow "pytest>=8"
# The project itself without its dependencies, so nothing above gets upgraded.
"$py" -m pip install -q --no-deps -e .

echo "== installed versions"
"$py" -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|tokenizers|huggingface.hub|gymnasium|hydra-core|omegaconf|safetensors|rich|tensorboard|numpy|minigrid|pillow) '

echo "== running the test suite against the floors"
if "$py" -m pytest -q -x -p no:cacheprovider \
    tests/test_models.py tests/test_env.py tests/test_cartpole_and_gym.py \
    tests/test_config.py tests/test_eval.py tests/test_cli.py tests/test_monitor.py tests/test_algos.py; then
  echo "PASS: the dependency floors work together (${FLOORS[*]})"
else
  echo "FAIL: the tests fail at the dependency floors above; a floor is too low" >&2
  exit 1
fi
