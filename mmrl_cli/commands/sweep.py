"""`mmrl sweep`: check the study (storage, search space at every bound, memory, resumability),
run or resume it with its workers, retrain the best configurations, report.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ..compat import check_compatible
from ..compose import group_options
from ..config import ConfigError
from ..exits import checked, interrupted_status
from ..tables import print_sweep


def check_sweep(cfg: DictConfig, overrides: list[str]) -> None:
    """Everything `mmrl sweep` needs settled: a valid study config, a usable storage (URL, driver,
    SQLite file or reachable server), a base `mmrl train` config and a valid, runnable config at
    every bound and choice of the search space, memory for the workers, a writable sweep
    directory, and (when resuming) the same study as before. No message shows a storage password."""
    from ..preflight import check_output_dir
    from ..sweep.run import check_resumable, check_workers_fit
    from ..sweep.settings import short_path, validate_sweep
    from ..sweep.study import check_storage, mask_secrets

    typed = None
    try:
        typed = validate_sweep(cfg)
        check_storage(typed.hpo, Path(typed.directory))  # first: quick, and names the storage problem
        if typed.hpo.html:
            try:
                import plotly  # noqa: F401
            except ImportError:
                raise ConfigError("hpo.html: interactive plots need plotly (pip install plotly), or set hpo.html=false") from None
        if f"{typed.hpo.study_name}-best" in group_options("exp"):
            raise ConfigError(f"hpo.study_name: {typed.hpo.study_name}-best would shadow the shipped exp preset of that name")
        check_trial_configs(typed)
        check_workers_fit(typed)
        key = "sweep_dir" if typed.sweep_dir else "runs_root"
        try:
            check_output_dir(key, typed.directory)
        except OSError as e:  # what the filesystem refuses beyond the length checks (e.g. ENAMETOOLONG)
            raise ConfigError(f"{key}: {short_path(typed.directory)} cannot be used ({e.strerror})") from None
        check_resumable(typed)
    except ConfigError as e:  # whatever a check quotes, a password stays masked
        raise ConfigError(mask_secrets(str(e), typed.hpo.storage if typed else None)) from None


def check_trial_configs(config) -> None:
    """The base trial config, and the config at each bound or choice of each searched key, are valid."""
    from ..compose import compose_train_config
    from ..sweep.settings import parse_space

    base = list(config.hpo.train)
    try:
        check_compatible(compose_train_config(base))
    except ConfigError as e:
        raise ConfigError(f"hpo.train: {e}") from None
    for param in parse_space(config.hpo.space):
        for value in param.extremes():
            try:
                check_compatible(compose_train_config(base + [param.override(value)]))
            except ConfigError as e:
                raise ConfigError(f"hpo.space.{param.key}: the value {value!r} gives an invalid run: {e}") from None


def sweep_task(cfg: DictConfig) -> float:
    """Hydra task of `mmrl sweep`: validate, run (or resume) the study, retrain the best, report."""
    from ..sweep import run_sweep, validate_sweep

    typed = checked("sweep", validate_sweep, check_sweep, cfg)
    try:
        results = run_sweep(typed)
    except SystemExit as e:  # the sweep's own stop (its workers stopped) says 130 for any signal
        raise SystemExit(interrupted_status() if e.code == 130 else e.code) from None
    print_sweep(results)
    best = results["best"]
    return best["validation_mean"] if best else float("nan")
