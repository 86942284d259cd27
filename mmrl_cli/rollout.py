"""On-device rollout storage, GAE, and minibatching.

The buffer is preallocated once as (n_steps, n_envs, ...) tensors on the training device, so a
rollout never leaves the device and never allocates.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class RolloutBuffer:
    """One rollout of `n_steps` x `n_envs` transitions plus its advantages and returns."""

    def __init__(self, n_steps: int, n_envs: int, observation_spec: dict, device: torch.device):
        self.n_steps, self.n_envs = n_steps, n_envs
        shape = (n_steps, n_envs)
        self.obs = {k: torch.zeros(shape + tuple(s), dtype=dt, device=device) for k, (s, dt) in observation_spec.items()}
        self.actions = torch.zeros(shape, dtype=torch.int64, device=device)
        self.logprobs = torch.zeros(shape, device=device)
        self.values = torch.zeros(shape, device=device)
        self.rewards = torch.zeros(shape, device=device)
        self.dones = torch.zeros(shape, device=device)  # 1 where the episode ended at this step
        self.advantages = torch.zeros(shape, device=device)
        self.returns = torch.zeros(shape, device=device)

    def store_obs(self, t: int, obs: dict) -> None:
        """Copy the observations of step `t` (envs may reuse their buffers afterwards)."""
        for k, v in obs.items():
            self.obs[k][t].copy_(v)

    def store(self, t: int, action, logprob, value, reward, done) -> None:
        """Record what happened at step `t` in every env."""
        self.actions[t] = action
        self.logprobs[t] = logprob
        self.values[t] = value
        self.rewards[t] = reward
        self.dones[t] = done

    def compute_advantages(self, last_value: torch.Tensor, gamma: float, gae_lambda: float) -> None:
        """Generalised Advantage Estimation (Schulman et al. 2016), backwards over the rollout.

        ``dones[t]`` cuts the bootstrap at episode ends: the value after a finished episode
        belongs to the next one. Time-limit truncations are handled before this point by
        adding ``gamma * V(final observation)`` to the reward, as Stable-Baselines3 does.
        """
        not_done = 1.0 - self.dones
        next_values = torch.cat([self.values[1:], last_value.unsqueeze(0)])
        # All TD errors at once; only the backward recursion A_t = delta_t + decay_t * A_{t+1}
        # has to run step by step (one fused multiply-add per step).
        deltas = self.rewards + gamma * next_values * not_done - self.values
        decay = (gamma * gae_lambda) * not_done
        advantage = torch.zeros_like(last_value)
        for t in reversed(range(self.n_steps)):
            advantage = torch.addcmul(deltas[t], decay[t], advantage)
            self.advantages[t] = advantage
        self.returns = self.advantages + self.values

    def minibatches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[dict]:
        """Shuffled minibatches over all transitions (the last partial one is dropped)."""
        total = self.n_steps * self.n_envs
        flat = {
            "obs": {k: v.flatten(0, 1) for k, v in self.obs.items()},
            "actions": self.actions.flatten(), "logprobs": self.logprobs.flatten(),
            "values": self.values.flatten(), "advantages": self.advantages.flatten(),
            "returns": self.returns.flatten(),
        }
        if batch_size == total:  # one full batch: order does not change its gradient, skip the shuffle
            yield flat
            return
        order = torch.randperm(total, generator=generator, device="cpu").to(self.actions.device)
        for start in range(0, total - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.index_select(0, idx) for k, v in flat.items() if k != "obs"}
            batch["obs"] = {k: v.index_select(0, idx) for k, v in flat["obs"].items()}
            yield batch
