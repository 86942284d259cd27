"""Hierarchical RL on the sequential task: a high level picks the next sub-goal, a low level reaches it.

The agent (`models.hierarchical.HierarchicalPolicy`, docs/hierarchical.md) is two policies of the
configured model in one module: the high level reads the image and the whole instruction and
picks one of its clauses; the low level reads the image and that clause as a goto instruction and
moves. The high level is asked only at a sub-goal boundary (an episode starts, the sub-goal is
reached, or the low level's ``algo.option_steps`` are spent); the low level acts until then.

Both levels learn with PPO, each on its own transitions, from one stream of env steps:

- **low level**: one transition per env step, in a `RolloutBuffer` of ``rollout.n_steps`` x
  ``rollout.n_envs``; its task is goto's with the sub-goal as the target: reward ``1 - 0.9 * k /
  option_steps`` for stepping into the chosen object at the option's step k, 0 otherwise, and
  the option ends (terminal for its returns) when any object is touched, the episode ends or the
  budget is spent. So its transitions are exactly goto's, and a goto run's policy fits it
  (``algo.low_init_from``; ``algo.low_train=freeze`` keeps it as loaded).
- **high level**: one transition per option (an SMDP, Sutton et al. 1999): start observation,
  chosen clause, the env rewards the option collected discounted within it (``sum_i
  high_gamma^i r_i``), and ``high_gamma^t`` over its t elapsed steps for what follows (0 when
  the episode ended). Options that end during a rollout are its batch (options still running
  carry over to the next rollout); GAE runs over each env's consecutive options
  (``algo.high_gae_lambda``), then PPO's clipped loss with the clause mask.

``train_step`` reads top to bottom: collect (`OptionCollector.collect`), the low level's PPO
update, the high level's PPO update. Metrics are ``loss_low_*`` / ``loss_high_*`` (TensorBoard
``losses/low_policy`` ...), ``low_*`` / ``high_*`` diagnostics and the collector's option
statistics (``update/options``, ``update/option_length``, ``update/subgoal_reached``,
``update/high_queries``, ``update/high_in_order``: the share of choices that named the clause due).
"""

from __future__ import annotations

import torch

from ..checkpoint import load_model
from ..distributions import sample_actions
from ..envs.goto import OBJECT_BASE
from ..models.hierarchical import CLAUSE, HIGH_INPUTS, OPTION_STEPS
from ..rng import load_generator_state
from ..rollout import RolloutBuffer
from .base import Algorithm, Setup
from .gradient import GradientStep, StepMetrics, TrainingClock, explained_variance, scheduled
from .ppo import PPO, ppo_loss

# What an open option remembers until it ends: its start observation, choice and value, and the reward
# it has collected so far with the discount of its next step.
PENDING = (*HIGH_INPUTS, "clause", "logprob", "value", "reward", "discount", "active")


class OptionCollector:
    """Plays the hierarchical agent in the sequential env and fills both levels' batches.

    Per env step: where a sub-goal boundary is, the open option closes (a high-level transition) and
    the high level samples the next clause; the low level samples a move; the env steps. The option
    state (clause, steps in it, progress when chosen), the open options and the action generator
    carry across rollouts and are saved with the env (`state_dict`), so a resumed run continues exactly.
    """

    def __init__(self, env, policy, n_steps: int, device: torch.device, seed: int, autocast, high_gamma: float,
                 high_gae_lambda: float):
        self.env, self.policy, self.n_steps, self.autocast = env, policy, n_steps, autocast
        self.high_gamma, self.high_gae_lambda = high_gamma, high_gae_lambda
        n = env.num_envs
        spec = env.observation_spec
        low_spec = {"image": spec["image"], "mission": ((spec["subgoals"][0][1],), torch.int64)}
        self.buffer = RolloutBuffer(n_steps, n, low_spec, device, env.action_spec,
                                    step_fields=("level_id", "progress", "subgoal"))
        self.action_rng = torch.Generator(device=device)
        self.action_rng.manual_seed(seed)
        self.obs = env.reset(seed=seed)
        self.state = policy.initial_state(n, device)
        self.starts = torch.ones(n, device=device)  # 1 where the current observation starts an episode
        self.pending = {
            **{name: torch.zeros((n, *spec[name][0]), dtype=spec[name][1], device=device) for name in HIGH_INPUTS},
            "clause": torch.zeros(n, dtype=torch.int64, device=device),
            **{name: torch.zeros(n, device=device) for name in ("logprob", "value", "reward", "discount")},
            "active": torch.zeros(n, dtype=torch.bool, device=device),
        }
        self.episodes: list = []

    @torch.inference_mode()
    def collect(self) -> tuple[RolloutBuffer, dict | None, dict[str, float]]:
        """Play `n_steps` env steps; return the low level's rollout, the high level's batch of the options
        that ended (None if none did) and the option statistics."""
        policy, buffer, env = self.policy, self.buffer, self.env
        policy.eval()
        obs = self.obs
        closed: list[dict] = []  # the options that ended, one group per step, in time order
        queries, in_order = 0, torch.zeros((), dtype=torch.int64, device=self.state.device)  # summed on the device
        levels = getattr(env, "level_control", None)
        for t in range(self.n_steps):
            # 1. Sub-goal boundaries: close the open options there, let the high level choose the next.
            boundary = policy.boundaries(obs, self.state, self.starts)
            index = torch.nonzero(boundary).squeeze(1)
            if len(index):
                chosen = policy.sub_obs(obs, index)
                with self.autocast():
                    logits, value = policy.high_outputs(chosen)
                clause, logprob = sample_actions(policy.high.distribution(logits), generator=self.action_rng)
                group = self.close_options(index, value.float())
                if group is not None:
                    closed.append(group)
                self.open_options(index, chosen, clause, logprob, value.float())
                self.state = policy.started(obs, self.state, index, clause)
                queries += len(index)
                in_order += (clause == chosen["progress"][:, 0]).sum()
            # 2. The low level moves towards the chosen clause's object.
            clause = self.state[:, CLAUSE].long()
            low_obs = policy.low_inputs(obs, clause)
            with self.autocast():
                params, low_value = policy.low(low_obs)
            dist = policy.low.distribution(params)
            action, logprob = sample_actions(dist, generator=self.action_rng)
            buffer.store_obs(t, low_obs)
            buffer.step_fields["level_id"][t].copy_(env.level_id)
            buffer.step_fields["progress"][t].copy_(env.progress)
            buffer.step_fields["subgoal"][t].copy_(clause)
            target = env.targets.gather(1, clause[:, None]).squeeze(1)  # before the step: ended episodes reset
            obs, reward, terminated, truncated, info = env.step(dist.to_env(action))
            # 3. The low level's transition (goto's reward for its sub-goal) and the option's reward so far.
            ended = terminated | truncated
            self.state[:, OPTION_STEPS] += 1
            option_steps = self.state[:, OPTION_STEPS]
            reached = (env.touched == target) & (target >= OBJECT_BASE)
            low_reward = reached.float() * (1.0 - 0.9 * option_steps / policy.option_steps)
            low_done = ended | (env.touched != 0) | (option_steps >= policy.option_steps)
            buffer.store(t, action, logprob, low_value.float(), low_reward, low_done)
            self.pending["reward"] += self.pending["discount"] * reward
            self.pending["discount"] *= self.high_gamma
            self.starts = ended.float()
            if "final_obs" in info:
                self.episodes.append((info["episode_return"], info["episode_length"], info["success"]))
                if levels is not None:
                    levels.episodes_ended(info)
        with self.autocast():
            buffer.last_value.copy_(policy.low(policy.low_inputs(obs, self.state[:, CLAUSE].long()))[1].float())
        self.obs = obs
        stats = {"high_queries": float(queries), "high_in_order": int(in_order) / queries if queries else float("nan")}
        return buffer, self.high_batch(closed, stats), stats

    def close_options(self, index: torch.Tensor, next_value: torch.Tensor) -> dict | None:
        """End the open options of envs `index` (at a boundary, before the next choice): their TD error
        ``R + high_gamma^t V(next start) - V(start)`` (no bootstrap where the episode ended)."""
        pending = self.pending
        active = pending["active"].index_select(0, index)
        if not bool(active.any()):
            return None
        envs, next_value = index[active], next_value[active]
        discount = pending["discount"][envs] * (1.0 - self.starts[envs])
        group = {name: pending[name][envs] for name in (*HIGH_INPUTS, "clause", "logprob", "value")}
        group.update(envs=envs, discount=discount, length=self.state[envs, OPTION_STEPS],
                     delta=pending["reward"][envs] + discount * next_value - pending["value"][envs])
        return group

    def open_options(self, index, obs: dict, clause, logprob, value) -> None:
        """Start options in envs `index`: remember where (the high level's inputs) and what was chosen."""
        pending = self.pending
        for name in HIGH_INPUTS:
            pending[name][index] = obs[name]
        pending["clause"][index] = clause
        pending["logprob"][index] = logprob
        pending["value"][index] = value
        pending["reward"][index] = 0.0
        pending["discount"][index] = 1.0
        pending["active"][index] = True

    def high_batch(self, closed: list[dict], stats: dict) -> dict | None:
        """The high level's batch: the options that ended, with GAE over each env's consecutive options."""
        stats.update(options=float(sum(len(g["envs"]) for g in closed)))
        if not closed:
            return None
        lam = self.high_gae_lambda
        running = torch.zeros(self.env.num_envs, device=self.pending["value"].device)
        advantages = [None] * len(closed)
        for i in reversed(range(len(closed))):  # later options first: each carries into its predecessor
            group = closed[i]
            advantage = group["delta"] + lam * group["discount"] * running[group["envs"]]
            running[group["envs"]] = advantage
            advantages[i] = advantage
        cat = {name: torch.cat([g[name] for g in closed]) for name in (*HIGH_INPUTS, "clause", "logprob", "value", "length")}
        advantages = torch.cat(advantages)
        stats.update(option_length=float(cat["length"].mean()))
        return {"obs": {name: cat[name] for name in HIGH_INPUTS}, "actions": cat["clause"], "logprobs": cat["logprob"], "values": cat["value"],
                "advantages": advantages, "returns": advantages + cat["value"]}

    def take_episodes(self) -> list:
        """(returns, lengths, successes) of the episodes finished since the last call."""
        episodes, self.episodes = self.episodes, []
        return episodes

    def state_dict(self) -> dict:
        """The env, the observation, the action generator, the option state and the open options (and
        a curriculum's state when the env has one)."""
        state = {"env": self.env.state_dict(), "obs": self.obs, "action_rng": self.action_rng.get_state(),
                 "options": {"state": self.state, "starts": self.starts, **self.pending}}
        levels = getattr(self.env, "level_control", None)
        if levels is not None:
            state["levels"] = levels.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s output."""
        load_generator_state(self.action_rng, state["action_rng"])
        levels = getattr(self.env, "level_control", None)
        if levels is not None:  # first: a stage change drops the env's pool, which the env's state restores
            levels.load_state_dict(state["levels"])
        self.env.load_state_dict(state["env"])
        device = self.state.device
        self.obs = {k: v.to(device) for k, v in state["obs"].items()}
        options = state["options"]
        self.state, self.starts = options["state"].to(device), options["starts"].to(device)
        for name in PENDING:
            self.pending[name] = options[name].to(device)


class Hierarchical(Algorithm):
    """PPO on both levels of the hierarchical agent (see the module docstring)."""

    @classmethod
    def build(cls, setup: Setup) -> Hierarchical:
        """The algorithm: the low level loaded from ``algo.low_init_from`` (fresh starts), both levels'
        optimisers, and the option collector over `setup.env`."""
        cfg, policy = setup.cfg, setup.policy
        algo = cls()
        algo.cfg, algo.policy = cfg.algo, policy
        if cfg.algo.low_init_from is not None and not setup.resuming:
            load_model(low_init_weights(cfg), policy.low)
        algo.low_ppo = None
        if cfg.algo.low_train == "freeze":
            policy.low.requires_grad_(False)
        else:
            algo.low_ppo = PPO(cfg.algo.level("low"), policy.low, setup.total_updates, setup.autocast, cfg.hardware.fast_path)
        algo.high_cfg = cfg.algo.level("high")
        optimizer = torch.optim.Adam(policy.high.parameters(), lr=algo.high_cfg.lr, eps=algo.high_cfg.adam_eps)
        algo.high_gradient = GradientStep(policy.high, optimizer, algo.high_cfg.max_grad_norm, setup.autocast, fast_path=False)
        algo.generator = torch.Generator()  # the high level's minibatch shuffling
        algo.clock = TrainingClock(setup.total_updates)
        algo.collector = OptionCollector(setup.env, policy, cfg.rollout.n_steps, setup.device, setup.seed,
                                         setup.autocast, cfg.algo.high_gamma, cfg.algo.high_gae_lambda)
        algo.steps_per_update = cfg.steps_per_update
        return algo

    @property
    def gradients(self) -> list:
        return ([self.low_ppo.gradient] if self.low_ppo is not None else []) + [self.high_gradient]

    def seed(self, seed: int) -> None:
        """Seed both levels' minibatch shuffling."""
        self.generator.manual_seed(seed + 1)
        if self.low_ppo is not None:
            self.low_ppo.seed(seed)

    def train_step(self) -> tuple[int, dict[str, float]]:
        """One rollout of both levels, then the low level's PPO update, then the high level's."""
        low_rollout, high_batch, metrics = self.collector.collect()
        if self.low_ppo is not None:
            metrics.update(prefixed(self.low_ppo.update(low_rollout), "low"))
        metrics.update(subgoal_reached=float(low_rollout.rewards.gt(0).sum() / low_rollout.dones.sum().clamp(min=1)))
        if high_batch is not None:
            metrics.update(prefixed(self.update_high(high_batch), "high"))
        self.clock.tick()
        return self.steps_per_update, metrics

    def update_high(self, batch: dict) -> dict[str, float]:
        """PPO epochs over the options that ended, in minibatches of ``algo.high_batch_size`` (all of
        them when fewer); the high level masks the closed clauses itself."""
        cfg, high = self.high_cfg, self.policy.high
        high.train()
        lr = scheduled(cfg.lr, cfg.lr_schedule, self.clock.remaining())
        clip_range = scheduled(cfg.clip_range, cfg.clip_schedule, self.clock.remaining())
        self.high_gradient.set_lr(lr)
        count = len(batch["actions"])
        size = min(cfg.batch_size, count)
        skipped_before = self.high_gradient.skipped_steps
        metrics = StepMetrics()
        for _epoch in range(cfg.n_epochs):
            order = torch.randperm(count, generator=self.generator).to(batch["actions"].device)
            for start in range(0, count - size + 1, size):
                rows = order[start : start + size]
                minibatch = {k: v.index_select(0, rows) for k, v in batch.items() if k != "obs"}
                minibatch["obs"] = {k: v.index_select(0, rows) for k, v in batch["obs"].items()}
                logits, values = self.high_gradient.forward(minibatch["obs"])
                terms = ppo_loss(high.distribution(logits), values, minibatch, clip_range, cfg.clip_value,
                                 cfg.normalize_advantages, cfg.vf_coef, cfg.ent_coef)
                if self.high_gradient.step(terms, (logits, values)):
                    metrics.add(terms)
        means = metrics.means()
        means.update(grad_norm=self.high_gradient.grad_norm if metrics.count else float("nan"), learning_rate=lr,
                     explained_variance=explained_variance(batch["values"], batch["returns"]),
                     minibatches=metrics.count, skipped_steps=self.high_gradient.skipped_steps - skipped_before)
        return means

    def module_grad_norms(self) -> dict[str, float]:
        """Gradient norm per top-level module of each level at its last step (``low.vit``, ``high.gpt``, ...)."""
        norms = {f"high.{name}": value for name, value in self.high_gradient.module_grad_norms().items()}
        if self.low_ppo is not None:
            norms.update({f"low.{name}": value for name, value in self.low_ppo.gradient.module_grad_norms().items()})
        return norms

    def take_episodes(self) -> list:
        return self.collector.take_episodes()

    def state_dict(self) -> dict:
        """Both levels' optimisers, schedules and shuffling generators."""
        high = {**self.high_gradient.state_dict(), "generator": self.generator.get_state(), "clock": self.clock.state_dict()}
        return {"high": high, "low": self.low_ppo.state_dict() if self.low_ppo is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s output."""
        self.high_gradient.load_state_dict(state["high"])
        self.generator.set_state(state["high"]["generator"])
        self.clock.load_state_dict(state["high"]["clock"])
        if self.low_ppo is not None:
            self.low_ppo.load_state_dict(state["low"])

    def source_state_dict(self) -> dict:
        return self.collector.state_dict()

    def load_source_state_dict(self, state: dict | None) -> None:
        self.collector.load_state_dict(state)


def prefixed(metrics: dict[str, float], level: str) -> dict[str, float]:
    """A level's metrics renamed for the monitor: ``loss_x`` -> ``loss_<level>_x`` (TensorBoard
    ``losses/<level>_x``), anything else -> ``<level>_x`` (``update/<level>_x``)."""
    return {(f"loss_{level}_{k[5:]}" if k.startswith("loss_") else f"{level}_{k}"): v for k, v in metrics.items()}


def low_init_weights(cfg):
    """The policy weights of the run ``algo.low_init_from`` names (its latest checkpoint)."""
    from ..runs import load_run_checkpoint

    run = load_run_checkpoint(cfg.algo.low_init_from, cfg.runs_root, "latest", "algo.low_init_from")
    return run.checkpoint_dir / "model.safetensors"
