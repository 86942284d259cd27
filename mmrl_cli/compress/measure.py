"""What a compressed model costs: parameters, multiply-accumulates, file size, CPU latency.

Latency is measured side by side: every model is timed on the same batch of observations, in
turns (model A, B, C, A, B, C, ...), on a fixed number of CPU threads, and the median is kept, so
machine noise hits all models alike. MACs come from torch's FLOP counter (matrix products,
convolutions and attention's batched products; 1 MAC = 2 FLOPs), per observation, counting
zeros as work (dense kernels do).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def parameter_counts(policy: nn.Module) -> tuple[int, int]:
    """(all parameters, non-zero parameters)."""
    params = list(policy.parameters())
    return sum(p.numel() for p in params), sum(int(torch.count_nonzero(p)) for p in params)


@torch.inference_mode()
def macs_per_step(policy: nn.Module, obs: dict[str, torch.Tensor]) -> float:
    """Multiply-accumulates of one forward pass per observation (one acting step of one env)."""
    batch = len(next(iter(obs.values())))
    counter = FlopCounterMode(display=False)
    with counter:
        policy(obs)
    return counter.get_total_flops() / 2 / batch


@torch.inference_mode()
def latencies_ms(policies: dict[str, nn.Module], obs: dict[str, torch.Tensor], repeats: int, threads: int,
                 progress=None) -> dict[str, float]:
    """Median milliseconds of one forward pass on the batch `obs`, per model, timed in turns on CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for policy in policies.values():  # warm-up: allocator, kernels' first-call costs
            policy.eval()
            for _ in range(3):
                policy(obs)
        times: dict[str, list[float]] = {name: [] for name in policies}
        for _ in range(repeats):
            for name, policy in policies.items():
                start = time.perf_counter()
                policy(obs)
                times[name].append((time.perf_counter() - start) * 1e3)
            if progress is not None:
                progress()
    finally:
        torch.set_num_threads(previous)
    return {name: statistics.median(t) for name, t in times.items()}
