"""Expert demonstrations: the goto planner, the BabyAI bot, the resumable dataset and its reader."""

import json
import subprocess
import sys
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmrl_cli.config import ConfigError, GotoDataConfig, GymDataConfig
from mmrl_cli.demos.dataset import DemoDataset, DemoError, DemoWriter, check_compatible, read_manifest
from mmrl_cli.demos.planner import GotoExpert, expert_actions, distance_to_target, plan
from mmrl_cli.demos.settings import DemosConfig
from mmrl_cli.envs import GotoEnv
from mmrl_cli.envs.goto import EMPTY, OBJECT_BASE, _MOVES

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- planner
def bfs_length(cells: np.ndarray, agent: tuple[int, int], target: int) -> int | None:
    """Moves from `agent` into the target cell over empty cells (plain BFS); None without a path."""
    g = len(cells)
    seen, queue = {agent}, deque([(agent, 0)])
    while queue:
        (r, c), d = queue.popleft()
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            nr, nc = r + dr, c + dc
            if not (0 <= nr < g and 0 <= nc < g) or (nr, nc) in seen:
                continue
            if cells[nr, nc] == target:
                return d + 1
            if cells[nr, nc] == EMPTY:
                seen.add((nr, nc))
                queue.append(((nr, nc), d + 1))
    return None


def play_planner(env: GotoEnv) -> tuple[list[int], list[bool], list[bool]]:
    """Play one episode per sub-env with the planner; lengths, success and whether it timed out."""
    n = env.num_envs
    lengths, success, timed_out = [None] * n, [None] * n, [None] * n
    for _ in range(env.max_steps):
        _, _, terminated, truncated, info = env.step(plan(env))
        for i, k in enumerate(info["done_index"].tolist()):
            if lengths[k] is None:
                lengths[k], success[k] = int(info["episode_length"][i]), bool(info["success"][i])
                timed_out[k] = bool(truncated[k])
        if all(x is not None for x in lengths):
            break
    return lengths, success, timed_out


HAND_BUILT = [  # (rows, target): walls force detours; a distractor sits on the straight line
    (["A....", "###.#", "r....", ".####", "....."], ("red", "ball")),
    (["A.g.r", ".....", ".....", ".....", "....."], ("red", "ball")),       # the green ball blocks the short way
    (["A#...", ".#.#.", ".#.#.", ".#.#.", "...#r"], ("red", "ball")),       # a snake: 16 moves
    (["....b", ".###.", ".#A#.", ".#.#.", "....."], ("blue", "ball")),      # out of a pocket
    (["AR...", ".....", "..r..", ".....", "....."], ("red", "ball")),       # the red key is not the red ball
]


def test_planner_paths_are_shortest_on_hand_built_levels():
    env = GotoEnv(len(HAND_BUILT), grid_size=5, max_steps=32)
    env.reset(seed=0)
    for i, (rows, target) in enumerate(HAND_BUILT):
        env.set_level(i, rows, target)
    cells, agent, targets = env.cells.numpy().copy(), env.agent.tolist(), env.target.tolist()
    expected = [bfs_length(cells[i], tuple(agent[i]), targets[i]) for i in range(len(HAND_BUILT))]
    lengths, success, _ = play_planner(env)
    assert expected == [8, 6, 16, 8, 4]
    assert lengths == expected and all(success)


def test_planner_never_steps_into_an_object_when_the_target_is_walled_off():
    env = GotoEnv(3, grid_size=5, max_steps=10)
    env.reset(seed=0)
    env.set_level(0, ["A.g..", ".....", "#####", ".....", "....r"], ("red", "ball"))
    env.set_level(1, [".#...", "#Ag..", ".#...", "###..", "r#..."], ("red", "ball"))  # walls and a distractor around
    env.set_level(2, [".g...", "gAg..", ".g...", "###..", "r#..."], ("red", "ball"))  # boxed in by distractors alone
    lengths, success, timed_out = play_planner(env)
    assert lengths == [10, 10, 1] and success == [False] * 3 and timed_out == [True, True, False]


def test_planner_is_optimal_on_random_walled_levels():
    data = GotoDataConfig(grid_size=6, num_distractors=3, num_walls=8, max_steps=40)
    expert = GotoExpert(data, "train", seed=3)
    block = expert.record(0, 400)
    env = expert.env(1)
    levels = env.generate_levels(block["levels"])
    solved = 0
    for k in range(400):
        agent = tuple(levels["agent"][k].tolist())
        length = bfs_length(levels["cells"][k].numpy(), agent, int(levels["target"][k]))
        if length is None:
            assert not block["success"][k] and block["lengths"][k] == data.max_steps
        else:
            solved += 1
            assert block["success"][k] and int(block["lengths"][k]) == length
    assert 300 < solved < 400  # both kinds of level occur


def test_planner_moves_as_the_env_does():
    cells = torch.zeros(1, 3, 3, dtype=torch.int64)
    target = torch.tensor([OBJECT_BASE])
    for action, (dr, dc) in enumerate(_MOVES.tolist()):
        cells.zero_()
        cells[0, 1 + dr, 1 + dc] = OBJECT_BASE
        distance = distance_to_target(cells, target)
        assert expert_actions(distance, cells, torch.tensor([[1, 1]])).item() == action


# ------------------------------------------------------------------------ BabyAI bot
def test_babyai_bot_demos_replay_to_success_and_match_the_adapter():
    pytest.importorskip("minigrid")
    import gymnasium as gym

    from mmrl_cli.demos.babyai import BabyAIExpert, quiet
    from mmrl_cli.envs import GymVectorEnv

    data = GymDataConfig(env_id="BabyAI-GoToRedBallGrey-v0")
    expert = BabyAIExpert(data, "train", seed=5)
    block = expert.record(0, 4)
    assert block["success"].all() and block["levels"].tolist() == [5, 6, 7, 8]
    assert set(k for k in block if k.startswith("obs.")) == {"obs.grid", "obs.mission", "obs.vector"}
    env = gym.make(data.env_id)
    starts = torch.cumsum(block["lengths"], 0) - block["lengths"]
    for k in range(4):
        steps = range(int(starts[k]), int(starts[k] + block["lengths"][k]))
        with quiet():
            env.reset(seed=int(block["levels"][k]))
            for t in steps:
                _, reward, terminated, truncated, _ = env.step(int(block["actions"][t]) + env.action_space.start)
        assert terminated and reward > 0 and not truncated
    # The first observation is exactly what mmrl's gymnasium env feeds a policy after a reset.
    with quiet():
        vec = GymVectorEnv(data.env_id, 1, "cpu", seed=5, mission_tokens=data.mission_tokens)
        first = vec.reset()
    vec.close()
    assert first.keys() == {"grid", "mission", "vector"}
    for key, value in first.items():
        assert torch.equal(block[f"obs.{key}"][0], value[0])


# ------------------------------------------------------------------ writer and reader
def goto_demos(tmp_path: Path, episodes: int = 50, shard_episodes: int = 10, name: str = "goto") -> DemosConfig:
    """A small goto demos config writing under `tmp_path`."""
    typed = DemosConfig(data=GotoDataConfig(), episodes=episodes, shard_episodes=shard_episodes,
                        runs_root=str(tmp_path), out=str(tmp_path / "demos" / name), progress=False)
    typed.check()
    return typed


def write(typed: DemosConfig, stop_after: int | None = None, monkeypatch=None) -> dict:
    """Run `mmrl demos`'s writer; with `stop_after`, die (as kill -9 would) after that many shards."""
    from mmrl_cli.demos.command import run_demos

    if stop_after is not None:
        original, calls = DemoWriter.write, []

        def dying(self, index, block):
            if len(calls) == stop_after:
                raise KeyboardInterrupt
            calls.append(index)
            return original(self, index, block)

        monkeypatch.setattr(DemoWriter, "write", dying)
        with pytest.raises(KeyboardInterrupt):
            run_demos(typed)
        monkeypatch.setattr(DemoWriter, "write", original)
        return {}
    return run_demos(typed)


def files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_an_interrupted_dataset_resumes_to_the_uninterrupted_one(tmp_path, monkeypatch):
    whole = goto_demos(tmp_path, name="whole")
    write(whole)
    broken = goto_demos(tmp_path, name="broken")
    write(broken, stop_after=3, monkeypatch=monkeypatch)
    out = Path(broken.out)
    assert [s["file"] for s in read_manifest(out)["shards"]] == [f"shard-0000{i}.safetensors" for i in range(3)]
    (out / ".shard-00003.safetensors.tmp").write_bytes(b"half a shard")  # killed mid-write
    (out / "shard-00003.safetensors").write_bytes(b"renamed, never listed")  # killed before the manifest
    summary = write(broken)
    assert summary["resumed_episodes"] == 30 and summary["new_episodes"] == 20
    assert files(out) == files(Path(whole.out))
    data = DemoDataset(out)
    assert torch.equal(torch.unique(data.episode_ids), torch.arange(50))  # none lost, none twice
    assert torch.equal(data.levels, torch.arange(1, 51))


def test_a_damaged_shard_is_regenerated_on_resume(tmp_path):
    whole = goto_demos(tmp_path, name="whole")
    write(whole)
    damaged = goto_demos(tmp_path, name="damaged")
    write(damaged)
    shard = Path(damaged.out) / "shard-00004.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    summary = write(damaged)
    assert summary["resumed_episodes"] == 40 and summary["new_episodes"] == 10
    assert files(Path(damaged.out)) == files(Path(whole.out))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """A complete 50-episode goto dataset, never modified (tests copy it first)."""
    root = tmp_path_factory.mktemp("demos")
    typed = goto_demos(root)
    write(typed)
    return Path(typed.out)


def copy_of(dataset_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(dataset_dir, tmp_path / "copy"))


def test_reader_loads_everything_consistently(dataset_dir):
    data = DemoDataset(dataset_dir)
    assert data.num_episodes == 50 and len(data) == int(data.lengths.sum())
    assert data.obs["image"].shape == (len(data), 40, 40, 3) and data.obs["mission"].dtype == torch.int64
    assert int(data.dones.sum()) == 50 and data.success_rate == 1.0
    ends = torch.cumsum(data.lengths, 0) - 1
    assert torch.equal(torch.nonzero(data.dones).squeeze(1), ends)
    assert torch.equal(data.returns, torch.zeros(50).index_add_(0, data.episode_ids, data.rewards))


def test_fraction_keeps_the_first_episodes(dataset_dir):
    whole, part = DemoDataset(dataset_dir), DemoDataset(dataset_dir, fraction=0.3)
    assert part.num_episodes == 15 and torch.equal(part.episode_ids.unique(), torch.arange(15))
    assert torch.equal(part.obs["image"], whole.obs["image"][: len(part)])
    assert DemoDataset(dataset_dir, fraction=0.001).num_episodes == 1
    with pytest.raises(DemoError, match="fraction"):
        DemoDataset(dataset_dir, fraction=0)


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated"),
    ("flip", "SHA-256"),
    ("delete", "missing"),
    ("manifest_env", "header does not match"),
    ("manifest_totals", "do not add up"),
    ("manifest_hash", "SHA-256"),
    ("incomplete", "incomplete"),
])
def test_reader_refuses_damaged_data(dataset_dir, tmp_path, damage, message):
    path = copy_of(dataset_dir, tmp_path)
    shard, manifest_file = path / "shard-00002.safetensors", path / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "flip":
        raw = bytearray(shard.read_bytes())
        raw[-10] ^= 1
        shard.write_bytes(bytes(raw))
    elif damage == "delete":
        shard.unlink()
    elif damage == "manifest_env":
        manifest["env"]["grid_size"] = 6
    elif damage == "manifest_totals":
        manifest["totals"]["successes"] += 1
    elif damage == "manifest_hash":
        manifest["shards"][2]["sha256"] = "0" * 64
    elif damage == "incomplete":
        manifest["shards"].pop()
        manifest["complete"] = False
    if damage.startswith(("manifest", "incomplete")):
        manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(DemoError, match=message) as error:
        DemoDataset(path)
    assert "\n" not in str(error.value)


def test_check_compatible_refuses_another_env_or_spec(dataset_dir):
    manifest = read_manifest(dataset_dir)
    spec = GotoEnv(1).observation_spec
    check_compatible(manifest, GotoDataConfig(), spec, 4)
    with pytest.raises(DemoError, match="data.grid_size is 6 here but 5 in the demos"):
        check_compatible(manifest, GotoDataConfig(grid_size=6), GotoEnv(1, grid_size=6).observation_spec, 4)
    with pytest.raises(DemoError, match="data is gym here but goto"):
        check_compatible(manifest, GymDataConfig(), spec, 4)
    with pytest.raises(DemoError, match="observation 'mission' is \\(16,\\) int64 here"):
        check_compatible(manifest, GotoDataConfig(), {**spec, "mission": ((16,), torch.int64)}, 4)
    with pytest.raises(DemoError, match="7 actions"):
        check_compatible(manifest, GotoDataConfig(), spec, 7)
    check_compatible(manifest, GotoDataConfig(), spec, SimpleNamespace(is_discrete=True, n=4))  # an ActionSpace
    with pytest.raises(DemoError, match="continuous"):
        check_compatible(manifest, GotoDataConfig(), spec, SimpleNamespace(is_discrete=False, n=0))
    older = {**manifest, "env": {k: v for k, v in manifest["env"].items() if k != "num_walls"}}
    check_compatible(older, GotoDataConfig(), spec, 4)  # a key the schema gained later counts at its default


def test_minibatches_resume_exactly(dataset_dir):
    data = DemoDataset(dataset_dir, seed=3)
    for _ in range(5):  # into the second epoch
        data.next_batch(32)
    state = data.state_dict()
    expected = [data.next_batch(32)["actions"] for _ in range(6)]
    again = DemoDataset(dataset_dir, seed=3)
    again.load_state_dict(state)
    assert all(torch.equal(a, again.next_batch(32)["actions"]) for a in expected)
    epoch = list(DemoDataset(dataset_dir, seed=3).epoch(32))
    assert len(epoch) == len(data) // 32 and len(torch.cat([b["episode_ids"] for b in epoch]).unique()) > 40


# ------------------------------------------------------------------------- command
def compose_demos(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3", job_name="demos"):
        return compose(config_name="demos", overrides=overrides)


@pytest.mark.parametrize("overrides, message", [
    (["data=cartpole"], "data: no expert for data=cartpole"),
    (["episodes=0"], "episodes: expected"),
    (["shard_episodes=0"], "shard_episodes: expected"),
    (["split=test"], "split: expected one of"),
    (["out=/elsewhere/demos"], "out: expected a directory inside runs_root"),
    (["out=runs/demos/a b"], "out: directory names"),
    (["data=gym", "data.env_id=BabyAI-GoToRedBallGrey-v0", "seed=999990", "episodes=20"], "seed: episode k plays"),
])
def test_check_demos_names_the_key_and_creates_nothing(tmp_path, monkeypatch, overrides, message):
    from mmrl_cli.demos.command import check_demos

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message) as error:
        check_demos(compose_demos(overrides), overrides)
    assert "\n" not in str(error.value) and not (tmp_path / "runs").exists()


def test_check_demos_refuses_to_mix_configs_in_one_directory(dataset_dir, tmp_path, monkeypatch):
    from mmrl_cli.demos.command import check_demos

    monkeypatch.chdir(tmp_path)
    path = copy_of(dataset_dir, tmp_path)
    overrides = [f"runs_root={tmp_path}", f"out={path}", "episodes=50", "shard_episodes=10"]
    check_demos(compose_demos(overrides), overrides)  # the same dataset: fine (resumes or does nothing)
    with pytest.raises(ConfigError, match="out: .* another config \\(data.num_distractors is 2 here but 1"):
        check_demos(compose_demos(overrides + ["data.num_distractors=2"]), overrides)


def test_mmrl_demos_command_line(tmp_path):
    script = "import sys; from mmrl_cli import cli; cli.main(sys.argv[1:])"
    run = subprocess.run([sys.executable, "-c", script, "demos", "episodes=30", "shard_episodes=10"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "expert success rate" in run.stdout and "runs/demos/goto-30" in run.stdout
    assert DemoDataset(tmp_path / "runs" / "demos" / "goto-30").num_episodes == 30
    bad = subprocess.run([sys.executable, "-c", script, "demos", "data=cartpole"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == ("mmrl demos: error: data: no expert for data=cartpole (experts: "
                                                          "the shortest-path planner of data=goto, the BabyAI bot of "
                                                          "data=gym with a BabyAI level id)")
