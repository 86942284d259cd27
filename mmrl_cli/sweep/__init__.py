"""`mmrl sweep`: Bayesian hyperparameter search over any config key with Optuna (samplers,
pruning, resumable multi-worker studies), then the best configurations retrained and exported.

Modules: `settings` (the config and the search space), `study` (storage, sampler, pruner, trial
budget, dead workers), `trial` (one trial = one `train()` run; the worker loop), `run` (the
command: workers and the live table), `report` (retrain, export, plots, report).
"""

from .run import run_sweep
from .settings import SweepConfig, parse_space, validate_sweep

__all__ = ["SweepConfig", "parse_space", "run_sweep", "validate_sweep"]
