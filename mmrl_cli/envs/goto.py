"""The built-in multimodal task: `goto`, a batched grid world simulated in torch.

Every sub-environment lives in a row of a few tensors, so one `step` advances all of them with
a handful of tensor ops, on CPU or GPU. Each observation speaks two modalities:

- ``image``: uint8 RGB rendering of the grid, one ``tile_size`` x ``tile_size`` tile per cell,
  so a ViT patch of the same size sees exactly one cell;
- ``mission``: token ids of an instruction such as "go to the red ball", from the tokenizer
  the model names (`mmrl_cli.text`); worded one fixed way or paraphrased (`wordings`).

The agent moves up/down/left/right. Stepping into the named object is a success (reward
``1 - 0.9 * steps / max_steps``, BabyAI style); stepping into any other object ends the episode
with reward 0; so does running out of steps (reported as truncation). Walls and the grid edge
block movement. Finished sub-environments reset themselves in the same step (the observation
returned for them is the first one of the next episode; the last one is in ``info``).

Levels are generated from an integer level id by a stateless hash, so the same id always gives
the same level on any device. There are three splits of levels: training, validation (periodic
evaluations choose on these) and held-out (the final report). They are disjoint by *content*,
not only by id: a hash of the layout (every cell, the agent's position, the target) puts each
possible layout in exactly one split (80% / 10% / 10% of all layouts), and a level id draws
candidate layouts until one falls in its split. So a held-out level is never a training level
that happens to come from another id. Ids are also kept apart (`SPLIT_ID_BASE`), so that the
validation and held-out sets are fixed, sequential lists of ids. A fourth split, ``new-wordings``,
plays the held-out levels with instructions worded in held-out ways (envs/wordings.py).
"""

from __future__ import annotations

import math

import torch

from ..distributions import ActionSpace

from ..rng import load_generator_state

from ..text import WordTokenizer
from . import wordings as wording
from .wordings import COLORS, OBJECT_TYPES

EMPTY, WALL, OBJECT_BASE = 0, 1, 2
NUM_OBJECT_KINDS = len(COLORS) * len(OBJECT_TYPES)
AGENT = OBJECT_BASE + NUM_OBJECT_KINDS  # tile index used only for drawing the agent
SPLITS = ("train", "validation", "heldout", "new-wordings")
# The levels each split plays: new wordings are held-out levels, worded in held-out ways.
LEVEL_SPLIT = {"train": "train", "validation": "validation", "heldout": "heldout", "new-wordings": "heldout"}
# Share of all possible layouts in each split, as a range of the layout hash's percentile.
SPLIT_PERCENTILES = {"train": (0, 80), "validation": (80, 90), "heldout": (90, 100)}
# Level ids of each split start here (training ids are drawn below 2^30; the others count up).
SPLIT_ID_BASE = {"train": 0, "validation": 1 << 30, "heldout": 1 << 31}
# A config must allow at least this many distinct layouts, so each split has plenty.
MIN_LAYOUTS = 2000
MISSION_TOKENS = 8  # instruction length with the built-in tokenizer (longer when a wording needs more)
ACTION_NAMES = ("up", "down", "left", "right")
_MOVES = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=torch.int64)
_MASK32 = 0xFFFFFFFF
_COLOR_RGB = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "purple": (112, 39, 195), "yellow": (255, 255, 0), "grey": (100, 100, 100),
}


def object_code(color: str, object_type: str) -> int:
    """Cell code of an object of the given colour and type."""
    return OBJECT_BASE + OBJECT_TYPES.index(object_type) * len(COLORS) + COLORS.index(color)


def describe(code: int) -> tuple[str, str]:
    """(colour, type) of an object cell code."""
    kind = code - OBJECT_BASE
    return COLORS[kind % len(COLORS)], OBJECT_TYPES[kind // len(COLORS)]


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Stateless integer hash of non-negative int64 values, result in [0, 2^32)."""
    x = x & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def level_random(level_ids: torch.Tensor, attempts: torch.Tensor, draws: int) -> torch.Tensor:
    """(n, draws) pseudo-random 32-bit integers determined by each (level id, attempt) pair alone."""
    base = _hash32(_hash32(level_ids * 0x9E3779B1 + 0x7F4A7C15) ^ _hash32(attempts * 0x2545F491 + 0x3C6EF372))
    k = torch.arange(draws, device=level_ids.device, dtype=torch.int64)
    return _hash32(base[:, None] ^ _hash32(k * 0x85EBCA6B + 1)[None, :])


def layout_percentile(cells: torch.Tensor, agent_cell: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(k,) value in [0, 100) given by a layout's content alone: which split the layout belongs to.

    `cells` (k, g*g) cell codes, `agent_cell` (k,) the agent's flat cell index, `target` (k,) the
    target's cell code. Each cell's hash depends on its position and code; their sum (mod 2^32)
    hashed once more with the agent and target is the layout's hash.
    """
    positions = torch.arange(cells.shape[1], device=cells.device, dtype=torch.int64)
    per_cell = _hash32(cells * 0x165667B1 + positions * 0x27D4EB2F + 0x61C88647)
    combined = _hash32((per_cell.sum(1) & _MASK32) ^ _hash32(agent_cell * 0x9E3779B1 + target * 0x85EBCA6B))
    return combined % 100


def count_layouts(grid_size: int, num_distractors: int, num_walls: int) -> int:
    """How many distinct levels a goto config can generate (a lower bound: wall placements collide).

    Agent cell, target cell, distractor cells (unordered), target kind, distractor kinds, wall cells.
    """
    cells = grid_size * grid_size
    objects = 1 + num_distractors
    if 1 + objects + num_walls > cells:
        return 0
    placements = cells * math.perm(cells - 1, objects) // math.factorial(num_distractors)
    kinds = NUM_OBJECT_KINDS * (NUM_OBJECT_KINDS - 1) ** num_distractors
    return placements * kinds * math.comb(cells - 1 - objects, num_walls)


def mission_length(tokenizer, wordings: str) -> int:
    """Tokens per instruction: `MISSION_TOKENS`, or more when some wording (in any split) needs them,
    so every split of a config has the same observation shape."""
    return max(MISSION_TOKENS, tokenizer.needed_length(wording.all_instructions(wordings)))


def as_words(x: torch.Tensor) -> torch.Tensor:
    """View a contiguous tensor as (rows, words) of the widest integer type its rows allow.

    torch's indexed copies cost per element, so moving uint8 images as int64 words is ~8x
    cheaper than moving them as bytes.
    """
    row_bytes = x[0].numel() * x.element_size() if len(x) else 0
    word = next(d for d in (torch.int64, torch.int32, torch.int16, torch.uint8) if row_bytes % d.itemsize == 0)
    return x.reshape(len(x), -1).view(torch.uint8).view(word) if x.dtype != word else x.reshape(len(x), -1)


def build_tile_atlas(tile_size: int) -> torch.Tensor:
    """(AGENT + 1, tile_size, tile_size, 3) uint8 drawing of every cell code and the agent."""
    t = tile_size
    ys, xs = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    centre = (t - 1) / 2
    disc = (ys - centre) ** 2 + (xs - centre) ** 2 <= (t / 2 - 0.4) ** 2
    inner = (ys >= 1) & (ys < t - 1) & (xs >= 1) & (xs < t - 1) if t >= 4 else torch.ones(t, t, dtype=torch.bool)
    outline = inner & ~((ys >= 2) & (ys < t - 2) & (xs >= 2) & (xs < t - 2)) if t >= 5 else inner
    bar = (xs - centre).abs() <= max(t / 8, 0.5)
    key = inner & (bar | ((ys - centre).abs() <= max(t / 8, 0.5)) & (xs >= centre))
    triangle = (ys >= 1) & ((xs - centre).abs() <= (ys - 0.5) / 2 + 0.3) & (ys < t - 1)
    shapes = {"ball": disc, "key": key, "box": outline}
    atlas = torch.zeros(AGENT + 1, t, t, 3, dtype=torch.uint8)
    atlas[WALL] = 128
    for color in COLORS:
        rgb = torch.tensor(_COLOR_RGB[color], dtype=torch.uint8)
        for object_type in OBJECT_TYPES:
            atlas[object_code(color, object_type)][shapes[object_type]] = rgb
    atlas[AGENT][triangle] = 255
    return atlas


class GotoEnv:
    """A batch of `goto` levels stepped together as tensors.

    Tensors returned by `reset` and `step` are views of the env's own buffers, valid until the
    next call: copy them (the rollout storage does) if you keep them.
    """

    num_actions = len(ACTION_NAMES)
    action_spec = ActionSpace.discrete(len(ACTION_NAMES))  # what `step` accepts
    # The time limit is part of this task (the reward shrinks with time taken, BabyAI style), so
    # running out of time is an outcome, not a cut to bootstrap through.
    bootstrap_time_limit = False
    # Per-env tensors that, with the level pool and the generator, make up the whole state.
    LEVEL_FIELDS = ("cells", "agent", "target", "mission", "level_id", "image")
    # Per-step fields the collector keeps beside each transition: the level it was played on, and the
    # target's colour and object type (labels for an auxiliary naming loss, models/naming.py).
    step_fields = ("level_id", "target_color", "target_object")
    # The labels among them and their class counts.
    label_classes = {"target_color": len(COLORS), "target_object": len(OBJECT_TYPES)}

    def __init__(
        self,
        num_envs: int,
        grid_size: int = 5,
        num_distractors: int = 1,
        max_steps: int = 32,
        tile_size: int = 8,
        num_walls: int = 0,
        num_train_levels: int = 0,
        min_distractors: int | None = None,
        split: str = "train",
        device: str | torch.device = "cpu",
        seed: int = 0,
        pool_size: int = 0,
        wordings: str = "fixed",
        tokenizer=None,
    ):
        if 2 + num_distractors + num_walls > grid_size * grid_size:
            raise ValueError("grid too small for the agent, target, distractors and walls")
        if min_distractors is not None and min_distractors < 0:
            raise ValueError(f"min_distractors must be >= 0 or None, got {min_distractors}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.num_envs, self.grid_size, self.tile_size = num_envs, grid_size, tile_size
        self.num_distractors, self.num_walls, self.max_steps = num_distractors, num_walls, max_steps
        # None: every level has num_distractors; else each level's own count in min..num_distractors.
        self.min_distractors = min_distractors
        self.num_train_levels, self.split, self.level_split = num_train_levels, split, LEVEL_SPLIT[split]
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.next_level = 0  # validation and held-out splits play their ids in order
        self.tokenizer = tokenizer if tokenizer is not None else WordTokenizer()
        self.mission_tokens = mission_length(self.tokenizer, wordings)
        self.atlas = build_tile_atlas(tile_size).to(self.device)
        self.moves = _MOVES.to(self.device)
        # Instruction token ids of every (wording, object kind), looked up when a level is generated:
        # row ``variant * NUM_OBJECT_KINDS + kind``; a level's wording is a hash of its id.
        texts = wording.table(wordings, held_out=split == "new-wordings")
        self.wording_variants = len(texts)
        self.mission_table = self.tokenizer.encode_batch(
            [text for row in texts for text in row], self.mission_tokens).to(self.device)
        n, g = num_envs, grid_size
        self.env_index = torch.arange(n, device=self.device)
        self.cell_offset = self.env_index * g * g
        self.steps = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.episode_return = torch.zeros(n, dtype=torch.float32, device=self.device)
        for name, value in self.generate_levels(torch.zeros(n, dtype=torch.int64, device=self.device)).items():
            setattr(self, name, value)
        # Drawing works on machine words: one tile row (3 * tile_size bytes) is a few of them.
        word = next(d for d in (torch.int64, torch.int32, torch.int16, torch.uint8) if (3 * tile_size) % d.itemsize == 0)
        self.words_per_row = 3 * tile_size // word.itemsize
        self.atlas_words = self.atlas.view(AGENT + 1, tile_size, 3 * tile_size).view(word)
        self.image_words = self.image.view(-1, 3 * tile_size).view(word)
        self.tile_word_offsets = (
            torch.arange(tile_size, device=self.device)[:, None] * g * self.words_per_row
            + torch.arange(self.words_per_row, device=self.device)
        ).view(-1)
        self.empty_words = self.atlas_words[EMPTY].reshape(-1).repeat(n)
        self.agent_words = self.atlas_words[AGENT].reshape(-1).repeat(n)
        # Resets draw from a pool of levels generated (and drawn) in bulk: generating a few
        # levels per step would cost dozens of tiny tensor ops every step.
        self.pool_size = pool_size or max(256, n)
        self.pool: dict[str, torch.Tensor] = {}
        self.pool_cursor = self.pool_size
        # A level sampler (mmrl_cli/levels) chooses each training reset's level id instead of the
        # uniform pool: its levels are generated when chosen, so its choice is played at once.
        self.level_sampler = None
        self.level_control = None  # the sampler's and curriculum's state, saved by the collector

    @property
    def observation_spec(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape (without the batch dimension) and dtype of each observation entry."""
        side = self.grid_size * self.tile_size
        return {"image": ((side, side, 3), torch.uint8), "mission": ((self.mission_tokens,), torch.int64)}

    def observation(self) -> dict[str, torch.Tensor]:
        """The current observation of every sub-environment."""
        return {"image": self.image, "mission": self.mission}

    @property
    def target_color(self) -> torch.Tensor:
        """Each env's target colour (an index into `COLORS`): a label, never part of the observation."""
        return (self.target - OBJECT_BASE) % len(COLORS)

    @property
    def target_object(self) -> torch.Tensor:
        """Each env's target object type (an index into `OBJECT_TYPES`): a label, never observed."""
        return (self.target - OBJECT_BASE) // len(COLORS)

    # ----------------------------------------------------------------------------- levels
    def sample_level_ids(self, count: int) -> torch.Tensor:
        """Level ids for `count` new episodes of this env's split."""
        if self.level_split != "train":
            ids = SPLIT_ID_BASE[self.level_split] + self.next_level + torch.arange(count, device=self.device)
            self.next_level += count
            return ids
        high = self.num_train_levels if self.num_train_levels > 0 else SPLIT_ID_BASE["validation"]
        return torch.randint(0, high, (count,), generator=self.generator, device=self.device)

    def distractor_counts(self, level_ids: torch.Tensor) -> torch.Tensor:
        """(k,) how many distractors each level has: `num_distractors`, or (with `min_distractors` set) a
        count in min_distractors..num_distractors hashed from the level id alone, so that a level's
        difficulty is its own whatever the attempt or the split (a curriculum stage's lower
        `num_distractors` caps the range)."""
        high = self.num_distractors
        if self.min_distractors is None:
            return torch.full_like(level_ids, high)
        low = min(self.min_distractors, high)
        return low + _hash32(level_ids * 0x510E527F + 0x1F83D9AB) % (high - low + 1)

    def layouts(self, level_ids: torch.Tensor, attempts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidate layouts of (level id, attempt) pairs: flat cells (k, g*g), agent cell (k,), target kind (k,)."""
        g, n_obj, k = self.grid_size, 1 + self.num_distractors, len(level_ids)
        rand = level_random(level_ids, attempts, 1 + n_obj + g * g)
        # A random permutation of the cells: agent first, then the objects, then the walls.
        order = torch.argsort(rand[:, 1 + n_obj :], dim=1)
        target_kind = rand[:, 0] % NUM_OBJECT_KINDS
        other = rand[:, 1:n_obj] % (NUM_OBJECT_KINDS - 1)
        distractor_kind = other + (other >= target_kind[:, None]).long()
        kinds = torch.cat([target_kind[:, None], distractor_kind], dim=1)
        # Object slot j > 0 is distractor j: placed while j <= the level's distractor count.
        placed = torch.arange(n_obj, device=self.device)[None, :] <= self.distractor_counts(level_ids)[:, None]
        cells = torch.zeros(k, g * g, dtype=torch.int64, device=self.device)
        cells.scatter_(1, order[:, 1 : 1 + n_obj], torch.where(placed, OBJECT_BASE + kinds, EMPTY))
        if self.num_walls:
            cells.scatter_(1, order[:, 1 + n_obj : 1 + n_obj + self.num_walls], WALL)
        return cells, order[:, 0], target_kind

    def split_layouts(self, level_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layout of each level id: its first candidate whose content belongs to this env's split.

        Candidates are drawn several per id at a time (enough that nearly every id finds one in
        the first round: 2 for training's 80% of layouts, 24 for the 10% splits).
        """
        low, high = SPLIT_PERCENTILES[self.level_split]
        tries = 2 if high - low >= 50 else 24
        count = len(level_ids)
        cells = torch.zeros(count, self.grid_size**2, dtype=torch.int64, device=self.device)
        agent_cell = torch.zeros(count, dtype=torch.int64, device=self.device)
        target_kind = torch.zeros(count, dtype=torch.int64, device=self.device)
        pending = torch.arange(count, device=self.device)
        for first_attempt in range(0, 100_000, tries):
            ids = level_ids.index_select(0, pending).repeat_interleave(tries)
            attempts = torch.arange(first_attempt, first_attempt + tries, device=self.device).repeat(len(pending))
            c_cells, c_agent, c_target = self.layouts(ids, attempts)
            percentile = layout_percentile(c_cells, c_agent, OBJECT_BASE + c_target)
            fits = ((percentile >= low) & (percentile < high)).view(-1, tries)
            found = fits.any(1)
            pick = (torch.arange(len(pending), device=self.device) * tries + fits.int().argmax(1))[found]
            rows = pending[found]
            cells[rows], agent_cell[rows], target_kind[rows] = c_cells[pick], c_agent[pick], c_target[pick]
            pending = pending[~found]
            if not len(pending):
                return cells, agent_cell, target_kind
        raise RuntimeError(f"no {self.split} layout found for some level ids (too few distinct layouts?)")

    def generate_levels(self, level_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Lay out and draw the levels `level_ids`: a dict of `LEVEL_FIELDS` tensors."""
        g, k = self.grid_size, len(level_ids)
        flat_cells, agent_cell, target_kind = self.split_layouts(level_ids)
        cells = flat_cells.view(k, g, g)
        agent = torch.stack([agent_cell // g, agent_cell % g], dim=1)
        return {
            "cells": cells, "agent": agent, "target": OBJECT_BASE + target_kind,
            "mission": self.mission_table.index_select(0, self.mission_row(level_ids, target_kind)), "level_id": level_ids.clone(),
            "image": self.render(cells, agent),
        }

    def mission_row(self, level_ids: torch.Tensor, target_kind: torch.Tensor) -> torch.Tensor:
        """The `mission_table` row of each level: its target's kind in the wording its id hashes to
        (the only wording under ``wordings=fixed``)."""
        if self.wording_variants == 1:
            return target_kind
        variant = _hash32(level_ids * 0x2C1B3C6D + 0x297A2D39) % self.wording_variants
        return variant * NUM_OBJECT_KINDS + target_kind

    def render(self, cells: torch.Tensor, agent: torch.Tensor) -> torch.Tensor:
        """(k, side, side, 3) uint8 images of grids `cells` (k, g, g) with the agent at `agent`."""
        g, t, k = self.grid_size, self.tile_size, len(cells)
        codes = cells.reshape(k, g * g).clone()
        codes.scatter_(1, (agent[:, 0] * g + agent[:, 1])[:, None], AGENT)
        tiles = self.atlas.index_select(0, codes.view(-1)).view(k, g, g, t, t, 3)
        return tiles.permute(0, 1, 3, 2, 4, 5).reshape(k, g * t, g * t, 3)

    def load_levels(self, index: torch.Tensor, levels: dict[str, torch.Tensor]) -> None:
        """Start new episodes on `levels` in sub-environments `index`."""
        for name in self.LEVEL_FIELDS:
            as_words(getattr(self, name)).index_copy_(0, index, as_words(levels[name]))
        self.steps.index_fill_(0, index, 0)
        self.episode_return.index_fill_(0, index, 0.0)

    def reset_from_pool(self, index: torch.Tensor) -> None:
        """Start new episodes in sub-environments `index` on the next levels of the pool (or, with a
        level sampler on the training split, on the levels it picks now, generated on demand)."""
        count = len(index)
        if self.level_sampler is not None and self.level_split == "train":
            self.load_levels(index, self.generate_levels(self.level_sampler.sample(count).to(self.device)))
            return
        if self.pool_cursor + count > self.pool_size:
            self.pool = self.generate_levels(self.sample_level_ids(self.pool_size))
            self.pool_cursor = 0
        window = slice(self.pool_cursor, self.pool_cursor + count)
        self.load_levels(index, {name: value[window] for name, value in self.pool.items()})
        self.pool_cursor += count

    def set_stage(self, stage: dict) -> None:
        """Play the difficulty `stage` (a curriculum stage: `num_distractors`, `num_walls`, `max_steps`)
        from the next reset on; levels already drawn into the pool are dropped (same shapes, so a
        checkpoint's pool still fits)."""
        knobs = {name: int(stage.get(name, getattr(self, name))) for name in ("num_distractors", "num_walls", "max_steps")}
        if 2 + knobs["num_distractors"] + knobs["num_walls"] > self.grid_size**2:
            raise ValueError("grid too small for the agent, target, distractors and walls")
        if all(getattr(self, name) == value for name, value in knobs.items()):
            return
        for name, value in knobs.items():
            setattr(self, name, value)
        self.pool_cursor = self.pool_size

    def draw_tiles(self, positions: torch.Tensor, tile_words: torch.Tensor) -> None:
        """Draw one tile (its machine words `tile_words`, repeated per env) at `positions` (n, 2).

        Indexed copies in torch cost per element, so the image is handled as machine words
        rather than bytes, and the whole batch's drawing is one flat `scatter_`.
        """
        g, t = self.grid_size, self.tile_size
        first_word = ((self.env_index * g + positions[:, 0]) * t * g + positions[:, 1]) * self.words_per_row
        self.image_words.view(-1).scatter_(0, (first_word[:, None] + self.tile_word_offsets).view(-1), tile_words)

    def set_level(self, env: int, rows: list[str], target: tuple[str, str]) -> None:
        """Load a hand-written level into sub-environment `env` (for tests and demos).

        `rows` is a square map, one character a cell: ``.`` empty, ``#`` wall, ``A`` the agent;
        balls are colour initials in lowercase (``r g b p y e`` = red, green, blue, purple,
        yellow, grey), keys the same in uppercase, boxes the digits ``0``-``5`` by colour.
        """
        cells, agent = self.parse_level(rows)
        code = object_code(*target)
        level = {
            "cells": cells, "agent": agent, "target": torch.tensor([code], device=self.device),
            "mission": self.mission_table[code - OBJECT_BASE][None], "level_id": torch.tensor([-1], device=self.device),
            "image": self.render(cells, agent),
        }
        self.load_levels(torch.tensor([env], device=self.device), level)

    def parse_level(self, rows: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cells (1, g, g), agent (1, 2)) of a hand-written map (the characters of `set_level`)."""
        g = self.grid_size
        if len(rows) != g or any(len(r) != g for r in rows):
            raise ValueError(f"level must be {g} rows of {g} characters")
        initials = "rgbpye"
        cells = torch.zeros(g, g, dtype=torch.int64)
        agent = None
        for r, line in enumerate(rows):
            for c, ch in enumerate(line):
                if ch == "#":
                    cells[r, c] = WALL
                elif ch == "A":
                    agent = (r, c)
                elif ch in initials:
                    cells[r, c] = object_code(COLORS[initials.index(ch)], "ball")
                elif ch in initials.upper():
                    cells[r, c] = object_code(COLORS[initials.upper().index(ch)], "key")
                elif ch.isdigit() and int(ch) < len(COLORS):
                    cells[r, c] = object_code(COLORS[int(ch)], "box")
                elif ch != ".":
                    raise ValueError(f"unknown level character {ch!r}")
        if agent is None:
            raise ValueError("level has no agent 'A'")
        return cells[None].to(self.device), torch.tensor([agent], device=self.device)

    # ----------------------------------------------------------------------- gym-style API
    def reset(self, seed: int | None = None, level_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Start a new episode in every sub-environment; returns the observation.

        `seed` reseeds level sampling; `level_ids` plays exactly those levels instead.
        """
        if seed is not None:
            self.generator.manual_seed(seed)
            self.next_level = 0  # validation and held-out splits play their ids in order
            self.pool_cursor = self.pool_size
        if level_ids is None:
            self.reset_from_pool(self.env_index)
        else:
            self.load_levels(self.env_index, self.generate_levels(level_ids.to(self.device)))
        return self.observation()

    def step(self, actions: torch.Tensor):
        """Advance every sub-environment by one action.

        Returns ``(obs, reward, terminated, truncated, info)``. ``info`` describes the episodes
        that ended in this step: ``done_index`` (which sub-environments), ``episode_return``,
        ``episode_length``, ``success``, ``level_id`` and ``final_obs`` (their last observation,
        before the automatic reset).
        """
        old = self.agent
        new = (old + self.moves.index_select(0, actions)).clamp_(0, self.grid_size - 1)
        code = self.cells.view(-1).index_select(0, self.cell_offset + new[:, 0] * self.grid_size + new[:, 1])
        hit_object = code >= OBJECT_BASE
        success = hit_object & (code == self.target)
        moved = code == EMPTY
        self.agent = torch.where(moved[:, None], new, old)
        self.steps += 1
        terminated = hit_object
        truncated = (self.steps >= self.max_steps) & ~terminated
        reward = success.float() * (1.0 - 0.9 * self.steps.float() / self.max_steps)
        self.episode_return += reward
        return self.finish_step(old, reward, terminated, truncated, success)

    def finish_step(self, old: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor,
                    success: torch.Tensor, fields: tuple[str, ...] = ()):
        """The end of a step (this task's and the sequential one's): redraw the two cells that can
        change (the one the agent left, `old`, and the one it is on), report the episodes that
        ended (`info`, with the per-env attributes named in `fields` beside ``level_id``), keep
        their last observations and start their next levels."""
        self.draw_tiles(old, self.empty_words)
        self.draw_tiles(self.agent, self.agent_words)
        done_index = torch.nonzero(terminated | truncated).squeeze(1)
        info = {
            "done_index": done_index,
            "episode_return": self.episode_return.index_select(0, done_index),
            "episode_length": self.steps.index_select(0, done_index),
            "success": success.index_select(0, done_index),
        }
        info.update({name: getattr(self, name).index_select(0, done_index) for name in ("level_id", *fields)})
        if len(done_index):
            info["final_obs"] = {
                k: as_words(v).index_select(0, done_index).view(torch.uint8).view(v.dtype).view(-1, *v.shape[1:])
                for k, v in self.observation().items()
            }
            self.reset_from_pool(done_index)
        return self.observation(), reward, terminated, truncated, info

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor needed to continue exactly where the env is now."""
        state = {name: getattr(self, name) for name in self.LEVEL_FIELDS + ("steps", "episode_return")}
        state.update({f"pool.{name}": value for name, value in self.pool.items()})
        state["generator"] = self.generator.get_state()
        state["counters"] = torch.tensor([self.next_level, self.pool_cursor])
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a state produced by `state_dict`."""
        for name in self.LEVEL_FIELDS + ("steps", "episode_return"):
            getattr(self, name).copy_(state[name])
        self.pool = {name[5:]: value.to(self.device).clone() for name, value in state.items() if name.startswith("pool.")}
        load_generator_state(self.generator, state["generator"])  # reseeds if saved on another device type
        self.next_level, self.pool_cursor = (int(x) for x in state["counters"])
