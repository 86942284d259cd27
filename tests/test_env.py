"""The built-in goto env: dynamics on hand-built levels, rendering, levels, gymnasium API."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from mmrl_cli.envs import GotoEnv, GotoGymEnv, GotoVectorEnv
from mmrl_cli.envs.goto import AGENT, OBJECT_BASE, SPLIT_ID_BASE, describe, object_code
from mmrl_cli.text import WordTokenizer

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


def hand_built(rows, target=("red", "ball"), max_steps=32):
    env = GotoEnv(1, grid_size=len(rows), max_steps=max_steps)
    env.reset(seed=0)
    env.set_level(0, rows, target)
    return env


def step(env, action):
    return env.step(torch.tensor([action]))


def test_walls_and_edges_block_movement():
    env = hand_built(["A#...", ".....", ".....", ".....", "....r"])
    for action in (RIGHT, UP, LEFT):  # wall to the right, grid edge above and to the left
        _, reward, terminated, truncated, _ = step(env, action)
        assert env.agent[0].tolist() == [0, 0]
        assert reward.item() == 0 and not terminated.item() and not truncated.item()
    step(env, DOWN)
    assert env.agent[0].tolist() == [1, 0]


def test_reaching_the_target_succeeds_with_time_scaled_reward():
    env = hand_built(["A.r..", ".....", ".....", ".....", "....g"], max_steps=10)
    step(env, RIGHT)
    _, reward, terminated, truncated, info = step(env, RIGHT)
    assert terminated.item() and not truncated.item()
    assert reward.item() == pytest.approx(1 - 0.9 * 2 / 10)
    assert info["success"].tolist() == [True]
    assert info["episode_length"].tolist() == [2]
    assert info["episode_return"].item() == pytest.approx(0.82)


def test_wrong_object_ends_the_episode_without_reward():
    env = hand_built(["Ag...", ".....", ".....", ".....", "....r"])
    _, reward, terminated, _, info = step(env, RIGHT)
    assert terminated.item() and reward.item() == 0
    assert info["success"].tolist() == [False]


def test_keys_and_boxes_are_distinct_objects():
    env = hand_built(["AR0..", ".....", ".....", ".....", "....r"], target=("red", "box"))
    _, _, terminated, _, info = step(env, RIGHT)  # red key is not the red box
    assert terminated.item() and info["success"].tolist() == [False]


def test_time_out_truncates_and_auto_resets():
    env = hand_built(["A....", ".....", ".....", ".....", "....r"], max_steps=3)
    for _ in range(2):
        _, _, terminated, truncated, _ = step(env, UP)
        assert not truncated.item()
    obs, reward, terminated, truncated, info = step(env, UP)
    assert truncated.item() and not terminated.item() and reward.item() == 0
    # The final observation shows the old level; the returned one is a fresh level.
    final = info["final_obs"]["image"][0]
    assert torch.equal(final, env.render(torch.tensor([[[0] * 5] * 5]) * 0 + torch.tensor(
        [[[0, 0, 0, 0, 0]] * 4 + [[0, 0, 0, 0, object_code("red", "ball")]]]), torch.tensor([[0, 0]]))[0])
    assert env.steps[0].item() == 0 and env.level_id[0].item() >= 0
    assert obs["image"].shape == (1, 40, 40, 3)


def test_incremental_rendering_matches_a_full_redraw():
    env = GotoEnv(64, grid_size=6, num_distractors=3, num_walls=3, seed=3)
    env.reset(seed=3)
    for _ in range(100):
        env.step(torch.randint(0, 4, (64,)))
    assert torch.equal(env.image, env.render(env.cells, env.agent))


def test_levels_are_deterministic_and_consistent():
    env = GotoEnv(8, num_distractors=2)
    ids = torch.arange(8) + 123
    first = {k: v.clone() for k, v in env.reset(level_ids=ids).items()}
    again = GotoEnv(8, num_distractors=2).reset(level_ids=ids)
    assert all(torch.equal(first[k], again[k]) for k in first)
    tokenizer = WordTokenizer()
    for i in range(8):
        cells = env.cells[i]
        objects = cells[cells >= OBJECT_BASE]
        assert len(objects) == 3 and (objects == env.target[i]).sum() == 1  # one unique target
        assert tokenizer.decode(env.mission[i]) == "go to the " + " ".join(describe(int(env.target[i])))
        assert (env.render(env.cells[i : i + 1], env.agent[i : i + 1]) == env.atlas[AGENT][0, 0]).any()


def layouts_of(env: GotoEnv, level_ids: torch.Tensor) -> set[bytes]:
    """The content of each level (every cell, the agent's cell, the target) as bytes."""
    levels = env.generate_levels(level_ids)
    agent_cell = levels["agent"][:, 0] * env.grid_size + levels["agent"][:, 1]
    rows = torch.cat([levels["cells"].flatten(1), agent_cell[:, None], levels["target"][:, None]], 1)
    return {row.numpy().tobytes() for row in rows}


def test_training_validation_and_heldout_levels_never_share_a_layout():
    """Disjoint by content, not only by id: 100k training draws share no layout with 500 + 500 evaluation levels.

    (With ids alone separating them, 13 of 500 held-out layouts also occurred among 100k training draws.)
    """
    train, validation, heldout = (GotoEnv(1, split=split) for split in ("train", "validation", "heldout"))
    train_layouts = layouts_of(train, torch.randint(0, SPLIT_ID_BASE["validation"], (100_000,),
                                                    generator=torch.Generator().manual_seed(0)))
    validation_layouts = layouts_of(validation, SPLIT_ID_BASE["validation"] + torch.arange(500))
    heldout_layouts = layouts_of(heldout, SPLIT_ID_BASE["heldout"] + torch.arange(500))
    assert len(train_layouts) > 95_000 and len(validation_layouts) > 490 and len(heldout_layouts) > 490
    assert not train_layouts & validation_layouts
    assert not train_layouts & heldout_layouts
    assert not validation_layouts & heldout_layouts


def test_each_split_plays_its_own_ids():
    train = GotoEnv(256, num_train_levels=50)
    train.reset(seed=0)
    assert int(train.level_id.max()) < 50
    for split in ("validation", "heldout"):
        env = GotoEnv(256, split=split)
        env.reset(seed=0)
        assert env.level_id.tolist() == list(range(SPLIT_ID_BASE[split], SPLIT_ID_BASE[split] + 256))
    with pytest.raises(ValueError, match="split must be one of"):
        GotoEnv(1, split="test")


def test_the_number_of_distinct_levels_is_counted_and_too_few_are_refused():
    from mmrl_cli.config import ConfigError, GotoDataConfig
    from mmrl_cli.envs.goto import count_layouts

    assert count_layouts(2, 0, 0) == 4 * 3 * 18  # agent cell, target cell, target kind
    assert count_layouts(3, 1, 1) == 9 * 8 * 7 * 18 * 17 * 6
    with pytest.raises(ConfigError, match="only 216 distinct levels"):
        GotoDataConfig(grid_size=2, num_distractors=0).check()


def test_levels_of_mixed_difficulty_have_their_own_distractor_count():
    """min_distractors: each level's count is in the range, fixed by its id (whatever the split or the env),
    every count occurs, and a curriculum stage's lower num_distractors caps it."""
    from mmrl_cli.config import ConfigError, GotoDataConfig
    from mmrl_cli.envs.goto_seq import GotoSeqEnv

    def distractors(cells: torch.Tensor, targets: int = 1) -> list[int]:
        return ((cells >= OBJECT_BASE).sum((1, 2)) - targets).tolist()

    ids = torch.arange(400)
    env = GotoEnv(4, num_distractors=4, min_distractors=1)
    counts = distractors(env.generate_levels(ids)["cells"])
    assert set(counts) == {1, 2, 3, 4} and counts == env.distractor_counts(ids).tolist()
    assert counts == distractors(GotoEnv(1, num_distractors=4, min_distractors=1).generate_levels(ids)["cells"])
    heldout = SPLIT_ID_BASE["heldout"] + ids
    assert set(distractors(GotoEnv(4, split="heldout", num_distractors=4, min_distractors=1).generate_levels(heldout)["cells"])) == {1, 2, 3, 4}
    assert set(distractors(GotoEnv(4, num_distractors=4).generate_levels(ids)["cells"])) == {4}  # unset: all alike
    env.set_stage({"num_distractors": 2})
    assert set(distractors(env.generate_levels(ids)["cells"])) == {1, 2}
    seq = GotoSeqEnv(4, sequence_steps=(2,), num_distractors=3, min_distractors=0)
    assert set(distractors(seq.generate_levels(ids)["cells"], targets=2)) == {0, 1, 2, 3}
    with pytest.raises(ConfigError, match=r"data.min_distractors: expected an integer in \[0, 2\], got 3"):
        GotoDataConfig(num_distractors=2, min_distractors=3).check()
    with pytest.raises(ConfigError, match="data.min_distractors: a 2x2 grid with 0 distractors"):
        GotoDataConfig(grid_size=2, num_distractors=1, min_distractors=0).check()


def test_state_dict_round_trip_continues_identically():
    env = GotoEnv(16, seed=1)
    env.reset(seed=1)
    actions = torch.randint(0, 4, (40, 16))
    for a in actions[:20]:
        env.step(a)
    state = {k: v.clone() for k, v in env.state_dict().items()}
    copy = GotoEnv(16, seed=99)
    copy.load_state_dict(state)
    for a in actions[20:]:
        out1, out2 = env.step(a), copy.step(a)
        assert torch.equal(out1[0]["image"], out2[0]["image"]) and torch.equal(out1[1], out2[1])


def test_gymnasium_check_env_passes():
    check_env(GotoGymEnv(), skip_render_check=True)
    env = gym.make("mmrl/GoTo-v0")
    obs, _ = env.reset(seed=5)
    assert obs["image"].dtype == np.uint8 and obs["mission"].shape == (8,)


def test_gymnasium_vector_env_same_step_autoreset():
    env = GotoVectorEnv(4, max_steps=2)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (4, 40, 40, 3)
    env.step(np.zeros(4, dtype=np.int64))
    obs, reward, terminated, truncated, info = env.step(np.zeros(4, dtype=np.int64))
    assert (terminated | truncated).all()
    assert info["_final_obs"].all() and info["final_obs"][0]["image"].shape == (40, 40, 3)
    vec = gym.make_vec("mmrl/GoTo-v0", num_envs=3, vectorization_mode="vector_entry_point")
    assert vec.reset(seed=1)[0]["mission"].shape == (3, 8)
