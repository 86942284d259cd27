"""The Dreamer agent (`algo=dreamer`): a recurrent state-space world model with an actor and a critic.

In the spirit of DreamerV3 (Hafner et al. 2023); the code is mmrl's own. The agent is the module
the trainer, `mmrl eval` and checkpoints know as the policy (`model.safetensors` holds all of it):

- ``world_model``: the observation encoder (the ``features`` of `model`'s policy: MLP for vectors,
  CNN or ViT-GPT2 for an image + instruction), an RSSM (a GRU over a deterministic state ``h``
  and a stochastic state ``z`` of `stoch` categorical variables of `classes` classes each, 1%
  uniform mix, straight-through samples), an observation decoder, and reward and continuation
  heads. Rewards (and values) are predicted as a two-hot distribution over symlog bins.
- ``actor``: the action distribution of ``[h, z]`` through the actor contract (`distributions`:
  categorical logits or Gaussian means with a learned log std);
- ``critic`` and ``slow_critic`` (an exponential moving average of its weights, towards whose values
  the critic is regularised): two-hot symlog values.

Acting (the recurrent actor contract of `heads.ActorCritic`): the state of an env is one float
tensor ``[h | z | previous action]``; ``step(obs, state, episode_starts)`` advances the RSSM with
the previous action, folds the observation in (posterior mode) and returns the actor's output;
``remember_action(state, actions)`` writes the action the caller took into the state (the world
model needs it at the next step). `mmrl eval`, GIFs and training call both.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..distributions import ActionSpace
from .heads import as_action_space

# Two-hot symlog bins of reward and value predictions (DreamerV3: 255 bins over [-20, 20]).
BINS = 255
BIN_RANGE = 20.0
# The decoder reconstructs an image pooled to at most this many pixels a side (see `observation_target`).
DECODED_SIDE = 16
# Symbolic grids (MiniGrid ids) are reconstructed as numbers divided by this (ids are below ~11).
GRID_SCALE = 10.0


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) log(1 + |x|): squashes large magnitudes, identity-like near 0."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


class TwoHot(nn.Module):
    """A scalar predicted as a categorical over fixed bins in symlog space (DreamerV3's two-hot).

    ``forward(features)`` gives logits; `mean` decodes them (expected bin, then symexp); `loss` is the
    cross-entropy to the two-hot encoding of a target. The output layer starts at zero, so the first
    predictions are 0 and early large targets do not blow the critic up.
    """

    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.net = mlp(features, hidden, BINS)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.register_buffer("bins", torch.linspace(-BIN_RANGE, BIN_RANGE, BINS), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits over the bins (no softmax)."""
        return self.net(features)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """The predicted scalar of each row of logits."""
        return symexp((logits.float().softmax(-1) * self.bins).sum(-1))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each row's logits to the two-hot encoding of symlog(target) (no reduction)."""
        y = symlog(target.float()).clamp(-BIN_RANGE, BIN_RANGE)
        above = torch.bucketize(y, self.bins).clamp(1, BINS - 1)
        below = above - 1
        low, high = self.bins[below], self.bins[above]
        weight_high = ((y - low) / (high - low)).clamp(0, 1)
        log_p = logits.float().log_softmax(-1)
        return -(log_p.gather(-1, below.unsqueeze(-1)).squeeze(-1) * (1 - weight_high)
                 + log_p.gather(-1, above.unsqueeze(-1)).squeeze(-1) * weight_high)


def mlp(inputs: int, hidden: int, outputs: int, layers: int = 2) -> nn.Sequential:
    """`layers` hidden layers (Linear, LayerNorm, SiLU, as DreamerV3) then a linear output."""
    parts, width = [], inputs
    for _ in range(layers):
        parts += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.SiLU()]
        width = hidden
    return nn.Sequential(*parts, nn.Linear(width, outputs))


def observation_target(obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the decoder reconstructs of a batch of observations (B, D), all in float32:

    - ``vector``: symlog of the vector;
    - ``image`` (uint8 RGB): the image average-pooled to at most `DECODED_SIDE` pixels a side, in [0, 1]
      (a built-in task cell is one tile: at 5x5 cells the pooled image still tells the objects apart);
    - ``grid`` (symbolic ids): the ids divided by `GRID_SCALE`;
    - the instruction (``mission``) is not reconstructed: it does not change within an episode and the
      posterior reads it at every step.
    """
    parts = []
    if "vector" in obs:
        parts.append(symlog(obs["vector"].float()).flatten(1))
    if "image" in obs:
        image = obs["image"].permute(0, 3, 1, 2).float() / 255.0
        height, width = image.shape[2:]
        parts.append(F.adaptive_avg_pool2d(image, (min(height, DECODED_SIDE), min(width, DECODED_SIDE))).flatten(1))
    if "grid" in obs:
        parts.append(obs["grid"].float().flatten(1) / GRID_SCALE)
    return torch.cat(parts, dim=1)


def split_target(target: torch.Tensor, observation_spec: dict) -> dict[str, torch.Tensor]:
    """`observation_target`'s rows (B, D) back in observation terms, per key: ``vector`` (symexp'd),
    ``image`` (B, h, w, 3) in [0, 1] at the pooled size, ``grid`` (B, H, W, C) ids as floats."""
    out, start = {}, 0
    if "vector" in observation_spec:
        size = observation_spec["vector"][0][0]
        out["vector"] = symexp(target[:, start : start + size])
        start += size
    if "image" in observation_spec:
        height, width, channels = observation_spec["image"][0]
        height, width = min(height, DECODED_SIDE), min(width, DECODED_SIDE)
        size = height * width * channels
        out["image"] = target[:, start : start + size].reshape(-1, channels, height, width).permute(0, 2, 3, 1).clamp(0, 1)
        start += size
    if "grid" in observation_spec:
        shape = observation_spec["grid"][0]
        out["grid"] = target[:, start:].reshape(-1, *shape) * GRID_SCALE
    return out


def zeros_like_spec(observation_spec: dict, batch: int = 1) -> dict[str, torch.Tensor]:
    """A batch of all-zero observations of an observation spec (for measuring widths)."""
    return {name: torch.zeros((batch, *shape), dtype=dtype) for name, (shape, dtype) in observation_spec.items()}


class RSSM(nn.Module):
    """Recurrent state-space model: ``h' = GRU(h, [z, a])``, prior ``p(z' | h')``, posterior
    ``q(z' | h', embed(obs'))``; `stoch` categorical latents of `classes` classes, 1% uniform mix."""

    def __init__(self, embed: int, action_size: int, deter: int, stoch: int, classes: int, hidden: int,
                 unimix: float):
        super().__init__()
        self.deter, self.stoch, self.classes, self.unimix = deter, stoch, classes, unimix
        self.img_in = nn.Sequential(nn.Linear(stoch * classes + action_size, hidden), nn.LayerNorm(hidden), nn.SiLU())
        self.gru = nn.GRUCell(hidden, deter)
        self.prior_net = mlp(deter, hidden, stoch * classes, layers=1)
        self.post_net = mlp(deter + embed, hidden, stoch * classes, layers=1)

    @property
    def stoch_size(self) -> int:
        """Width of a flattened one-hot stochastic state."""
        return self.stoch * self.classes

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, stoch, classes) log-probabilities: the net's output mixed with 1% uniform."""
        probs = raw.float().reshape(len(raw), self.stoch, self.classes).softmax(-1)
        probs = (1 - self.unimix) * probs + self.unimix / self.classes
        return probs.log()

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A one-hot sample (straight-through gradients), flattened to (B, stoch * classes)."""
        probs = logits.exp()
        uniform = torch.rand(probs.shape[:-1] + (1,), generator=generator, device=probs.device)
        index = (probs.cumsum(-1) < uniform).sum(-1).clamp(max=self.classes - 1)
        one_hot = F.one_hot(index, self.classes).float()
        return (one_hot + probs - probs.detach()).flatten(1)

    def mode(self, logits: torch.Tensor) -> torch.Tensor:
        """The most likely one-hot state, flattened."""
        return F.one_hot(logits.argmax(-1), self.classes).float().flatten(1)

    def deterministic(self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The next deterministic state from the current state and the action taken."""
        return self.gru(self.img_in(torch.cat([z, action], dim=-1)), h)

    def prior(self, h: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the stochastic state predicted from h alone."""
        return self.logits(self.prior_net(h))

    def posterior(self, h: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the stochastic state given h and the observation's embedding."""
        return self.logits(self.post_net(torch.cat([h, embed], dim=-1)))


def kl_categorical(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of (B, stoch, classes) categoricals, summed over the latents: (B,)."""
    return (log_p.exp() * (log_p - log_q)).sum((-2, -1))


class WorldModel(nn.Module):
    """Encoder, RSSM, decoder, reward and continuation heads (see the module docstring)."""

    def __init__(self, encoder: nn.Module, observation_spec: dict, action_size: int, settings):
        super().__init__()
        self.encoder = encoder
        with torch.no_grad():
            sample = zeros_like_spec(observation_spec)
            features = encoder.features(sample).shape[-1]
            target = observation_target(sample).shape[-1]
        self.embed_net = mlp(features, settings.hidden_size, settings.hidden_size, layers=1)
        embed = settings.hidden_size
        self.rssm = RSSM(embed, action_size, settings.deter_size, settings.stoch_size, settings.classes,
                         settings.hidden_size, settings.unimix)
        features = settings.deter_size + self.rssm.stoch_size
        self.decoder = mlp(features, settings.hidden_size, target)
        self.reward_head = TwoHot(features, settings.hidden_size)
        self.cont_head = mlp(features, settings.hidden_size, 1)
        self.feature_size = features

    def embed(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The embedding of a batch of observations: the encoder's features (of symlog vectors, as
        DreamerV3 feeds them) through one more layer."""
        if "vector" in obs:
            obs = {**obs, "vector": symlog(obs["vector"].float())}
        return self.embed_net(self.encoder.features(obs))

    def observe(self, embeds: torch.Tensor, prev_actions: torch.Tensor, is_first: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Run the RSSM along sequences: embeddings (T, B, E), the action before each step (T, B, A),
        episode starts (T, B) (the state is zeroed there, and at t = 0). Returns per step (T, B, ...):
        ``h``, ``z`` (posterior samples), ``post`` and ``prior`` log-probabilities, ``features`` [h, z]."""
        steps, batch = is_first.shape
        h = embeds.new_zeros(batch, self.rssm.deter)
        z = embeds.new_zeros(batch, self.rssm.stoch_size)
        out = {name: [] for name in ("h", "z", "post", "prior")}
        for t in range(steps):
            keep = (1.0 - is_first[t].float()).unsqueeze(-1)
            h, z, action = h * keep, z * keep, prev_actions[t] * keep
            h = self.rssm.deterministic(h, z, action)
            prior = self.rssm.prior(h)
            post = self.rssm.posterior(h, embeds[t])
            z = self.rssm.sample(post, generator)
            for name, value in (("h", h), ("z", z), ("post", post), ("prior", prior)):
                out[name].append(value)
        states = {name: torch.stack(values) for name, values in out.items()}
        states["features"] = torch.cat([states["h"], states["z"]], dim=-1)
        return states

    def imagine_step(self, h: torch.Tensor, z: torch.Tensor, action: torch.Tensor,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One imagined step: the next (h, z) from the prior, without an observation."""
        h = self.rssm.deterministic(h, z, action)
        return h, self.rssm.sample(self.rssm.prior(h), generator)


class DreamerAgent(nn.Module):
    """World model, actor, critic and slow critic: the policy of an `algo=dreamer` run (see the module
    docstring for the acting contract)."""

    recurrent = True

    def __init__(self, settings, encoder: nn.Module, observation_spec: dict, action_space: ActionSpace | int):
        super().__init__()
        self.space = as_action_space(action_space)
        self.action_size = self.space.param_size
        if getattr(encoder, "memory", None) is not None:
            raise ValueError("model.memory: algo=dreamer's RSSM is the memory: use model.memory=none")
        for unused in ("heads", "layers"):  # only `features` is used: not the heads (nor the MLP policy's hidden layers)
            if hasattr(encoder, unused):
                delattr(encoder, unused)
        self.world_model = WorldModel(encoder, observation_spec, self.action_size, settings)
        features = self.world_model.feature_size
        self.actor = mlp(features, settings.hidden_size, self.action_size)
        nn.init.zeros_(self.actor[-1].weight)  # a uniform (or centred) first policy
        nn.init.zeros_(self.actor[-1].bias)
        if not self.space.is_discrete:
            self.log_std = nn.Parameter(torch.zeros(self.action_size))
        self.critic = TwoHot(features, settings.hidden_size)
        self.slow_critic = TwoHot(features, settings.hidden_size)
        self.slow_critic.load_state_dict(self.critic.state_dict())
        self.slow_critic.requires_grad_(False)

    # ----------------------------------------------------------------- the actor contract
    @property
    def action_space(self) -> ActionSpace:
        """The action space the agent acts in."""
        return self.space

    def distribution(self, params: torch.Tensor):
        """The action distribution of actor output `params`."""
        return self.space.distribution(params, getattr(self, "log_std", None))

    @property
    def state_size(self) -> int:
        """Width of one env's state: h, the flattened z and the previous action."""
        rssm = self.world_model.rssm
        return rssm.deter + rssm.stoch_size + self.action_size

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The zero state of `batch` envs (what every episode starts from)."""
        return torch.zeros(batch, self.state_size, device=device)

    def split_state(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h, z, previous action) of a state tensor."""
        rssm = self.world_model.rssm
        return state.split([rssm.deter, rssm.stoch_size, self.action_size], dim=-1)

    def action_input(self, actions: torch.Tensor) -> torch.Tensor:
        """What the world model reads of actions: one-hot (discrete) or the raw Gaussian sample clamped
        to [-5, 5] (box), as (B, action_size) float32."""
        if self.space.is_discrete:
            return F.one_hot(actions.long(), self.action_size).float()
        return actions.float().reshape(len(actions), -1).clamp(-5.0, 5.0)

    def step(self, obs: dict[str, torch.Tensor], state: torch.Tensor,
             episode_starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One acting step: (actor output, value, new state). The state is zeroed where an episode starts;
        the posterior's mode is the stochastic state (acting is deterministic given the actions)."""
        state = state * (1.0 - episode_starts.float()).unsqueeze(-1)
        h, z, action = self.split_state(state.float())
        world = self.world_model
        h = world.rssm.deterministic(h, z, action)
        z = world.rssm.mode(world.rssm.posterior(h, world.embed(obs)))
        features = torch.cat([h, z], dim=-1)
        return self.actor(features), self.critic.mean(self.critic(features)), torch.cat([h, z, action], dim=-1)

    def remember_action(self, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """`state` with the action just taken written in (the world model reads it at the next step)."""
        h, z, _ = self.split_state(state)
        return torch.cat([h, z, self.action_input(actions).to(state.dtype)], dim=-1)

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from the zero state (every observation an episode's first): for shape checks only."""
        starts = torch.ones(len(next(iter(obs.values()))), device=self.critic.bins.device)
        params, value, _ = self.step(obs, self.initial_state(len(starts), starts.device), starts)
        return params, value

    def imagine_next(self, state: torch.Tensor) -> torch.Tensor:
        """The state one imagined step later (no observation: the prior's mode), from a state with the
        action taken written in (`remember_action`); the action part is kept."""
        h, z, action = self.split_state(state)
        h = self.world_model.rssm.deterministic(h, z, action)
        z = self.world_model.rssm.mode(self.world_model.rssm.prior(h))
        return torch.cat([h, z, action], dim=-1)

    def decode_state(self, state: torch.Tensor) -> torch.Tensor:
        """The decoder's view (`observation_target` rows) of acting states."""
        h, z, _ = self.split_state(state)
        return self.decode(torch.cat([h, z], dim=-1))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """The decoder's reconstruction of `observation_target` from model states' features."""
        return self.world_model.decoder(features)
