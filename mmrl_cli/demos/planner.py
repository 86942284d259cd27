"""The shortest-path expert of the built-in `goto` task, batched over every sub-environment.

A `goto` level does not change during an episode: only the agent moves. So the expert computes
one distance map per level, the number of moves from each cell to the named target, by a
breadth-first search written as tensor ops over the whole batch at once (a distance transform:
start at 0 on the target, and relax every free cell to one more than its nearest neighbour until
nothing changes, at most one round per cell of the longest path). The optimal action is then a
lookup: the move into the neighbour nearest to the target.

Free cells are the empty ones. Walls and the grid edge block a move; any object other than the
target ends the episode in failure, so the expert never steps into one. Where no path exists
(walls may cut the target off), the expert makes a move that keeps the episode going (into an
empty cell, a wall or the edge), so the episode ends at the time limit, recorded as a failure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..envs.goto import _MOVES, EMPTY, SPLIT_ID_BASE, WALL, GotoEnv

# Distance of a cell from which the target cannot be reached (larger than any path).
UNREACHABLE = 1 << 30
EXPERT_NAME = "goto-shortest-path"


def distance_to_target(cells: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(n, g, g) int64 moves from each cell to the target cell (0 on the target itself).

    `cells` (n, g, g) cell codes, `target` (n,) the target's code. Only empty cells are passed
    through; every other cell, and any cell with no path, is `UNREACHABLE`.
    """
    n, g, _ = cells.shape
    passable = cells == EMPTY
    unreachable = torch.full_like(cells, UNREACHABLE)
    distance = torch.where(cells == target.view(n, 1, 1), torch.zeros_like(cells), unreachable)
    # Each round extends every shortest path by one cell; the longest path visits each cell once.
    for _ in range(g * g):
        padded = F.pad(distance, (1, 1, 1, 1), value=UNREACHABLE)
        nearest = torch.minimum(
            torch.minimum(padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]),
            torch.minimum(padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]),
        )
        relaxed = torch.where(passable, torch.minimum(distance, nearest + 1), distance)
        if torch.equal(relaxed, distance):
            break
        distance = relaxed
    return distance


def expert_actions(distance: torch.Tensor, cells: torch.Tensor, agent: torch.Tensor) -> torch.Tensor:
    """(n,) int64 optimal action of every sub-environment, from its distance map.

    The move into the neighbour nearest to the target (ties: the first of up, down, left,
    right); a move off the grid stays put and counts as unreachable. Where the target cannot
    be reached, the first move that does not end the episode (into an empty cell, a wall or the
    edge), else up.
    """
    n, g, _ = cells.shape
    moves = _MOVES.to(cells.device)  # the env's own (4, 2) table: up, down, left, right
    new = (agent[:, None, :] + moves[None]).clamp_(0, g - 1)  # (n, 4, 2)
    flat = (new[..., 0] * g + new[..., 1]) + torch.arange(n, device=cells.device)[:, None] * g * g
    stays = (new == agent[:, None, :]).all(-1)
    value = distance.reshape(-1)[flat].masked_fill(stays, UNREACHABLE)
    best, action = value.min(1)
    code = cells.reshape(-1)[flat]
    safe = stays | (code == EMPTY) | (code == WALL)
    fallback = safe.int().argmax(1)  # first safe move; up if none is
    return torch.where(best < UNREACHABLE, action, fallback)


def plan(env: GotoEnv) -> torch.Tensor:
    """(n,) optimal action of every sub-environment of `env`, read from its current state."""
    return expert_actions(distance_to_target(env.cells, env.target), env.cells, env.agent)


def goto_level_ids(data_cfg, split: str, seed: int, first: int, count: int) -> torch.Tensor:
    """Level ids of episodes ``first .. first + count - 1``: episode k plays level `seed + k` of
    `split` (training ids wrap around within the training range, or `data.num_train_levels`)."""
    k = torch.arange(first, first + count, dtype=torch.int64)
    if split == "train":
        high = data_cfg.num_train_levels if data_cfg.num_train_levels > 0 else SPLIT_ID_BASE["validation"]
        return (seed + k) % high
    return SPLIT_ID_BASE[split] + seed + k


class GotoExpert:
    """Records episodes of the shortest-path expert on `goto` levels, through the env itself.

    Each batch of episodes is played by a `GotoEnv` holding one episode per sub-environment, so
    observations, rewards and ends are exactly the env's; a sub-environment whose episode has
    ended keeps stepping (its next episode is ignored) until the whole batch is done.
    """

    name = EXPERT_NAME
    num_actions = GotoEnv.num_actions

    def __init__(self, data_cfg, split: str = "train", seed: int = 1, device: str | torch.device = "cpu",
                 batch_episodes: int = 2048):
        self.data_cfg, self.split, self.seed = data_cfg, split, seed
        self.device, self.batch_episodes = torch.device(device), batch_episodes
        self.envs: dict[int, GotoEnv] = {}
        self.observation_spec = self.env(1).observation_spec
        self.description = {"name": EXPERT_NAME}

    def env(self, num_envs: int) -> GotoEnv:
        """A `goto` env of `num_envs` sub-environments with this expert's level settings (cached)."""
        if num_envs not in self.envs:
            d = self.data_cfg
            self.envs[num_envs] = GotoEnv(
                num_envs, grid_size=d.grid_size, num_distractors=d.num_distractors, max_steps=d.max_steps,
                tile_size=d.tile_size, num_walls=d.num_walls, num_train_levels=d.num_train_levels,
                min_distractors=d.min_distractors,
                split=self.split, device=self.device, seed=self.seed,
            )
        return self.envs[num_envs]

    def levels(self) -> dict:
        """Which levels the episodes play, as recorded in the dataset's manifest."""
        high = self.data_cfg.num_train_levels or SPLIT_ID_BASE["validation"]
        rule = f"(seed + k) mod {high}" if self.split == "train" else f"{SPLIT_ID_BASE[self.split]} + seed + k"
        return {"split": self.split, "seed": self.seed, "kind": "goto level id", "rule": f"episode k plays level id {rule}"}

    def record(self, first: int, count: int, progress=None) -> dict[str, torch.Tensor]:
        """Episodes ``first .. first + count - 1`` as one block of tensors (see `dataset.BLOCK_KEYS`);
        `progress(episodes, successes)` is called after each batch."""
        from .dataset import concat_blocks

        blocks = []
        for start in range(first, first + count, self.batch_episodes):
            size = min(self.batch_episodes, first + count - start)
            block = self.record_batch(start, goto_level_ids(self.data_cfg, self.split, self.seed, start, size))
            blocks.append(block)
            if progress is not None:
                progress(size, int(block["success"].sum()))
        return concat_blocks(blocks)

    @torch.inference_mode()
    def record_batch(self, first: int, level_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Play one episode on each of `level_ids` at once; episode ids start at `first`."""
        count = len(level_ids)
        env = self.env(count)
        obs = env.reset(level_ids=level_ids.to(self.device))
        distance = distance_to_target(env.cells, env.target)  # levels are static: one map per episode
        active = torch.ones(count, dtype=torch.bool, device=self.device)
        returns = torch.zeros(count, dtype=torch.float32, device=self.device)
        lengths = torch.zeros(count, dtype=torch.int64, device=self.device)
        success = torch.zeros(count, dtype=torch.bool, device=self.device)
        steps: list[dict[str, torch.Tensor]] = []
        while bool(active.any()):
            index = torch.nonzero(active).squeeze(1)
            actions = expert_actions(distance, env.cells, env.agent)
            row = {f"obs.{k}": v.index_select(0, index) for k, v in obs.items()}  # copies: obs are env buffers
            obs, reward, terminated, truncated, info = env.step(actions)
            row.update(env_index=index, actions=actions.index_select(0, index), rewards=reward.index_select(0, index),
                       dones=(terminated | truncated).index_select(0, index), truncated=truncated.index_select(0, index))
            steps.append(row)
            ended = info["done_index"]
            mine = active.index_select(0, ended)  # sub-environments already past their episode are ignored
            ended = ended[mine]
            returns[ended] = info["episode_return"][mine]
            lengths[ended] = info["episode_length"][mine]
            success[ended] = info["success"][mine]
            active[ended] = False
        transitions = {k: torch.cat([s[k] for s in steps]) for k in steps[0]}
        # Steps were appended in time order: a stable sort by episode makes the data episode-major.
        order = torch.sort(transitions.pop("env_index"), stable=True)
        block = {k: v.index_select(0, order.indices).cpu() for k, v in transitions.items()}
        block["episode_ids"] = order.values.cpu() + first
        block.update(returns=returns.cpu(), lengths=lengths.cpu(), success=success.cpu(), levels=level_ids.cpu())
        return block

    def close(self) -> None:
        """Release the cached envs."""
        self.envs.clear()
