#!/usr/bin/env bash
# The GPU checks as one prepared command for a lent GPU machine (fresh, with its own PyTorch; run
# scripts/gpu_wheels.sh here first and carry .whl). Results go to $OUT (default ./gpu-out).
#
#     bash scripts/gpu_check.sh [tests] [bench] [dreamer]     # default: all three, in this order
#
#   tests    tests/test_gpu.py: env, rollouts and PPO/A2C updates on CUDA (bf16)      -> $OUT/tests.log
#   bench    scripts/bench_gpu.py: the default run's steps/s, the 50M update eager/compiled,
#            fp32/bf16 with MFU, rollouts with CUDA graphs                           -> $OUT/gpu.json
#   dreamer  the model-based claim's runs (`exp=goto-dreamer seed=S eval.stop_at=0.9`, as
#            scripts/claims.py makes them) on the GPU, all seeds at once, each stopped after
#            $DREAMER_SECONDS at the latest (a run stopped so counts for no claim). Run records
#            (config, summary, metrics, TensorBoard; no weights) -> $OUT/dreamer_runs.tar.gz, to
#            unpack into the claims cache here (runs_root=<cache>/model-based/dreamer/seedS), and
#            each run's own summary in $OUT/dreamer_seedS.log. Steps and wall time to 0.9, here:
#            `mmrl compare runs=<cache>/model-based by=seed` (or scripts/claims.py --reuse-only).
#
# Environment: OUT; DREAMER_SEEDS (default "1 2 3 4 5"); DREAMER_SECONDS (default 360);
# DREAMER_OVERRIDES (extra `key=value`s, e.g. a higher algo.train_ratio; they change which claim a
# run can count for); GPU_CHECK_DEVICE=cpu runs everything at toy sizes on a CPU (a check of this
# script, not a measurement: the GPU tests skip, bench_gpu.py runs --tiny).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-$PWD/gpu-out}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SEEDS=${DREAMER_SEEDS:-1 2 3 4 5}
SECONDS_CAP=${DREAMER_SECONDS:-360}
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(tests bench dreamer)
for part in "${PARTS[@]}"; do
  case $part in tests|bench|dreamer) ;; *) echo "gpu_check: unknown part '$part' (expected tests, bench or dreamer)"; exit 2 ;; esac
done
[[ $SECONDS_CAP =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check: DREAMER_SECONDS must be a whole number of seconds > 0, got '$SECONDS_CAP'"; exit 2; }
[[ $DEVICE == cuda || $DEVICE == cpu ]] || { echo "gpu_check: GPU_CHECK_DEVICE must be cuda or cpu, got '$DEVICE'"; exit 2; }
mkdir -p "$OUT" 2>/dev/null && [ -w "$OUT" ] || { echo "gpu_check: OUT=$OUT cannot be created or written"; exit 2; }
export PYTHONUNBUFFERED=1

# The packages the machine's image lacks, from the carried wheels (none needed in CPU mode: the
# venv has them).
if [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing .whl/*.whl failed (run scripts/gpu_wheels.sh here and carry .whl)"; exit 2; }
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi -L
else
  . .venv/bin/activate
  export PYTHONPATH=$PWD
fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"

status=0
for part in "${PARTS[@]}"; do
  echo "== $part ($(date -u +%T))"
  case $part in
    tests)
      python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/tests.log" || status=1 ;;
    bench)
      if [ "$DEVICE" = cuda ]; then python3 scripts/bench_gpu.py --out "$OUT/gpu.json" || status=1
      else python3 scripts/bench_gpu.py --device cpu --tiny --out "$OUT/gpu.json" || status=1; fi ;;
    dreamer)
      runs=/tmp/gpu_check_runs/model-based/dreamer
      rm -rf /tmp/gpu_check_runs
      toy=()
      [ "$DEVICE" = cpu ] && toy=(total_steps=2048 algo.learning_starts=1024 eval.episodes=16 eval.every_steps=1024 hardware.threads=1)
      pids=()
      for seed in $SEEDS; do
        # shellcheck disable=SC2086  # DREAMER_OVERRIDES is a list of words
        timeout -s TERM -k 120 "$SECONDS_CAP" python3 -m mmrl_cli.cli train exp=goto-dreamer "seed=$seed" eval.stop_at=0.9 \
          "hardware.device=$DEVICE" ${DREAMER_OVERRIDES:-} "${toy[@]}" monitor.progress=false \
          "runs_root=$runs/seed$seed" > "$OUT/dreamer_seed$seed.log" 2>&1 &
        pids+=($!)
      done
      for pid in "${pids[@]}"; do wait "$pid" || status=1; done
      tar -czf "$OUT/dreamer_runs.tar.gz" -C /tmp/gpu_check_runs --exclude=checkpoints --exclude=model.safetensors --exclude=.lock model-based \
        || status=1 ;;
  esac
done
echo "== done ($(date -u +%T)), status $status"
exit $status
