"""Training on several processes with torch.distributed: one rank per process, set up by torchrun.

torchrun (`torch.distributed.run`, which `mmrl train hardware.nproc=N` relaunches itself under)
sets RANK, WORLD_SIZE and LOCAL_RANK; `Distributed.from_env()` joins the process group (gloo on
CPU, NCCL on CUDA). Each rank plays its own `rollout.n_envs` envs with its own seed offset, and
every decision that must agree is taken on reduced values, so ranks never diverge or hang:

- gradients: one flat all-reduce (mean) per step, the loss summed in the same buffer, so a step
  that is not finite on any rank is skipped on every rank (CleanRL's multi-GPU PPO does the same
  one-buffer reduction instead of wrapping the policy in DDP, so the fast path still applies);
- advantage normalisation: global mean and std over every rank's minibatch;
- PPO's target-KL early stop: the mean approx KL over ranks;
- stopping (a signal on any rank) and the logged metrics: reduced every update.

Rank 0 alone writes the run directory, TensorBoard and checkpoints. Without torchrun's
variables everything here is the identity (one rank), so the trainer has one code path.
"""

from __future__ import annotations

import datetime as dt
import os

import torch
import torch.distributed as torch_dist

# Rank r plays envs and samples actions with seed + r * RANK_SEED_STRIDE (ranks never share levels).
RANK_SEED_STRIDE = 100_003
# How long a collective waits for a rank that died before raising (torchrun then restarts or stops).
COLLECTIVE_TIMEOUT = dt.timedelta(seconds=120)


def attempt_store(rank: int, world_size: int) -> torch_dist.Store:
    """The rendezvous store torchrun describes, with keys of this restart attempt only.

    torchrun's agent keeps one store across elastic restarts, so without a prefix per attempt a
    restarted rank can read the address a dead rank published and fail to connect to it.
    """
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = torch_dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                                is_master=not agent_hosts_it and rank == 0, timeout=COLLECTIVE_TIMEOUT)
    return torch_dist.PrefixStore(f"mmrl/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


class Distributed:
    """This process's place among the ranks, and the reductions the trainer needs."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, owns_group: bool = False):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.owns_group = owns_group  # this object joined the process group, so it leaves it too

    @classmethod
    def from_env(cls, device_type: str = "cpu", backend: str = "auto") -> "Distributed":
        """Join the process group torchrun describes in the environment (one rank if none)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        owns_group = not torch_dist.is_initialized()
        if owns_group:
            chosen = ("nccl" if device_type == "cuda" else "gloo") if backend == "auto" else backend
            rank = int(os.environ["RANK"])
            torch_dist.init_process_group(chosen, store=attempt_store(rank, world_size), rank=rank, world_size=world_size,
                                          timeout=COLLECTIVE_TIMEOUT)
        return cls(torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns_group)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files and prints."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """This rank's seed for envs and action sampling."""
        return seed + self.rank * RANK_SEED_STRIDE

    # ------------------------------------------------------------------ reductions
    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's initial weights."""
        if self.enabled:
            for tensor in list(module.parameters()) + list(module.buffers()):
                torch_dist.broadcast(tensor.data, src=0)

    def average_gradients(self, parameters: list[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
        """Average every parameter's gradient over the ranks (one flat all-reduce); return the loss
        summed over the ranks (NaN anywhere makes it NaN everywhere, so all ranks skip together)."""
        if not self.enabled:
            return loss
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().float().reshape(1).to(grads[0].dtype)])
        torch_dist.all_reduce(flat)
        loss_sum = flat[-1]
        flat = flat[:-1].div_(self.world_size)
        offset = 0
        for p, g in zip(parameters, grads):
            n = g.numel()
            if p.grad is None:
                p.grad = g
            p.grad.copy_(flat[offset:offset + n].view_as(g))
            offset += n
        return loss_sum

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor (every rank gets it)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        torch_dist.all_reduce(value)
        return value / self.world_size

    def normalized(self, advantages: torch.Tensor) -> torch.Tensor:
        """Zero-mean, unit-std advantages with the statistics of every rank's batch together."""
        stats = torch.stack([advantages.sum(), advantages.square().sum(), advantages.new_tensor(advantages.numel())])
        if self.enabled:
            torch_dist.all_reduce(stats)
        total, squares, count = stats.tolist()
        if count < 2:
            return advantages
        mean = total / count
        std = max((squares - count * mean * mean) / (count - 1), 0.0) ** 0.5
        return (advantages - mean) / (std + 1e-8)

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0])
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return bool(value.item())

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Every metric averaged over ranks (same keys on every rank)."""
        if not self.enabled or not metrics:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        torch_dist.all_reduce(values)
        return dict(zip(keys, (values / self.world_size).tolist()))

    def gather(self, items: list) -> list:
        """Every rank's `items` concatenated (rank 0's first), on every rank."""
        if not self.enabled:
            return items
        gathered = [None] * self.world_size
        torch_dist.all_gather_object(gathered, items)
        return [item for part in gathered for item in part]

    def close(self) -> None:
        """Wait for every rank, then leave the process group if this object joined it."""
        if self.enabled and torch_dist.is_initialized():
            torch_dist.barrier()
            if self.owns_group:
                torch_dist.destroy_process_group()
