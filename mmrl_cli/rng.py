"""Seeding, and capturing/restoring every global random number generator as plain data.

Checkpoints store these states so a resumed run draws exactly the random numbers the
uninterrupted run would have drawn. Torch states are uint8 tensors; Python's and NumPy's are
lists of integers: nothing here needs pickle.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def global_rng_state() -> dict:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    version, internal, gauss = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": [version, list(internal), gauss],
        "numpy": {"name": name, "key": key.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_global_rng_state(state: dict) -> None:
    """Restore what `global_rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np.array(np_state["key"], dtype=np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def load_generator_state(generator: torch.Generator, state: torch.Tensor) -> bool:
    """Restore a torch.Generator; False (and a deterministic reseed) if the state is from another
    device type (a CPU generator's state does not fit a CUDA one and vice versa)."""
    try:
        generator.set_state(state)
        return True
    except RuntimeError:
        generator.manual_seed(int(torch.as_tensor(state, dtype=torch.uint8).to(torch.int64).sum()))
        return False
