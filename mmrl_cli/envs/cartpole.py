"""CartPole-v1 as a batched torch env: gymnasium's dynamics, all envs in one tensor op.

The physics, thresholds, reward (1 per step), initial-state distribution and the 500-step
time limit are those of `gymnasium.envs.classic_control.CartPoleEnv` (Euler integration), so
results compare with any CartPole-v1 result; only the stepping is batched. A test checks it
against gymnasium step for step.
"""

from __future__ import annotations

import math

import torch

from ..distributions import ActionSpace

from ..rng import load_generator_state

GRAVITY, MASS_CART, MASS_POLE, LENGTH, FORCE, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
TOTAL_MASS = MASS_CART + MASS_POLE
POLE_MASS_LENGTH = MASS_POLE * LENGTH
THETA_LIMIT = 12 * 2 * math.pi / 360
X_LIMIT = 2.4


class CartPoleEnv:
    """`num_envs` CartPole-v1 systems with same-step auto-reset (see `GotoEnv` for the API)."""

    num_actions = 2
    action_spec = ActionSpace.discrete(2)  # what `step` accepts
    bootstrap_time_limit = True  # the 500-step limit is a cut, not part of the task

    def __init__(self, num_envs: int, max_steps: int = 500, device: str | torch.device = "cpu", seed: int = 0):
        self.num_envs, self.max_steps, self.device = num_envs, max_steps, torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.state = torch.zeros(num_envs, 4, device=self.device)
        self.steps = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.observation_spec = {"vector": ((4,), torch.float32)}
        self.limits = torch.tensor([X_LIMIT, math.inf, THETA_LIMIT, math.inf], device=self.device)
        self.reward = torch.ones(num_envs, device=self.device)  # CartPole pays 1 every step

    def initial_states(self, count: int) -> torch.Tensor:
        """Fresh states, each coordinate uniform in [-0.05, 0.05] (as gymnasium)."""
        return (torch.rand(count, 4, generator=self.generator, device=self.device) - 0.5) * 0.1

    def reset(self, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Start every env afresh; returns the observation."""
        if seed is not None:
            self.generator.manual_seed(seed)
        self.state = self.initial_states(self.num_envs)
        self.steps.zero_()
        return {"vector": self.state}

    def step(self, actions: torch.Tensor):
        """One Euler step of every cart; same return convention as `GotoEnv.step`."""
        _, x_dot, theta, theta_dot = self.state.unbind(1)
        # gymnasium's equations, each written as few fused tensor ops as it allows (at 8 envs a
        # step costs what its number of ops costs, not their arithmetic):
        # force = +-FORCE; temp = (force + POLE_MASS_LENGTH * theta_dot^2 * sin) / TOTAL_MASS
        force = actions.to(torch.float32).mul_(2 * FORCE).sub_(FORCE)
        cos, sin = torch.cos(theta), torch.sin(theta)
        temp = torch.addcmul(force, theta_dot.square(), sin, value=POLE_MASS_LENGTH).div_(TOTAL_MASS)
        # theta_acc = (GRAVITY * sin - cos * temp) / (LENGTH * (4/3 - MASS_POLE * cos^2 / TOTAL_MASS))
        theta_acc = torch.addcmul(sin * GRAVITY, cos, temp, value=-1.0).div_(
            cos.square().mul_(-LENGTH * MASS_POLE / TOTAL_MASS).add_(LENGTH * 4.0 / 3.0))
        # x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS
        x_acc = torch.addcmul(temp, theta_acc, cos, value=-POLE_MASS_LENGTH / TOTAL_MASS)
        # Euler: every coordinate moves by TAU times its derivative, in one op.
        state = torch.add(self.state, torch.stack([x_dot, x_acc, theta_dot, theta_acc], 1), alpha=TAU)
        self.steps += 1
        terminated = (state.abs() > self.limits).any(1)
        truncated = (self.steps >= self.max_steps) & ~terminated
        done_index = torch.nonzero(terminated | truncated).squeeze(1)
        info = {"done_index": done_index}
        if len(done_index):
            info.update(
                episode_return=self.steps.index_select(0, done_index).float(),
                episode_length=self.steps.index_select(0, done_index),
                success=truncated.index_select(0, done_index),  # balanced until the time limit
                final_obs={"vector": state.index_select(0, done_index)},
            )
            state = state.index_copy(0, done_index, self.initial_states(len(done_index)))
            self.steps.index_fill_(0, done_index, 0)
        self.state = state
        return {"vector": state}, self.reward, terminated, truncated, info

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor needed to continue exactly where the env is now."""
        return {"state": self.state, "steps": self.steps, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a state produced by `state_dict`."""
        self.state = state["state"].to(self.device).clone()
        self.steps.copy_(state["steps"])
        load_generator_state(self.generator, state["generator"])  # reseeds if saved on another device type
