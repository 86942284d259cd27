"""Model-based RL with a learned world model (`algo=dreamer`), in the spirit of DreamerV3.

A train step plays ``rollout.n_steps`` steps in each of ``rollout.n_envs`` envs with the agent
(`models.dreamer.DreamerAgent`: its latent state carried from step to step), writes them to a
bounded `SequenceReplay`, then makes as many gradient updates as ``algo.train_ratio`` (updates per
env step) has earned, once ``algo.learning_starts`` env steps are in the buffer. One update:

1. **World model** on ``algo.batch_size`` replayed sequences of ``algo.seq_len`` steps:
   reconstruction (`observation_target`, squared error summed over its dimensions), reward
   (two-hot symlog cross-entropy), continuation (binary cross-entropy to ``1 - is_terminal``)
   and KL balancing with free bits: ``dyn_scale * max(free_bits, KL(sg(post) || prior))`` +
   ``rep_scale * max(free_bits, KL(post || sg(prior)))``.
2. **Imagination**: from every posterior state of the batch (detached), ``algo.horizon`` steps of the
   prior with actions sampled from the actor; predicted rewards, continuation probabilities and
   the critic's values give lambda-returns.
3. **Actor**: REINFORCE on the imagined actions (discrete and box alike, through the actor
   contract's ``log_prob``/``entropy``) with advantages ``(R - v) / max(1, S)``, S an exponential
   moving average of the 95th minus the 5th percentile of the returns (DreamerV3's return
   normalisation); an entropy bonus ``algo.ent_coef``.
4. **Critic**: two-hot symlog cross-entropy to the lambda-returns (which bootstrap from the critic's
   own values), plus ``algo.slow_critic_reg`` times the cross-entropy to the slow critic's values
   (DreamerV3's regulariser: the slow critic is an exponential moving average of the critic's
   weights, ``algo.slow_critic_tau`` per update), plus ``algo.replay_value_coef`` times the same
   loss on the replayed real states against their real lambda-returns (`replay_returns`).
   ``algo.critic_updates`` > 1 repeats the critic's step on the same imagined states, each time with
   lambda-returns bootstrapped from the critic the previous step left (value iteration on the
   imagined batch: values travel further back per imagination; the critic is a small MLP, so the
   extra steps cost little beside the world model's).

Every loss term is logged by the monitor (``losses/<name>``); the three optimisers are
`GradientStep`s (skip counters, gradient norms per module). The buffer, the env, the agent's
state, the optimisers and every generator are checkpointed: resume is exact (``algo.save_replay
= false``: the buffer refills from empty, said in one line).
"""

from __future__ import annotations

import sys

import torch
from torch.nn import functional as F

from ..models.dreamer import DreamerAgent, kl_categorical, observation_target
from ..preflight import observation_bytes
from ..rng import load_generator_state
from .base import Algorithm, Setup
from .gradient import GradientStep
from .replay import SequenceReplay, bytes_needed


def lambda_returns(rewards: torch.Tensor, discounts: torch.Tensor, values: torch.Tensor, lam: float) -> torch.Tensor:
    """TD(lambda) returns of imagined trajectories: rewards and discounts (gamma x continuation) of
    steps 1..H (H, N), values of states 0..H (H + 1, N) -> returns of states 0..H-1 (H, N), bootstrapped
    from the last value: ``R_t = r_{t+1} + d_{t+1} ((1 - lam) v_{t+1} + lam R_{t+1})``, ``R_H = v_H``."""
    returns = torch.empty_like(rewards)
    last = values[-1]
    for t in range(len(rewards) - 1, -1, -1):
        last = rewards[t] + discounts[t] * ((1 - lam) * values[t + 1] + lam * last)
        returns[t] = last
    return returns


def replay_returns(rewards: torch.Tensor, is_terminal: torch.Tensor, is_first: torch.Tensor, values: torch.Tensor,
                   bootstrap: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """TD(lambda) returns along replayed real sequences (T, B), for states 0..T-2 (T - 1, B): the real
    rewards and terminations, the critic's `values` of the replayed states, and `bootstrap` (the
    imagined return from each replayed state) where the real sequence stops: at its last row, and at
    a row whose next row starts another episode (a time limit ended this one; a terminal row's return
    is unused). Row t's reward is what the action before it earned (the replay's layout)."""
    steps = len(rewards)
    returns = torch.empty_like(values[:-1])
    last = bootstrap[-1]
    for t in range(steps - 2, -1, -1):
        alive = 1.0 - is_terminal[t + 1].float()
        through = rewards[t + 1] + gamma * alive * ((1 - lam) * values[t + 1] + lam * last)
        last = torch.where(is_first[t + 1].bool(), bootstrap[t], through)
        returns[t] = last
    return returns


def world_model_loss(agent: DreamerAgent, batch: dict, settings, generator: torch.Generator) -> tuple[dict, dict]:
    """The world model's loss terms on a batch of sequences (see the module docstring), and the
    posterior states (T, B, ...) imagination starts from."""
    world = agent.world_model
    steps, size = batch["is_first"].shape
    obs = {name: value.flatten(0, 1) for name, value in batch["obs"].items()}
    embeds = world.embed(obs).reshape(steps, size, -1)
    states = world.observe(embeds, batch["prev_action"], batch["is_first"], generator)
    features = states["features"]
    target = observation_target(obs).reshape(steps, size, -1)
    reconstruction = (agent.decode(features) - target).square().sum(-1).mean()
    reward = world.reward_head.loss(world.reward_head(features), batch["reward"]).mean()
    cont_logits = world.cont_head(features).squeeze(-1)
    continuation = F.binary_cross_entropy_with_logits(cont_logits, 1.0 - batch["is_terminal"].float())
    post, prior = states["post"], states["prior"]
    kl = kl_categorical(post.detach(), prior)
    kl_dynamics = kl.clamp(min=settings.free_bits).mean()
    kl_representation = kl_categorical(post, prior.detach()).clamp(min=settings.free_bits).mean()
    terms = {"loss_reconstruction": reconstruction, "loss_reward": reward, "loss_continuation": continuation,
             "loss_kl_dynamics": settings.dyn_scale * kl_dynamics,
             "loss_kl_representation": settings.rep_scale * kl_representation,
             "kl": kl.mean().detach()}
    return terms, states


@torch.no_grad()
def imagine(agent: DreamerAgent, h: torch.Tensor, z: torch.Tensor, horizon: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll the prior out `horizon` steps from states (h, z) (N each) with actions sampled from the
    actor: features of states 0..H (H + 1, N, F) and the actions taken at 0..H-1 (H, N, ...)."""
    features, actions = [torch.cat([h, z], dim=-1)], []
    for _ in range(horizon):
        action = agent.distribution(agent.actor(features[-1])).sample(generator)
        h, z = agent.world_model.imagine_step(h, z, agent.action_input(action), generator)
        features.append(torch.cat([h, z], dim=-1))
        actions.append(action)
    return torch.stack(features), torch.stack(actions)


class Dreamer(Algorithm):
    """World model + actor-critic in imagination; its data source is the env and a `SequenceReplay`."""

    def __init__(self, cfg, env, agent: DreamerAgent, device: torch.device, seed: int, autocast):
        settings = self.settings = cfg.algo
        self.env, self.policy, self.device, self.autocast = env, agent, device, autocast
        self.n_steps = cfg.rollout.n_steps
        self.steps_per_update = cfg.steps_per_update
        actor = Parts(actor=agent.actor, **({"log_std": agent.log_std} if hasattr(agent, "log_std") else {}))
        critic = Parts(critic=agent.critic)
        self.world_gradient = self.gradient_step(agent.world_model, settings.lr, 1e-8)
        self.actor_gradient = self.gradient_step(actor, settings.actor_lr, 1e-5)
        self.critic_gradient = self.gradient_step(critic, settings.critic_lr, 1e-5)
        spec = env.observation_spec
        # In host memory (what the pre-flight check measures), whatever the training device; batches move to it.
        self.replay = SequenceReplay(settings.replay_size, env.num_envs, spec, agent.action_size, torch.device("cpu"),
                                     seed + 1)
        self.generator = torch.Generator(device=device)  # world-model samples and imagined actions
        self.generator.manual_seed(seed + 2)
        self.action_rng = torch.Generator(device=device)  # the actions played in the env
        self.action_rng.manual_seed(seed)
        self.obs = env.reset(seed=seed)
        self.state = agent.initial_state(env.num_envs, device)
        self.episode_starts = torch.ones(env.num_envs, device=device)
        self.replay.add_first(self.obs, agent.action_size)
        self.episodes: list = []
        self.return_scale = 1.0  # EMA of the 95th - 5th percentile of imagined returns
        self.credit = 0.0  # updates earned by the train ratio and not made yet
        self.env_steps = 0  # env steps this rank has played (learning starts after algo.learning_starts)
        self.updates = 0  # gradient updates made

    def gradient_step(self, module: torch.nn.Module, lr: float, eps: float) -> GradientStep:
        """Adam over `module`'s parameters, behind the shared checked and clipped `GradientStep`."""
        optimizer = torch.optim.Adam(module.parameters(), lr=lr, eps=eps)
        return GradientStep(module, optimizer, self.settings.max_grad_norm, self.autocast, fast_path=False)

    @classmethod
    def build(cls, setup: Setup) -> Dreamer:
        """The algorithm over `setup.env`, with the agent the policy pipeline built (`DreamerAgent`)."""
        return cls(setup.cfg, setup.env, setup.policy, setup.device, setup.seed, setup.autocast)

    @property
    def gradients(self) -> list:
        """The world model's, the actor's and the critic's `GradientStep`s."""
        return [self.world_gradient, self.actor_gradient, self.critic_gradient]

    def seed(self, seed: int) -> None:
        """The generators were seeded at construction."""

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def play(self) -> None:
        """`n_steps` steps of every env with the agent; each step goes to the replay buffer."""
        agent, env = self.policy, self.env
        agent.eval()
        levels = getattr(env, "level_control", None)  # a curriculum counts successes (mmrl_cli/levels)
        for _ in range(self.n_steps):
            with self.autocast():
                params, _, state = agent.step(self.obs, self.state, self.episode_starts)
            dist = agent.distribution(params)
            action = dist.sample(self.action_rng)
            obs, reward, terminated, truncated, info = env.step(dist.to_env(action))
            self.replay.add_step(agent.action_input(action), obs, reward.float(), terminated, truncated, info)
            self.state = agent.remember_action(state.float(), action)
            self.episode_starts = (terminated | truncated).float()
            self.obs = obs
            if "final_obs" in info:
                self.episodes.append((info["episode_return"], info["episode_length"], info.get("success")))
                if levels is not None:
                    levels.episodes_ended(info)
        self.env_steps += self.n_steps * env.num_envs

    # ---------------------------------------------------------------- learning
    def train_step(self) -> tuple[int, dict[str, float]]:
        """Play one rollout's worth of env steps, then the gradient updates the train ratio has earned."""
        self.play()
        settings = self.settings
        metrics: dict[str, list[float]] = {}
        if self.env_steps >= settings.learning_starts and self.replay.ready(settings.seq_len):
            self.credit += self.n_steps * self.env.num_envs * settings.train_ratio
            while self.credit >= 1.0:
                self.credit -= 1.0
                for name, value in self.update().items():
                    metrics.setdefault(name, []).append(value)
        out = {name: sum(values) / len(values) for name, values in metrics.items()}
        out.update(updates_made=float(len(next(iter(metrics.values()), []))), replay_rows=float(len(self.replay)))
        return self.steps_per_update, out

    def update(self) -> dict[str, float]:
        """One world-model update, one imagination, one actor and `algo.critic_updates` critic updates
        (module docstring)."""
        settings, agent = self.settings, self.policy
        agent.train()
        batch = to_device(self.replay.sample(settings.batch_size, settings.seq_len), self.device)
        with self.autocast():
            world_terms, states = world_model_loss(agent, batch, settings, self.generator)
        world_ok = self.world_gradient.step(world_terms, None)

        h, z = states["h"].detach().flatten(0, 1), states["z"].detach().flatten(0, 1)
        alive = 1.0 - batch["is_terminal"].flatten().float()  # a terminal state has no future to imagine
        features, actions = imagine(agent, h, z, settings.horizon, self.generator)
        # One critic pass over every imagined state: its values (detached) bootstrap the returns, and
        # the same logits of states 0..H-1 carry the critic's loss below (the actor's step leaves the
        # critic's weights alone).
        critic_logits = agent.critic(features.flatten(0, 1))
        with torch.no_grad():
            world = agent.world_model
            rewards = world.reward_head.mean(world.reward_head(features[1:]))
            cont = torch.sigmoid(world.cont_head(features[1:]).squeeze(-1).float())
            values = agent.critic.mean(critic_logits.detach()).reshape(features.shape[:2])
            slow_values = agent.slow_critic.mean(agent.slow_critic(features[:-1]))
            returns = lambda_returns(rewards, settings.gamma * cont, values, settings.lam)
            weights = torch.cumprod(torch.cat([alive.unsqueeze(0), cont[:-1]]), dim=0)  # reached with probability
            low, high = torch.quantile(returns.flatten().float(), torch.tensor([0.05, 0.95], device=returns.device))
            self.return_scale = settings.return_decay * self.return_scale + (1 - settings.return_decay) * float(high - low)
            advantages = (returns - values[:-1]) / max(1.0, self.return_scale)

        flat_features = features[:-1].flatten(0, 1)
        dist = agent.distribution(agent.actor(flat_features))
        entropy = dist.entropy()
        weight = weights.flatten()
        actor_terms = {"loss_policy": -(weight * dist.log_prob(actions.flatten(0, 1)) * advantages.flatten()).mean(),
                       "loss_entropy": -settings.ent_coef * (weight * entropy).mean(),
                       "entropy": entropy.mean().detach()}
        actor_ok = self.actor_gradient.step(actor_terms, None)

        critic_logits = critic_logits[: len(flat_features)]  # states 0..H-1 (time-major, as flat_features)
        critic_terms, critic_ok = self.critic_step(critic_logits, returns, slow_values, weight, batch, states)
        for _ in range(settings.critic_updates - 1):  # again, bootstrapping from the critic just updated
            critic_logits = agent.critic(features.flatten(0, 1))
            with torch.no_grad():
                again = agent.critic.mean(critic_logits.detach()).reshape(features.shape[:2])
                targets = lambda_returns(rewards, settings.gamma * cont, again, settings.lam)
                slow_values = agent.slow_critic.mean(agent.slow_critic(features[:-1]))
            critic_terms, ok = self.critic_step(critic_logits[: len(flat_features)], targets, slow_values, weight,
                                                batch, states)
            critic_ok = critic_ok and ok
        self.updates += 1
        metrics = {name: float(value.detach()) for terms in (world_terms, actor_terms, critic_terms)
                   for name, value in terms.items()}
        metrics.update(return_scale=self.return_scale, imagined_return=float(returns[0].mean()),
                       imagined_reward=float(rewards.mean()), imagined_continuation=float(cont.mean()),
                       world_model_grad_norm=self.world_gradient.grad_norm, actor_grad_norm=self.actor_gradient.grad_norm,
                       critic_grad_norm=self.critic_gradient.grad_norm,
                       skipped_steps=float(3 - world_ok - actor_ok - critic_ok))
        return metrics

    def critic_step(self, logits: torch.Tensor, returns: torch.Tensor, slow_values: torch.Tensor,
                    weight: torch.Tensor, batch: dict, states: dict) -> tuple[dict, bool]:
        """One critic step: its `logits` of the imagined states 0..H-1 against the lambda-`returns`,
        towards the slow critic's values, and on the replayed real states when weighted; then the
        slow critic's step towards it. Returns the loss terms and whether the step was taken."""
        settings, critic = self.settings, self.policy.critic
        terms = {"loss_value": (weight * critic.loss(logits, returns.flatten())).mean(),
                 "loss_slow_critic": settings.slow_critic_reg * (weight * critic.loss(logits, slow_values.flatten())).mean()}
        if settings.replay_value_coef > 0:  # the critic on the replayed real sequences too (DreamerV3's repval)
            terms["loss_replay_value"] = settings.replay_value_coef * self.replay_value_loss(
                batch, states["features"].detach(), returns[0].reshape(batch["is_first"].shape))
        ok = self.critic_gradient.step(terms, None)
        with torch.no_grad():
            for slow, fast in zip(self.policy.slow_critic.parameters(), critic.parameters()):
                slow.lerp_(fast, settings.slow_critic_tau)
        return terms, ok

    def replay_value_loss(self, batch: dict, features: torch.Tensor, imagined: torch.Tensor) -> torch.Tensor:
        """The critic's two-hot loss on the replayed posterior states (T, B, F) against their real
        TD(lambda) returns (`replay_returns`, bootstrapped from the `imagined` returns (T, B)); a
        terminal state has weight 0 (it has no future)."""
        settings, critic = self.settings, self.policy.critic
        logits = critic(features.flatten(0, 1))  # one pass: detached values for the targets, the loss on 0..T-2
        with torch.no_grad():
            values = critic.mean(logits.detach()).reshape(features.shape[:2])
            targets = replay_returns(batch["reward"].float(), batch["is_terminal"], batch["is_first"], values,
                                     imagined.float(), settings.gamma, settings.lam)
        weight = 1.0 - batch["is_terminal"][:-1].float()
        loss = critic.loss(logits[: targets.numel()], targets.flatten())
        return (weight.flatten() * loss).mean()

    def take_episodes(self) -> list:
        """(returns, lengths, successes) of the training episodes finished since the last call."""
        episodes, self.episodes = self.episodes, []
        return episodes

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The three optimisers (with skip counters), the return scale, the update credit, counters and
        the generator of world-model samples and imagined actions."""
        return {"world_model": self.world_gradient.state_dict(), "actor": self.actor_gradient.state_dict(),
                "critic": self.critic_gradient.state_dict(), "return_scale": float(self.return_scale),
                "credit": float(self.credit), "env_steps": self.env_steps, "updates": self.updates,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s output."""
        self.world_gradient.load_state_dict(state["world_model"])
        self.actor_gradient.load_state_dict(state["actor"])
        self.critic_gradient.load_state_dict(state["critic"])
        self.return_scale, self.credit = float(state["return_scale"]), float(state["credit"])
        self.env_steps, self.updates = int(state["env_steps"]), int(state["updates"])
        load_generator_state(self.generator, state["generator"])

    def source_state_dict(self) -> dict:
        """The env and its current observation, the agent's latent state, the action generator, the
        replay buffer (its rows unless ``algo.save_replay=false``) and the level sampler's state."""
        env_state = self.env.state_dict() if hasattr(self.env, "state_dict") else None
        state = {"env": env_state, "obs": self.obs, "action_rng": self.action_rng.get_state(),
                 "memory": {"state": self.state, "episode_starts": self.episode_starts},
                 "replay": self.replay.state_dict(with_rows=self.settings.save_replay)}
        levels = getattr(self.env, "level_control", None)
        if levels is not None:
            state["levels"] = levels.state_dict()
        return state

    def load_source_state_dict(self, state: dict | None) -> None:
        """Continue from `source_state_dict()`'s output. An env that cannot be snapshotted (gymnasium)
        keeps its fresh reset: its episodes restart (the agent's state too), a first row in the buffer."""
        if state is None:
            return
        load_generator_state(self.action_rng, state["action_rng"])
        levels = getattr(self.env, "level_control", None)
        if levels is not None:
            levels.load_state_dict(state["levels"])
        self.replay.load_state_dict(state["replay"])
        if not self.settings.save_replay:
            print(f"mmrl train: algo.save_replay=false: the replay buffer refills from empty (updates resume after "
                  f"algo.seq_len={self.settings.seq_len} steps of every env)", file=sys.stderr)
        if state["env"] is None or not hasattr(self.env, "load_state_dict"):
            self.replay.add_first(self.obs, self.policy.action_size)
            return
        self.env.load_state_dict(state["env"])
        self.obs = {k: v.to(self.device) for k, v in state["obs"].items()}
        self.state = state["memory"]["state"].to(self.device)
        self.episode_starts = state["memory"]["episode_starts"].to(self.device)
        if not self.settings.save_replay:  # the refill starts at the current observation, from a zero state
            self.state = self.policy.initial_state(self.env.num_envs, self.device)
            self.episode_starts = torch.ones(self.env.num_envs, device=self.device)
            self.replay.add_first(self.obs, self.policy.action_size)


def to_device(batch: dict, device: torch.device) -> dict:
    """A sampled batch (nested dicts of tensors) on `device`."""
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True) for k, v in batch.items()}


class Parts(torch.nn.Module):
    """Named modules and parameters as one module, so a `GradientStep` over them reports
    ``grad/<name>_norm`` by these names (``actor``, ``log_std``, ``critic``)."""

    def __init__(self, **parts):
        super().__init__()
        for name, part in parts.items():
            setattr(self, name, part)


def check_replay_fits(cfg, observation_spec: dict, action_space) -> None:
    """ConfigError (one line) when `algo.replay_size` rows of this env's observations do not fit in the
    memory available now (checked before a run starts, as the other allocations are)."""
    from ..config import ConfigError
    from ..preflight import available_memory

    needed = bytes_needed(cfg.algo.replay_size, observation_bytes(observation_spec), action_space.param_size)
    available = available_memory()
    if needed > available:
        raise ConfigError(f"algo.replay_size: {cfg.algo.replay_size:,} rows of this env's observations need "
                          f"{needed / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} GiB of memory available")
