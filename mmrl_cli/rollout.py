"""Rollouts: the on-device buffer (GAE, minibatches) and the collector that fills it.

Every on-policy algorithm learns from the same thing: `n_steps` transitions of `n_envs`
batched envs played by the current policy. The `Collector` owns the env, the current
observation and the action-sampling generator, and plays the policy; the `RolloutBuffer` holds
what it saw, preallocated once as (n_steps, n_envs, ...) tensors on the training device, so a
rollout never leaves the device and never allocates. Algorithms turn a buffer into advantages
with their own discount (`compute_advantages`) and read it whole or in minibatches. A method
that needs more per transition (a teacher's action logits) adds it to `labels` once per
rollout; minibatches carry it along.

A recurrent policy (``policy.recurrent``, `model.memory`) also has a state per env: the
collector carries it from step to step and across rollouts, zeroes it where an episode starts,
and the buffer keeps the state at the start of the rollout (`initial_state`) and the
episode-start flags (`episode_starts`), so training can replay every env's sequence exactly;
its minibatches (`sequences`) are some envs' whole rollouts, never shuffled transitions.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .distributions import ActionSpace, sample_actions
from .rng import load_generator_state


class RolloutBuffer:
    """One rollout of `n_steps` x `n_envs` transitions plus its advantages and returns."""

    def __init__(self, n_steps: int, n_envs: int, observation_spec: dict, device: torch.device,
                 action_space: ActionSpace | None = None, state_size: int = 0, step_fields: tuple[str, ...] = ()):
        self.n_steps, self.n_envs = n_steps, n_envs
        shape = (n_steps, n_envs)
        # Per-step integers the env declares (``env.step_fields``: the level each transition was played
        # on, for level samplers); read by hooks, never by the losses.
        self.step_fields = {name: torch.zeros(shape, dtype=torch.int64, device=device) for name in step_fields}
        self.obs = {k: torch.zeros(shape + tuple(s), dtype=dt, device=device) for k, (s, dt) in observation_spec.items()}
        action_shape, action_dtype = (action_space or ActionSpace.discrete(1)).storage  # int ids, or box vectors
        self.actions = torch.zeros(shape + action_shape, dtype=action_dtype, device=device)
        self.logprobs = torch.zeros(shape, device=device)
        self.values = torch.zeros(shape, device=device)
        self.rewards = torch.zeros(shape, device=device)
        self.dones = torch.zeros(shape, device=device)  # 1 where the episode ended at this step
        # V(last observation) of episodes cut by a time limit at this step (0 elsewhere).
        self.truncation_values = torch.zeros(shape, device=device)
        self.last_value = torch.zeros(n_envs, device=device)  # V of the observation after the last step
        self.advantages = torch.zeros(shape, device=device)
        self.returns = torch.zeros(shape, device=device)
        # Extra per-transition tensors (n_steps * n_envs rows, time-major), added after collection
        # (e.g. ``teacher_logits``); cleared by each new collection.
        self.labels: dict[str, torch.Tensor] = {}
        # A recurrent policy's (`state_size` > 0): its state before the rollout's first step, and 1 where
        # an observation is an episode's first (the state is zeroed before that step).
        self.recurrent = state_size > 0
        self.initial_state = torch.zeros(n_envs, state_size, device=device)
        self.episode_starts = torch.zeros(shape if self.recurrent else (0, n_envs), device=device)

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

    def compute_advantages(self, gamma: float, gae_lambda: float) -> None:
        """Generalised Advantage Estimation (Schulman et al. 2016), backwards over the rollout.

        ``dones[t]`` cuts the bootstrap at episode ends: the value after a finished episode
        belongs to the next one. An episode cut by a time limit is not over as a task, so its
        TD error bootstraps from the value of the state it stopped in (`truncation_values`,
        what Stable-Baselines3 does). ``gae_lambda = 1`` gives n-step returns (A2C).
        """
        not_done = 1.0 - self.dones
        next_values = torch.cat([self.values[1:], self.last_value.unsqueeze(0)])
        # All TD errors at once; only the backward recursion A_t = delta_t + decay_t * A_{t+1}
        # has to run step by step (one fused multiply-add per step).
        deltas = self.rewards + gamma * (next_values * not_done + self.truncation_values) - self.values
        decay = (gamma * gae_lambda) * not_done
        advantage = torch.zeros_like(self.last_value)
        for t in reversed(range(self.n_steps)):
            advantage = torch.addcmul(deltas[t], decay[t], advantage)
            self.advantages[t] = advantage
        self.returns = self.advantages + self.values

    def flat(self) -> dict:
        """Every transition as one batch (n_steps * n_envs rows), in time-major order."""
        return {
            "obs": {k: v.flatten(0, 1) for k, v in self.obs.items()},
            "actions": self.actions.flatten(0, 1), "logprobs": self.logprobs.flatten(),
            "values": self.values.flatten(), "advantages": self.advantages.flatten(),
            "returns": self.returns.flatten(), **self.labels,
        }

    def sequence_batch(self, envs: torch.Tensor | None = None) -> dict:
        """The whole rollouts of `envs` (all envs when None) for a recurrent policy's ``sequence`` call:
        ``obs`` (n_steps, E, ...), ``initial_state`` (E, S), ``episode_starts`` (n_steps, E), and every
        per-transition tensor flat in time-major order (n_steps * E rows), as the call's outputs are."""
        if envs is None:
            batch = self.flat()
            batch.update(obs=dict(self.obs), initial_state=self.initial_state, episode_starts=self.episode_starts)
            return batch
        per_step = {"actions": self.actions, "logprobs": self.logprobs, "values": self.values,
                    "advantages": self.advantages, "returns": self.returns,
                    **{k: v.view(self.n_steps, self.n_envs, *v.shape[1:]) for k, v in self.labels.items()}}
        batch = {k: v.index_select(1, envs).flatten(0, 1) for k, v in per_step.items()}
        batch["obs"] = {k: v.index_select(1, envs) for k, v in self.obs.items()}
        batch["initial_state"] = self.initial_state.index_select(0, envs)
        batch["episode_starts"] = self.episode_starts.index_select(1, envs)
        return batch

    def sequences(self, envs_per_batch: int, generator: torch.Generator | None = None) -> Iterator[dict]:
        """Minibatches of a recurrent policy: `envs_per_batch` envs' whole rollouts each (`sequence_batch`),
        the envs shuffled (the last partial group is dropped). Sequences are never cut, so each is
        replayed from its stored initial state, with the resets where its episodes start."""
        if envs_per_batch >= self.n_envs:  # one batch of every env: order does not change its gradient
            yield self.sequence_batch()
            return
        order = torch.randperm(self.n_envs, generator=generator, device="cpu").to(self.actions.device)
        for start in range(0, self.n_envs - envs_per_batch + 1, envs_per_batch):
            yield self.sequence_batch(order[start : start + envs_per_batch])

    def minibatches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[dict]:
        """Shuffled minibatches over all transitions (the last partial one is dropped)."""
        total = self.n_steps * self.n_envs
        flat = self.flat()
        if batch_size == total:  # one full batch: order does not change its gradient, skip the shuffle
            yield flat
            return
        order = torch.randperm(total, generator=generator, device="cpu").to(self.actions.device)
        for start in range(0, total - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.index_select(0, idx) for k, v in flat.items() if k != "obs"}
            batch["obs"] = {k: v.index_select(0, idx) for k, v in flat["obs"].items()}
            yield batch


class Collector:
    """Plays the policy in a batched env and fills a `RolloutBuffer`, one rollout per call.

    The policy runs in eval mode (no dropout) under inference mode (no autograd bookkeeping).
    Finished episodes are kept as tensors (no device sync) until `take_episodes`. A recurrent
    policy's state (`state`) and the flags of which envs start an episode at the current
    observation (`episode_starts`) are carried across rollouts and saved with the collector.
    """

    def __init__(self, env, policy: torch.nn.Module, n_steps: int, device: torch.device, seed: int,
                 autocast, bootstrap_truncated: bool = True):
        self.env, self.policy, self.n_steps, self.autocast = env, policy, n_steps, autocast
        self.recurrent = bool(getattr(policy, "recurrent", False))
        self.state = policy.initial_state(env.num_envs, device) if self.recurrent else None
        self.episode_starts = torch.ones(env.num_envs, device=device) if self.recurrent else None  # a reset starts every env
        self.step_fields = tuple(getattr(env, "step_fields", ()))
        self.buffer = RolloutBuffer(n_steps, env.num_envs, env.observation_spec, device, env.action_spec,
                                    self.state.shape[1] if self.recurrent else 0, self.step_fields)
        self.action_rng = torch.Generator(device=device)  # action sampling, apart from torch's global generator
        self.action_rng.manual_seed(seed)
        # Time-limit bootstrapping only where the env's limit is not part of the task.
        self.bootstrap = bootstrap_truncated and env.bootstrap_time_limit
        self.obs = env.reset(seed=seed)
        self.episodes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @torch.inference_mode()
    def collect(self) -> RolloutBuffer:
        """Play `n_steps` steps in every env with the current policy; return the filled buffer."""
        policy, buffer = self.policy, self.buffer
        policy.eval()
        buffer.labels.clear()
        if self.bootstrap:  # only written when bootstrapping; otherwise it stays all zeros
            buffer.truncation_values.zero_()
        obs, recurrent = self.obs, self.recurrent
        levels = getattr(self.env, "level_control", None)  # a curriculum counts successes (mmrl_cli/levels)
        if recurrent:
            buffer.initial_state.copy_(self.state)
        for t in range(self.n_steps):
            with self.autocast():
                if recurrent:
                    params, value, state = policy.step(obs, self.state, self.episode_starts)
                else:
                    params, value = policy(obs)
            dist = policy.distribution(params)
            action, logprob = sample_actions(dist, generator=self.action_rng)
            buffer.store_obs(t, obs)  # before stepping: env buffers are updated in place
            for name in self.step_fields:
                buffer.step_fields[name][t].copy_(getattr(self.env, name))
            obs, reward, terminated, truncated, info = self.env.step(dist.to_env(action))
            buffer.store(t, action, logprob, value.float(), reward, terminated | truncated)
            if recurrent:
                buffer.episode_starts[t] = self.episode_starts
                self.state, self.episode_starts = state.float(), buffer.dones[t].clone()  # the next obs starts an episode where this one ended
            if "final_obs" in info:
                self.episodes.append((info["episode_return"], info["episode_length"], info.get("success")))
                if levels is not None:
                    levels.episodes_ended(info)
                if self.bootstrap:
                    self.store_truncation_values(t, terminated, truncated, info)
        with self.autocast():
            if recurrent:
                buffer.last_value.copy_(policy.step(obs, self.state, self.episode_starts)[1].float())
            else:
                buffer.last_value.copy_(policy(obs)[1].float())
        self.obs = obs
        return buffer

    def store_truncation_values(self, t: int, terminated, truncated, info: dict) -> None:
        """V(last observation) of the episodes a time limit cut at step `t`.

        A step that is both terminated and truncated is a real end: it is not bootstrapped.
        """
        done_index = info["done_index"]
        cut = (truncated & ~terminated).index_select(0, done_index)
        if not bool(cut.any()):
            return
        final = {k: v[cut] for k, v in info["final_obs"].items()}
        with self.autocast():
            if self.recurrent:  # the state after step t has seen the episode up to its last observation
                state = self.state.index_select(0, done_index[cut])
                values = self.policy.step(final, state, torch.zeros(len(state), device=state.device))[1].float()
            else:
                values = self.policy(final)[1].float()
        self.buffer.truncation_values[t].index_put_((done_index[cut],), values)

    def take_episodes(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(returns, lengths, successes) of the episodes finished since the last call (successes: None where
        the env does not define success)."""
        episodes, self.episodes = self.episodes, []
        return episodes

    def state_dict(self) -> dict:
        """The env's state (None for envs that cannot be snapshotted), the observation, the action RNG;
        a recurrent policy's state and episode-start flags (``memory``); the level sampler's and
        curriculum's state (``levels``, when the env has them)."""
        env_state = self.env.state_dict() if hasattr(self.env, "state_dict") else None
        state = {"env": env_state, "obs": self.obs, "action_rng": self.action_rng.get_state()}
        if self.recurrent:
            state["memory"] = {"state": self.state, "episode_starts": self.episode_starts}
        levels = getattr(self.env, "level_control", None)
        if levels is not None:  # the level sampler's and curriculum's state (mmrl_cli/levels)
            state["levels"] = levels.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s output.

        Gymnasium envs cannot be snapshotted: they keep their fresh reset and restart their
        episodes (a recurrent policy's state too: zero, every env at an episode start); everything
        else continues exactly.
        """
        load_generator_state(self.action_rng, state["action_rng"])
        levels = getattr(self.env, "level_control", None)
        if levels is not None:  # first: putting the env on the saved stage drops its pool, which the env's state restores
            levels.load_state_dict(state["levels"])
        if state["env"] is None or not hasattr(self.env, "load_state_dict"):
            return
        self.env.load_state_dict(state["env"])
        device = self.buffer.actions.device
        self.obs = {k: v.to(device) for k, v in state["obs"].items()}
        if self.recurrent:
            self.state = state["memory"]["state"].to(device)
            self.episode_starts = state["memory"]["episode_starts"].to(device)
