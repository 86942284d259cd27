"""The hierarchical agent's two policies as one module: a high level that picks the next sub-goal,
a goal-conditioned low level that acts until it is reached (docs/hierarchical.md).

- ``high`` (`HighLevel`): the configured model (vit-gpt2 by default) over the image and the *whole*
  instruction; its actions are the instruction's clauses (``K`` = the most steps an instruction
  has), masked to the clauses this instruction has whose step is not done yet (the options'
  initiation sets: "go to X" is available while X is on the grid). Its head (``algo.high_head``)
  is a *pointer* by default: the model's output is a query, each clause gets a key from one shared
  function of its words and its place among the open clauses, and a clause's logit is their dot
  product, so the same weights score the clauses of an instruction of any length; the ``index``
  head has one logit per clause position instead, and a position never trained (the 4th, after
  training on 2 and 3 steps) keeps a random logit. It is asked only at a sub-goal boundary: an
  episode's start, the sub-goal reached (the env's ``progress`` observation moved on), or the low
  level's step budget (``option_steps``) spent.
- ``low``: the same model over the image and the chosen clause worded as a goto instruction
  (the env's ``subgoals`` observation), with the env's actions: a goto policy, so a trained
  ``data=goto`` run's weights fit it (``algo.low_init_from``).

For acting outside training (evaluation, GIFs) the module follows the recurrent actor contract
(``recurrent``, ``initial_state``, ``step``): its state is, per env, (chosen clause, steps since
it was chosen, ``progress`` when it was chosen); there the high level picks its most likely
clause. Training (algos/hierarchical.py) samples both levels and uses the same pieces
(`boundaries`, `high_outputs`, `low_inputs`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributions import ActionSpace
from ..text import tokenizer_for

CLAUSE, OPTION_STEPS, PROGRESS_AT_START = 0, 1, 2  # columns of the acting state
MASKED_LOGIT = -1e9  # logit of a clause the instruction does not have (probability exactly 0)
POINTER_WIDTH = 64  # width of the pointer head's query and keys
HIGH_INPUTS = ("image", "mission", "subgoals", "progress")  # what the high level reads (a stored option keeps these)


def open_clauses(subgoals: torch.Tensor, progress: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, K) True for the clauses the high level may pick: the instruction has them and their step is
    not done yet (an option's initiation set: "go to X" exists while X is on the grid, and a done
    step's object has been removed)."""
    clause = torch.arange(subgoals.shape[1], device=subgoals.device)
    return (subgoals[:, :, 0] != pad_id) & (clause[None, :] >= progress)


class ClauseKeys(nn.Module):
    """One key per clause from one shared function: the mean embedding of the clause's words and the
    clause's place among the open clauses (``rank / open``: 0 for the first open clause, below 1 for
    any other, whatever the instruction's length), through a small tanh MLP."""

    def __init__(self, vocab_size: int, pad_id: int, width: int):
        super().__init__()
        self.words = nn.EmbeddingBag(vocab_size, width, mode="mean", padding_idx=pad_id)  # padding left out of the mean
        self.mlp = nn.Sequential(nn.Linear(width + 1, width), nn.Tanh(), nn.Linear(width, width))

    def forward(self, subgoals: torch.Tensor, open_: torch.Tensor) -> torch.Tensor:
        """Keys (B, K, width) of clauses `subgoals` (B, K, L) given which are open (B, K)."""
        words = self.words(subgoals.flatten(0, 1)).view(*subgoals.shape[:2], -1)
        opened = open_.float()
        rank = opened.cumsum(1) - opened  # open clauses before this one
        place = rank / opened.sum(1, keepdim=True).clamp(min=1.0)
        return self.mlp(torch.cat([words, place.unsqueeze(-1)], dim=-1))


class HighLevel(nn.Module):
    """The high level: a policy of the configured model over the image and the whole instruction, and
    its head over the instruction's clauses (``pointer`` or ``index``, see the module docstring).
    ``forward(obs)`` takes `HIGH_INPUTS` and returns (clause logits with the closed clauses masked out, value)."""

    def __init__(self, model: nn.Module, head: str, clauses: int, tokenizer):
        super().__init__()
        self.model, self.pad_id = model, tokenizer.pad_id
        self.keys = ClauseKeys(tokenizer.vocab_size, tokenizer.pad_id, POINTER_WIDTH) if head == "pointer" else None
        self.choices = ActionSpace.discrete(clauses)

    def forward(self, obs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        output, value = self.model({"image": obs["image"], "mission": obs["mission"]})
        open_ = open_clauses(obs["subgoals"], obs["progress"], self.pad_id)
        if self.keys is None:
            logits = output.float()
        else:  # the model's output is the query
            logits = torch.einsum("bd,bkd->bk", output.float(), self.keys(obs["subgoals"], open_).float())
        return logits.masked_fill(~open_, MASKED_LOGIT), value

    def distribution(self, logits: torch.Tensor):
        """The categorical distribution over the clauses."""
        return self.choices.distribution(logits)


class HierarchicalPolicy(nn.Module):
    """``high`` picks a clause of the instruction; ``low`` goes to it (see the module docstring)."""

    recurrent = True  # evaluation and GIFs carry the option state between steps

    def __init__(self, model_cfg, observation_spec: dict, action_space: ActionSpace | int, patch_size: int,
                 option_steps: int, build, high_head: str = "pointer"):
        super().__init__()
        if "subgoals" not in observation_spec or "progress" not in observation_spec:
            raise ValueError("the hierarchical agent needs a sequential task (data=goto-seq: 'subgoals' and "
                             "'progress' observations)")
        clauses, tokens = observation_spec["subgoals"][0]
        image = observation_spec["image"]
        self.option_steps = option_steps
        tokenizer = tokenizer_for(model_cfg)
        self.pad_id = tokenizer.pad_id
        outputs = POINTER_WIDTH if high_head == "pointer" else clauses  # a query, or a logit per clause position
        model = build(model_cfg, {"image": image, "mission": observation_spec["mission"]}, ActionSpace.discrete(outputs),
                      patch_size)
        self.high = HighLevel(model, high_head, clauses, tokenizer)
        self.low = build(model_cfg, {"image": image, "mission": ((tokens,), torch.int64)}, action_space, patch_size)
        self.action_space = self.low.action_space

    # ------------------------------------------------------------------------ the pieces
    def high_outputs(self, obs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The high level's clause logits (closed clauses masked out) and value on `obs`."""
        return self.high({name: obs[name] for name in HIGH_INPUTS})

    def low_inputs(self, obs: dict, clause: torch.Tensor) -> dict:
        """What the low level sees: the image and the chosen clause as a goto instruction."""
        rows = torch.arange(len(clause), device=clause.device)
        return {"image": obs["image"], "mission": obs["subgoals"][rows, clause]}

    def boundaries(self, obs: dict, state: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """(B,) True where the high level must choose now: an episode starts, the sub-goal was reached
        (``progress`` moved on since it was chosen), or the low level's `option_steps` are spent."""
        progress = obs["progress"][:, 0].float()
        return (starts.bool() | (progress != state[:, PROGRESS_AT_START])
                | (state[:, OPTION_STEPS] >= self.option_steps))

    def started(self, obs: dict, state: torch.Tensor, index: torch.Tensor, clause: torch.Tensor) -> torch.Tensor:
        """The state with new options `clause` started in envs `index` (their step counters at 0)."""
        state = state.clone()
        state[index, CLAUSE] = clause.float()
        state[index, OPTION_STEPS] = 0.0
        state[index, PROGRESS_AT_START] = obs["progress"][index, 0].float()
        return state

    @staticmethod
    def sub_obs(obs: dict, index: torch.Tensor) -> dict:
        """The observations of envs `index`."""
        return {k: v.index_select(0, index) for k, v in obs.items()}

    # ------------------------------------------------------- the recurrent actor contract
    def initial_state(self, batch: int, device) -> torch.Tensor:
        """(batch, 3) zeros: (clause, steps in the option, progress when chosen)."""
        return torch.zeros(batch, 3, device=device)

    def distribution(self, params: torch.Tensor):
        """The low level's action distribution."""
        return self.low.distribution(params)

    def step(self, obs: dict, state: torch.Tensor, episode_starts: torch.Tensor):
        """One acting step: at a boundary the high level picks its most likely clause (asked for those
        envs only), then the low level acts on it. Returns (low action params, low value, new state)."""
        boundary = self.boundaries(obs, state, episode_starts)
        index = torch.nonzero(boundary).squeeze(1)
        if len(index):
            logits, _ = self.high_outputs(self.sub_obs(obs, index))
            state = self.started(obs, state, index, logits.argmax(-1))
        params, value = self.low(self.low_inputs(obs, state[:, CLAUSE].long()))
        state = state.clone()
        state[:, OPTION_STEPS] += 1
        return params, value, state

    def forward(self, obs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from the start of an episode (what a memoryless caller gets)."""
        batch = len(obs["image"])
        params, value, _ = self.step(obs, self.initial_state(batch, obs["image"].device),
                                     torch.ones(batch, device=obs["image"].device))
        return params, value

    def describe(self, obs: dict, state: torch.Tensor, tokenizer) -> str:
        """The sub-goal env 0 is on, for a GIF caption: "sub-goal 2/3: go to the blue key"."""
        clause = int(state[0, CLAUSE])
        count = int((obs["subgoals"][0, :, 0] != self.pad_id).sum())
        return f"sub-goal {clause + 1}/{count}: {tokenizer.decode(obs['subgoals'][0, clause])}"
