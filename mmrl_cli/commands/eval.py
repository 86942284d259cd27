"""`mmrl eval`: evaluate a run's checkpoint on a split's levels; results JSON, a table and a GIF."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from ..compat import check_compatible
from ..config import ConfigError, validate_eval, with_data_changes
from ..envs.spec import observation_spec_of
from ..exits import fail
from ..tables import print_eval
from ..text import tokenizer_for


def check_eval(cfg: DictConfig, overrides: list[str]) -> None:
    """Everything `mmrl eval` needs settled: a valid eval config, a run, an intact checkpoint, a
    writable <run>/eval."""
    from ..preflight import check_output_dir

    run = evaluated_run(validate_eval(cfg))
    check_output_dir("run", run.run_dir / "eval", probe=False)


def evaluated_run(typed):
    """The run and checkpoint `mmrl eval` evaluates, checked against what this evaluation asks for:
    numbers by kind, paths the filesystem takes, and memory (the envs and forward pass of
    `episodes`, their results, the GIF's frames)."""
    from ..envs.spec import eval_envs
    from ..preflight import check_episode_results, check_gif_memory, check_numbers, check_path
    from ..runs import load_run_checkpoint

    check_numbers(typed)
    check_path("run", typed.run)
    check_path("runs_root", typed.runs_root)
    check_episode_results("episodes", typed.episodes)
    run = load_run_checkpoint(typed.run, typed.runs_root, typed.checkpoint, "run")
    run.typed.hardware = typed.hardware  # evaluated on this command's hardware, not the training run's
    if typed.data:  # the run's env with other settings: its observations must keep the layout the policy reads
        trained = observation_spec_of(run.typed.data, tokenizer_for(run.typed.model))[0]
        run.typed = with_data_changes(run.typed, typed.data)
        changed = observation_spec_of(run.typed.data, tokenizer_for(run.typed.model))[0]
        if changed != trained:
            differs = next(k for k in trained if changed.get(k) != trained[k])
            shape = lambda spec: "x".join(map(str, spec[0])) if spec else "none"  # noqa: E731
            raise ConfigError(f"data: changing {', '.join(f'data.{k}' for k in typed.data)} changes the observation "
                              f"{differs!r} the policy reads ({shape(trained[differs])} -> {shape(changed.get(differs))})")
    if typed.split == "new-wordings" and (run.typed.data.type != "goto" or run.typed.data.wordings == "fixed"):
        raise ConfigError("split: new-wordings needs a run on the built-in task with data.wordings=paraphrase or synonyms "
                          f"(this run: data={run.typed.data.type}"
                          f"{', wordings=' + run.typed.data.wordings if run.typed.data.type == 'goto' else ''})")
    if typed.gif.imagined and run.typed.algo.type != "dreamer":
        raise ConfigError(f"gif.imagined: only a world-model run (algo=dreamer) imagines frames; {run.run_dir} is "
                          f"algo={run.typed.algo.type}")
    check_compatible(run.typed, evaluating=True, inference_batches={"episodes": eval_envs(run.typed.data, typed.episodes)})
    if typed.gif.episodes:
        check_gif_memory(run.typed, typed.gif, observation_spec_of(run.typed.data, tokenizer_for(run.typed.model))[0])
    return run


def eval_task(cfg: DictConfig) -> float:
    """Hydra task of `mmrl eval`: evaluate a run's checkpoint, write eval/results.json and a GIF."""
    from ..evaluation import run_eval

    try:
        typed = validate_eval(cfg)
        run = evaluated_run(typed)
    except ConfigError as e:
        fail("eval", str(e))
    for note in run.notes:
        print(f"mmrl eval: warning: {note}", file=sys.stderr)
    results = run_eval(typed, run.run_dir, run.checkpoint_dir, run.typed)
    print_eval(results)
    return results["success_rate"]
