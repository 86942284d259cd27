"""The hierarchical agent's two policies as one module: a high level that picks the next sub-goal,
a goal-conditioned low level that acts until it is reached (docs/hierarchical.md).

- ``high``: the configured model (vit-gpt2 by default) over the image and the *whole* instruction;
  its actions are the instruction's clauses (``K`` = the most steps an instruction has), masked
  to the clauses this instruction has whose step is not done yet (the options' initiation sets:
  "go to X" is available while X is on the grid). It is asked only at a sub-goal boundary: an episode's
  start, the sub-goal reached (the env's ``progress`` observation moved on), or the low level's
  step budget (``option_steps``) spent.
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


class HierarchicalPolicy(nn.Module):
    """``high`` picks a clause of the instruction; ``low`` goes to it (see the module docstring)."""

    recurrent = True  # evaluation and GIFs carry the option state between steps

    def __init__(self, model_cfg, observation_spec: dict, action_space: ActionSpace | int, patch_size: int,
                 option_steps: int, build):
        super().__init__()
        if "subgoals" not in observation_spec or "progress" not in observation_spec:
            raise ValueError("the hierarchical agent needs a sequential task (data=goto-seq: 'subgoals' and "
                             "'progress' observations)")
        clauses, tokens = observation_spec["subgoals"][0]
        image = observation_spec["image"]
        self.option_steps = option_steps
        self.pad_id = tokenizer_for(model_cfg).pad_id
        self.high = build(model_cfg, {"image": image, "mission": observation_spec["mission"]},
                          ActionSpace.discrete(clauses), patch_size)
        self.low = build(model_cfg, {"image": image, "mission": ((tokens,), torch.int64)}, action_space, patch_size)
        self.action_space = self.low.action_space

    # ------------------------------------------------------------------------ the pieces
    def clause_mask(self, obs: dict) -> torch.Tensor:
        """(B, K) True for the clauses the high level may pick: the instruction has them and their step is
        not done yet (an option's initiation set: "go to X" exists while X is on the grid, and a done
        step's object has been removed)."""
        clause = torch.arange(obs["subgoals"].shape[1], device=obs["subgoals"].device)
        return (obs["subgoals"][:, :, 0] != self.pad_id) & (clause[None, :] >= obs["progress"])

    def high_outputs(self, obs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The high level's clause logits (absent clauses masked out) and value on `obs`."""
        logits, value = self.high({"image": obs["image"], "mission": obs["mission"]})
        return logits.float().masked_fill(~self.clause_mask(obs), MASKED_LOGIT), value

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
