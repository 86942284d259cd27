"""`mmrl train`: check the config (a resumed run: its saved config plus the overrides), make or
reopen the run directory, train (under torchrun when it asks for several ranks), summarise.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from ..config import ConfigError, TrainConfig, validate
from ..exits import fail, interrupted_status
from ..tables import print_summary

# The modules that load torch (compat, launcher, runs, the trainer) are imported where they are used,
# after the config has validated: a mistyped value is answered in well under a second.


def check_train(cfg: DictConfig, overrides: list[str]) -> None:
    """Everything `mmrl train` needs settled before it starts (resumed runs: the saved run too)."""
    typed = validate(cfg)
    from ..compat import check_compatible
    from ..launcher import check_rendezvous
    from ..preflight import check_output_dir
    from ..runs import resumed_run

    resuming = typed.resume is not None
    if resuming:
        run = resumed_run(typed.resume, typed.runs_root, overrides)
        typed = run.typed
        check_output_dir("resume", run.run_dir, probe=False)
    else:
        check_output_dir("runs_root", typed.runs_root)
    check_compatible(typed, resuming=resuming)
    check_rendezvous(typed.hardware)


def make_run_dir(cfg: TrainConfig) -> Path:
    """A new, unique run directory: <runs_root>/<date>/<time>[-<run_name>] (or Hydra's job dir)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ..runs import new_run_dir

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        run_dir = Path(hydra_cfg.runtime.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    return new_run_dir(cfg)


def train_task(cfg: DictConfig) -> float:
    """Hydra task of `mmrl train`: validate, make (or reopen) the run directory, train, summarise."""
    from hydra.core.hydra_config import HydraConfig

    from ..algos import AlgorithmFault
    from ..checkpoint import CheckpointError
    from ..compat import check_compatible
    from ..launcher import latest_checkpoint, launch_distributed
    from ..preflight import check_output_dir
    from ..runs import RUN_DIR_VARIABLE, RunLocked, resumed_run
    from ..trainer import NumericalFault, train

    resume_from = None
    launched_dir = os.environ.get(RUN_DIR_VARIABLE)  # set when this process is one rank of `hardware.nproc`
    try:
        if cfg.get("resume") is not None:  # the config comes from the run's checkpoint
            run = resumed_run(str(cfg.resume), str(cfg.runs_root), list(HydraConfig.get().overrides.task))
            typed, run_dir, resume_from = run.typed, run.run_dir, run.checkpoint_dir
            for note in run.notes:
                print(f"mmrl train: warning: {note}", file=sys.stderr)
            check_output_dir("resume", run_dir, probe=False)
        else:
            typed = validate(cfg)
            check_output_dir("runs_root", typed.runs_root)
        check_compatible(typed, resuming=resume_from is not None)
    except ConfigError as e:
        fail("train", str(e))
    if typed.hardware.distributed and launched_dir is None and "LOCAL_RANK" not in os.environ:
        # A job of a Hydra launcher (-m, submitit): start the ranks from here, in the job's directory.
        job_dir = run_dir if resume_from is not None else make_run_dir(typed)
        status = launch_distributed(typed, [o for o in HydraConfig.get().overrides.task], job_dir)
        if status:
            raise SystemExit(status)
        return json.loads((job_dir / "summary.json").read_text())["heldout_success_rate"]
    if launched_dir is not None:  # one rank: the launcher made the run directory; a restart resumes in it
        run_dir = Path(launched_dir)
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if resume_from is None or restarts > 0:
            resume_from = latest_checkpoint(run_dir) or resume_from
        if restarts and os.environ.get("RANK", "0") == "0":  # the trainer says which checkpoint it resumes from
            print(f"mmrl train: elastic restart {restarts} of hardware.max_restarts={typed.hardware.max_restarts}",
                  file=sys.stderr)
    elif resume_from is None:
        try:
            run_dir = make_run_dir(typed)
        except OSError as e:
            fail("train", f"runs_root: could not create a run directory under {typed.runs_root} ({e.strerror})")
    # Nothing is written into a resumed run before the trainer has loaded its checkpoint and
    # locked it: a refused checkpoint or a run in use leaves it as it was.
    main_rank = os.environ.get("RANK", "0") == "0"
    hint = f"resume with: mmrl train resume={run_dir}"
    try:
        summary = train(typed, run_dir, resume_from=resume_from)
    except KeyboardInterrupt:
        print(f"\nmmrl train: stopped at once; the last periodic checkpoint is in {run_dir}/checkpoints ({hint})", file=sys.stderr)
        raise SystemExit(interrupted_status()) from None
    except (NumericalFault, AlgorithmFault) as e:
        kept = f"the last good checkpoint is kept in {run_dir}/checkpoints" if (run_dir / "checkpoints").is_dir() \
            else "no checkpoint had been written yet"
        print(f"mmrl train: error: {e}; {kept}", file=sys.stderr)
        raise SystemExit(1) from None
    except (CheckpointError, RunLocked) as e:
        fail("train", f"resume: {e}")
    except OSError as e:  # a full disk, a directory made read-only: a fault, not bad input (exit 1)
        print(f"mmrl train: error: {io_failure(e)}; {kept_checkpoint(run_dir)} ({hint})", file=sys.stderr)
        raise SystemExit(1) from None
    if summary["stopped_by"]:
        if main_rank:
            print(f"mmrl train: stopped by {summary['stopped_by']} after {summary['steps']:,} steps; checkpoint saved; {hint}",
                  file=sys.stderr)
        raise SystemExit(143 if summary["stopped_by"] == "SIGTERM" else 130)
    if main_rank:
        if summary["reached_stop_at"]:
            print(f"mmrl train: validation success {summary['validation_success_rate']:.3f} reached "
                  f"eval.stop_at={typed.eval.stop_at} after {summary['steps']:,} steps: done")
        print_summary(summary)
    return summary["heldout_success_rate"]


def io_failure(error: OSError) -> str:
    """What an OSError says, in one line: the errno text and the path it concerns."""
    what = error.strerror or str(error).splitlines()[0] or type(error).__name__
    return f"{what}: {error.filename}" if error.filename else what


def kept_checkpoint(run_dir: Path) -> str:
    """Where the newest intact checkpoint of `run_dir` is (the run continues from it), in words."""
    from ..launcher import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    return f"the last checkpoint, {latest.name}, is intact in {run_dir}/checkpoints" if latest \
        else "no checkpoint had been written yet"
