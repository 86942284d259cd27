"""The sequential built-in task: "go to the red ball, then the blue key, then the green box".

`GotoSeqEnv` is the `goto` task (envs/goto.py) with an instruction of 2 to 4 steps
(``data.sequence_steps``: the step counts levels draw from, e.g. ``[2, 3]``; a level's count is
a hash of its id, like its layout). Everything else is goto's: the level splits (disjoint by
content: the layout hash covers the ordered targets), paraphrases (``data.wordings=paraphrase``:
each clause worded like a goto instruction, joined by a training joiner, or a held-out one in
``split=new-wordings``), the difficulty knobs (grid size, distractors, walls, max steps) and a
curriculum's stages.

Rules:

- the targets are distinct objects; distractors are other objects (never one of the targets);
- stepping into the *current* target completes its step: the object is removed from the grid and
  the agent moves onto its cell (so the image alone says how far the instruction has got, and a
  memoryless policy can solve the task); the reward for a step is ``(1 - 0.9 * t / max_steps) /
  k`` (t: the episode's steps so far, k: the instruction's steps), so a whole instruction is worth
  at most 1, like one goto episode, and partial progress is paid for;
- the episode is a success, and ends, when the last step is done; stepping into any other object
  (a distractor, or a later target out of order) ends it as a failure, keeping the rewards of the
  steps already done; running out of ``max_steps`` ends it as a failure too (a truncation).

Observations (shaped for 4-step instructions whatever ``sequence_steps`` is, so a policy trained on
2 and 3 steps plays 4-step levels): goto's ``image`` and ``mission`` (the whole instruction), plus ``subgoals`` (K, L):
each clause of the instruction as a goto instruction's token ids (the sub-goal instructions a
hierarchical agent's low level reads; rows past the instruction's steps are padding), and
``progress`` (1,): the steps done so far (what a hierarchical agent watches for a sub-goal
boundary). The policies of the repository read ``image`` and ``mission`` only. ``progress`` is
also a per-step field (`step_fields`), and ``touched`` (the object code entered at the last step,
0 for none) tells a low-level learner which object its step reached.
"""

from __future__ import annotations

import torch

from . import wordings as wording
from .goto import EMPTY, NUM_OBJECT_KINDS, OBJECT_BASE, GotoEnv, _hash32, level_random, object_code

# How clauses are joined: the fixed wording, training paraphrases, held-out paraphrases (new-wordings).
FIXED_JOINER = ", then "
TRAIN_JOINERS = (FIXED_JOINER, " and then ", ", after that ")
HELDOUT_JOINERS = (", next ", " and next ")
MAX_SEQUENCE_STEPS = 4  # the range: instructions of 2 to 4 steps (1 is goto with this env's rules)
_KIND_BASE = NUM_OBJECT_KINDS + 1  # an ordered target sequence packed into one int64: digits of this base


def joiners(wordings: str, held_out: bool) -> tuple[str, ...]:
    """The clause joiners of a wording set."""
    if wordings == "fixed":
        return (FIXED_JOINER,)
    return HELDOUT_JOINERS if held_out else TRAIN_JOINERS


def sequence_mission_length(tokenizer, wordings: str, steps: int) -> int:
    """Tokens of the longest instruction of `steps` clauses under `wordings` (any split): the longest
    clause `steps` times, joined by the longest joiner."""
    clauses = wording.all_instructions(wordings)
    longest = max(clauses, key=lambda text: tokenizer.needed_length([text]))
    joiner = max((j for h in (False, True) for j in joiners(wordings, h)), key=lambda j: tokenizer.needed_length([j]))
    return tokenizer.needed_length([joiner.join([longest] * steps)])


class GotoSeqEnv(GotoEnv):
    """A batch of sequential goto levels stepped together as tensors (see the module docstring)."""

    LEVEL_FIELDS = GotoEnv.LEVEL_FIELDS + ("targets", "num_targets", "subgoals")
    step_fields = ("level_id", "progress")
    label_classes: dict[str, int] = {}  # a sequence has several targets: no single target to name

    def __init__(self, num_envs: int, sequence_steps=(2, 3), wordings: str = "fixed", tokenizer=None,
                 split: str = "train", **goto_kwargs):
        steps = tuple(int(s) for s in sequence_steps)
        if not steps or min(steps) < 1 or max(steps) > MAX_SEQUENCE_STEPS:
            raise ValueError(f"sequence_steps must be step counts in [1, {MAX_SEQUENCE_STEPS}], got {list(steps)}")
        # Observation shapes are those of the longest instruction the task has (MAX_SEQUENCE_STEPS), whatever
        # `sequence_steps` is: a policy trained on 2 and 3 steps plays 4-step levels as they are.
        self.sequence_steps, self.max_targets = steps, MAX_SEQUENCE_STEPS
        from ..text import WordTokenizer

        tokenizer = tokenizer if tokenizer is not None else WordTokenizer()
        self.sequence_tokens = sequence_mission_length(tokenizer, wordings, self.max_targets)
        self.joiners = joiners(wordings, held_out=split == "new-wordings")
        self.texts = wording.table(wordings, held_out=split == "new-wordings")
        super().__init__(num_envs, wordings=wordings, tokenizer=tokenizer, split=split, **goto_kwargs)
        self.subgoal_tokens = self.mission_tokens  # a clause is a goto instruction: goto's length
        self.progress = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.touched = torch.zeros(num_envs, dtype=torch.int64, device=self.device)

    @property
    def observation_spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """goto's image, the whole instruction, its clauses as goto instructions, the steps done."""
        side = self.grid_size * self.tile_size
        return {"image": ((side, side, 3), torch.uint8), "mission": ((self.sequence_tokens,), torch.int64),
                "subgoals": ((self.max_targets, self.mission_tokens), torch.int64), "progress": ((1,), torch.int64)}

    def observation(self) -> dict[str, torch.Tensor]:
        """The current observation of every sub-environment (views of the env's buffers)."""
        return {"image": self.image, "mission": self.mission, "subgoals": self.subgoals,
                "progress": self.progress.unsqueeze(1)}

    # ----------------------------------------------------------------------------- levels
    def steps_of(self, level_ids: torch.Tensor) -> torch.Tensor:
        """(k,) how many steps each level's instruction has: one of `sequence_steps`, by a hash of its id."""
        choices = torch.tensor(self.sequence_steps, device=level_ids.device)
        return choices[_hash32(level_ids * 0x6A09E667 + 0x3C6EF372) % len(self.sequence_steps)]

    def layouts(self, level_ids: torch.Tensor, attempts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate layouts: flat cells (k, g*g), agent cell (k,), and the ordered targets packed in one
        integer (digit j, base NUM_OBJECT_KINDS + 1: target j's kind + 1, 0 past the last step), which
        also goes into the layout hash, so the split of a layout depends on the order of its targets."""
        g, k, K, D = self.grid_size, len(level_ids), self.max_targets, self.num_distractors
        slots = K + D
        rand = level_random(level_ids, attempts, NUM_OBJECT_KINDS + 1 + slots + g * g)
        kinds = torch.argsort(rand[:, :NUM_OBJECT_KINDS], dim=1)  # distinct kinds: targets first, then distractors
        order = torch.argsort(rand[:, NUM_OBJECT_KINDS + 1 + slots :], dim=1)  # cells: agent, objects, walls
        steps = self.steps_of(level_ids)
        slot = torch.arange(slots, device=self.device)
        distractors = self.distractor_counts(level_ids)
        placed = (slot[None, :] < steps[:, None]) | (  # this level's targets, and its distractors
            (slot[None, :] >= K) & (slot[None, :] < K + distractors[:, None]))
        codes = torch.where(placed, OBJECT_BASE + kinds[:, :slots], EMPTY)
        cells = torch.zeros(k, g * g, dtype=torch.int64, device=self.device)
        cells.scatter_(1, order[:, 1 : 1 + slots], codes)
        if self.num_walls:
            cells.scatter_(1, order[:, 1 + slots : 1 + slots + self.num_walls], 1)  # WALL
        digits = torch.where(slot[None, :K] < steps[:, None], kinds[:, :K] + 1, 0)
        packed = (digits * _KIND_BASE ** torch.arange(K, device=self.device)).sum(1)
        return cells, order[:, 0], packed

    def generate_levels(self, level_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Lay out, word and draw the levels `level_ids`: a dict of `LEVEL_FIELDS` tensors."""
        g, k, K = self.grid_size, len(level_ids), self.max_targets
        flat_cells, agent_cell, packed = self.split_layouts(level_ids)
        digits = packed[:, None] // _KIND_BASE ** torch.arange(K, device=self.device) % _KIND_BASE
        targets = torch.where(digits > 0, OBJECT_BASE + digits - 1, -1)
        cells = flat_cells.view(k, g, g)
        agent = torch.stack([agent_cell // g, agent_cell % g], dim=1)
        rows = self.clause_rows(level_ids, (digits - 1).clamp(min=0))
        subgoals = self.mission_table.index_select(0, rows.view(-1)).view(k, K, -1) * (digits > 0)[:, :, None]
        return {
            "cells": cells, "agent": agent, "target": targets[:, 0].clone(), "level_id": level_ids.clone(),
            "mission": self.instructions(level_ids, targets, rows), "image": self.render(cells, agent),
            "targets": targets, "num_targets": (digits > 0).sum(1), "subgoals": subgoals,
        }

    def clause_rows(self, level_ids: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """(k, K) `mission_table` rows of each clause: its object kind in the wording a hash of (level id,
        clause) picks (the one wording under ``wordings=fixed``)."""
        if self.wording_variants == 1:
            return kinds
        clause = torch.arange(kinds.shape[1], device=self.device)
        variant = _hash32(level_ids[:, None] * 0x2C1B3C6D + clause[None, :] * 0x1B873593 + 0x297A2D39) % self.wording_variants
        return variant * NUM_OBJECT_KINDS + kinds

    def instructions(self, level_ids: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(k, sequence_tokens) token ids of each level's whole instruction: its clauses (in the wording
        `clause_rows` picked), joined by a joiner its id hashes to."""
        per_row = [text for variant in self.texts for text in variant]
        joiner = (_hash32(level_ids * 0x7F4A7C15 + 0x61C88647) % len(self.joiners)).tolist()
        texts = []
        for level_rows, level_targets, j in zip(rows.tolist(), (targets >= 0).tolist(), joiner):
            clauses = [per_row[r] for r, present in zip(level_rows, level_targets) if present]
            texts.append(self.joiners[j].join(clauses))
        return self.tokenizer.encode_batch(texts, self.sequence_tokens).to(self.device)

    def load_levels(self, index: torch.Tensor, levels: dict[str, torch.Tensor]) -> None:
        """Start new episodes on `levels` in sub-environments `index` (no step done yet)."""
        super().load_levels(index, levels)
        self.progress.index_fill_(0, index, 0)

    def set_level(self, env: int, rows: list[str], target) -> None:
        """Load a hand-written level into sub-environment `env` (tests, demos): `rows` as in
        `GotoEnv.set_level`, `target` the steps in order: a list of (colour, type) pairs (or one pair)."""
        steps = [target] if isinstance(target, tuple) else list(target)
        if not 1 <= len(steps) <= self.max_targets:
            raise ValueError(f"a level of this env has 1 to {self.max_targets} steps, got {len(steps)}")
        cells, agent = self.parse_level(rows)
        K = self.max_targets
        digits = torch.tensor([[object_code(*s) - OBJECT_BASE + 1 for s in steps] + [0] * (K - len(steps))],
                              device=self.device)
        targets = torch.where(digits > 0, OBJECT_BASE + digits - 1, -1)
        ids = torch.tensor([-1], device=self.device)
        rows_ = self.clause_rows(ids, (digits - 1).clamp(min=0))
        level = {
            "cells": cells, "agent": agent, "target": targets[:, 0].clone(), "level_id": ids,
            "mission": self.instructions(ids, targets, rows_), "image": self.render(cells, agent),
            "targets": targets, "num_targets": (digits > 0).sum(1),
            "subgoals": self.mission_table.index_select(0, rows_.view(-1)).view(1, K, -1) * (digits > 0)[:, :, None],
        }
        self.load_levels(torch.tensor([env], device=self.device), level)

    # ----------------------------------------------------------------------- gym-style API
    def step(self, actions: torch.Tensor):
        """Advance every sub-environment by one action (see the module docstring for the rules).

        Returns ``(obs, reward, terminated, truncated, info)`` as `GotoEnv.step`; ``info`` also has
        ``progress`` and ``num_targets`` of the episodes that ended (steps done, steps asked).
        """
        g = self.grid_size
        old = self.agent
        new = (old + self.moves.index_select(0, actions)).clamp_(0, g - 1)
        flat = self.cell_offset + new[:, 0] * g + new[:, 1]
        code = self.cells.view(-1).index_select(0, flat)
        hit_object = code >= OBJECT_BASE
        reached = hit_object & (code == self.target)
        wrong = hit_object & ~reached
        self.touched.copy_(torch.where(hit_object, code, 0))
        self.cells.view(-1).scatter_(0, flat, torch.where(reached, EMPTY, code))  # a reached target is removed
        self.agent = torch.where(((code == EMPTY) | reached)[:, None], new, old)
        self.steps += 1
        self.progress += reached
        success = reached & (self.progress >= self.num_targets)
        terminated = success | wrong
        truncated = (self.steps >= self.max_steps) & ~terminated
        reward = reached.float() * (1.0 - 0.9 * self.steps.float() / self.max_steps) / self.num_targets.float()
        self.episode_return += reward
        self.target.copy_(self.targets.gather(1, self.progress.clamp(max=self.max_targets - 1)[:, None]).squeeze(1))
        return self.finish_step(old, reward, terminated, truncated, success, fields=("progress", "num_targets"))

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """goto's state plus the steps done in each episode and the last object touched."""
        return {**super().state_dict(), "progress": self.progress, "touched": self.touched}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a state produced by `state_dict`."""
        super().load_state_dict(state)
        self.progress.copy_(state["progress"])
        self.touched.copy_(state["touched"])
