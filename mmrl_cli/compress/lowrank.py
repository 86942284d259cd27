"""Low-rank factorisation: each large linear layer W (out x in) becomes U (out x r) @ V (r x in).

From the SVD ``W = U S V^T``, the best rank-r approximation (Eckart-Young) keeps the r largest
singular values; each factor takes sqrt(S) so both are equally scaled. The rank is fixed
(`rank`) or, per layer, the smallest that keeps a fraction `energy` of ``sum(s^2)`` (the
squared Frobenius norm), so the relative reconstruction error is at most ``sqrt(1 - energy)``.
A layer is factorised only when that saves parameters (``r (in + out) < in out``). Works on
``nn.Linear`` and GPT-2's ``Conv1D`` alike.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .structure import LowRankLinear, is_linear_like, linear_weight, replace_module


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values hold at least `energy` of ``sum(s^2)``."""
    squares = singular_values.double().square()
    kept = torch.cumsum(squares, 0) / squares.sum().clamp(min=1e-30)
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype) - 1e-12).item()) + 1


def factorise(layer: nn.Module, rank: int | None, energy: float) -> LowRankLinear | None:
    """`layer` (Linear or Conv1D) as a `LowRankLinear` of the chosen rank; None if that saves nothing."""
    weight = linear_weight(layer).detach().float()
    out_features, in_features = weight.shape
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    r = min(rank if rank is not None else rank_for_energy(s, energy), len(s))
    if r * (in_features + out_features) >= in_features * out_features:
        return None
    root = s[:r].sqrt()
    low = LowRankLinear(in_features, out_features, r).to(layer.weight.device)
    with torch.no_grad():
        low.first.weight.copy_(root.unsqueeze(1) * vh[:r])
        low.second.weight.copy_(u[:, :r] * root)
        low.second.bias.copy_(layer.bias.detach() if layer.bias is not None else torch.zeros(out_features))
    return low


def nothing_to_factorise(policy: nn.Module, rank: int | None, energy: float, min_size: int) -> str | None:
    """Why factorising `policy` would change nothing, as a one-line reason naming the key to change;
    None when at least one layer gets smaller. Reads singular values only, and stops at the first
    layer that would shrink."""
    shapes = [tuple(linear_weight(m).shape) for m in policy.modules() if is_linear_like(m)]
    large = [(name, m) for name, m in policy.named_modules() if is_linear_like(m) and m.weight.numel() >= min_size]
    if not large:
        largest = max((out * inp for out, inp in shapes), default=0)
        return (f"compression=lowrank: nothing to factorise: no linear layer has compression.min_size={min_size:,} "
                f"weights or more (the largest has {largest:,})")
    for _, module in large:
        weight = linear_weight(module).detach().float()
        out, inp = weight.shape
        r = min(rank, out, inp) if rank is not None else rank_for_energy(torch.linalg.svdvals(weight), energy)
        if r * (inp + out) < inp * out:
            return None
    if rank is not None:
        # r (in + out) < in out: the largest rank that saves parameters, over the candidate layers
        best = max(math.ceil(out * inp / (out + inp)) - 1 for out, inp in (tuple(linear_weight(m).shape) for _, m in large))
        return (f"compression.rank: rank {rank} saves no parameters in any layer of compression.min_size={min_size:,} "
                f"weights or more, so compression=lowrank would change nothing (a rank of at most {best} would save)")
    return (f"compression.energy: keeping {energy:g} of the energy needs too high a rank to save parameters in every "
            f"layer of compression.min_size={min_size:,} weights or more: compression=lowrank would change nothing "
            f"(lower compression.energy or set compression.rank)")


def factorise_policy(policy: nn.Module, rank: int | None, energy: float, min_size: int) -> list[dict]:
    """Factorise every linear layer of `policy` with at least `min_size` weights where it saves
    parameters; returns one row per layer (name, shape, rank, relative reconstruction error)."""
    rows = []
    for name, module in list(policy.named_modules()):
        if not is_linear_like(module) or module.weight.numel() < min_size:
            continue
        low = factorise(module, rank, energy)
        if low is None:
            continue
        with torch.no_grad():
            original = linear_weight(module).float()
            error = (low.second.weight @ low.first.weight - original).norm() / original.norm().clamp(min=1e-30)
        rows.append({"layer": name, "shape": list(original.shape), "rank": low.rank, "relative_error": float(error)})
        replace_module(policy, name, low)
    policy.structure_compressed = True
    return rows
