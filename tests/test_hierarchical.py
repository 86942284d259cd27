"""The sequential task (envs/goto_seq.py) and the hierarchical agent (algos/hierarchical.py)."""

import contextlib
import json

import pytest
import torch
from safetensors.torch import load_file

from mmrl_cli.algos.hierarchical import OptionCollector
from mmrl_cli.builders import build_env_and_policy
from mmrl_cli.compose import compose_train_config
from mmrl_cli.config import ConfigError
from mmrl_cli.envs.goto import SPLIT_ID_BASE
from mmrl_cli.envs.goto_seq import GotoSeqEnv, HELDOUT_JOINERS, TRAIN_JOINERS
from mmrl_cli.models.hierarchical import CLAUSE, MASKED_LOGIT, OPTION_STEPS, ClauseKeys, open_clauses

UP, DOWN, LEFT, RIGHT = range(4)
MAP = [
    "A.r..",
    ".....",
    "..B..",
    ".....",
    "y...0",
]
STEPS = [("red", "ball"), ("blue", "key"), ("red", "box")]  # the yellow ball is the distractor
SMALL = ["rollout.n_envs=8", "rollout.n_steps=8", "algo.batch_size=32", "algo.high_batch_size=16", "algo.n_epochs=1",
         "algo.high_n_epochs=1", "model.hidden_size=16", "model.ff_size=32", "model.head_hidden=32", "model.keypoints=4",
         "algo.lr_schedule=constant", "eval.episodes=4", "monitor.progress=false", "monitor.tensorboard=false",
         "hardware=cpu", "hardware.threads=1", "algo.option_steps=4"]


def env_with(level=MAP, steps=STEPS, max_steps=48, **kwargs):
    env = GotoSeqEnv(1, sequence_steps=(2, 3), grid_size=5, num_distractors=1, max_steps=max_steps, **kwargs)
    env.reset(seed=0)
    env.set_level(0, level, steps)
    return env


def play(env, actions):
    rewards, infos = [], []
    for action in actions:
        _, reward, terminated, truncated, info = env.step(torch.tensor([action]))
        rewards.append(float(reward[0]))
        infos.append((bool(terminated[0]), bool(truncated[0]), info))
    return rewards, infos


def step_reward(t, k=3, max_steps=48):
    return (1 - 0.9 * t / max_steps) / k


# ------------------------------------------------------------------------------- the task
def test_the_instruction_its_clauses_and_progress_are_observed():
    env = env_with()
    obs = env.observation()
    decode = env.tokenizer.decode
    assert decode(obs["mission"][0]) == "go to the red ball , then go to the blue key , then go to the red box"
    assert [decode(row) for row in obs["subgoals"][0]] == ["go to the red ball", "go to the blue key", "go to the red box", ""]
    assert int(obs["progress"][0, 0]) == 0 and env.step_fields == ("level_id", "progress")


def test_steps_done_in_order_are_each_rewarded_and_the_last_is_a_success():
    env = env_with()
    # red ball at (0, 2); blue key at (2, 2); red box at (4, 4)
    rewards, infos = play(env, [RIGHT, RIGHT, DOWN, DOWN, RIGHT, RIGHT, DOWN, DOWN])
    assert rewards[1] == pytest.approx(step_reward(2)) and rewards[3] == pytest.approx(step_reward(4))
    assert rewards[7] == pytest.approx(step_reward(8))
    assert sum(r > 0 for r in rewards) == 3
    terminated, truncated, info = infos[-1]
    assert terminated and not truncated and bool(info["success"][0])
    assert float(info["episode_return"][0]) == pytest.approx(step_reward(2) + step_reward(4) + step_reward(8))
    assert int(info["progress"][0]) == 3 and int(info["num_targets"][0]) == 3
    assert not any(t for t, _, _ in infos[:-1])


def test_a_reached_target_is_removed_and_the_agent_stands_on_its_cell():
    env = env_with()
    play(env, [RIGHT, RIGHT])
    assert env.cells[0, 0, 2] == 0 and env.agent[0].tolist() == [0, 2] and int(env.progress[0]) == 1
    assert env.image[0, 0:8, 16:24].max() == 255  # the agent is drawn there now


def test_a_later_target_first_ends_the_episode_as_a_failure():
    env = env_with(["A.r..", ".....", "B....", ".....", "y...0"])
    rewards, infos = play(env, [DOWN, DOWN])  # the blue key before the red ball
    terminated, _, info = infos[-1]
    assert terminated and not bool(info["success"][0]) and rewards == [0.0, 0.0]
    assert float(info["episode_return"][0]) == 0.0 and int(info["progress"][0]) == 0


def test_partial_progress_keeps_its_reward_but_is_no_success():
    env = env_with()
    _, infos = play(env, [RIGHT, RIGHT, LEFT, LEFT, DOWN, DOWN, DOWN, DOWN])  # the red ball, then the distractor
    terminated, _, info = infos[-1]
    assert terminated and not bool(info["success"][0])
    assert float(info["episode_return"][0]) == pytest.approx(step_reward(2))
    env = env_with(max_steps=4)
    _, infos = play(env, [RIGHT, RIGHT, LEFT, LEFT])  # out of time after one step of three
    terminated, truncated, info = infos[-1]
    assert truncated and not terminated and not bool(info["success"][0])
    assert float(info["episode_return"][0]) == pytest.approx(step_reward(2, max_steps=4))


def test_levels_draw_their_step_counts_and_the_splits_never_share_a_layout():
    def layouts(split, count):
        env = GotoSeqEnv(count, sequence_steps=(2, 3), split=split)
        env.reset(seed=0)
        keys = {(tuple(c.flatten().tolist()), tuple(a.tolist()), tuple(t.tolist()))
                for c, a, t in zip(env.cells, env.agent, env.targets)}
        return keys, env.num_targets
    train, steps = layouts("train", 1500)
    heldout, _ = layouts("heldout", 300)
    assert not train & heldout
    assert set(steps.tolist()) == {2, 3}
    env = GotoSeqEnv(2, sequence_steps=(2, 3), split="heldout")
    again = GotoSeqEnv(2, sequence_steps=(2, 3), split="heldout")
    ids = torch.tensor([SPLIT_ID_BASE["heldout"], SPLIT_ID_BASE["heldout"] + 1])
    assert torch.equal(env.reset(level_ids=ids)["mission"], again.reset(level_ids=ids)["mission"])


def test_paraphrases_word_clauses_and_joiners_apart_between_training_and_new_wordings():
    def texts(split):
        env = GotoSeqEnv(64, sequence_steps=(3,), split=split, wordings="paraphrase")
        return [env.tokenizer.decode(m) for m in env.reset(seed=0)["mission"]]
    train, new = texts("train"), texts("new-wordings")
    assert len(set(train)) > 50
    assert any(" and then " in t or ", after that " in t for t in train)
    for heldout_word in ("reach", "navigate", "approach", "touch", "next"):
        assert not any(heldout_word in t.split() for t in train)
    assert all(any(j.strip(", ") in t for j in HELDOUT_JOINERS) for t in new)
    assert not any(" and then " in t for t in new) and TRAIN_JOINERS[0] not in new


@pytest.mark.parametrize("overrides,key", [
    (["data.sequence_steps=[0]"], "data.sequence_steps.0"),
    (["data.sequence_steps=[5]"], "data.sequence_steps.0"),
    (["data.sequence_steps=[4]", "data.grid_size=3", "data.num_distractors=5"], "data.sequence_steps"),
    (["data.sequence_steps=[4]", "data.num_distractors=15"], "data.sequence_steps"),
])
def test_bad_sequence_settings_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        compose_train_config(["data=goto-seq", *overrides])


# --------------------------------------------------------------------------- the agent
def agent(n_envs=4, overrides=()):
    cfg = compose_train_config(["algo=hierarchical", "data=goto-seq", *SMALL, *overrides])
    env, policy = build_env_and_policy(cfg, n_envs, torch.device("cpu"))
    return cfg, env, policy


def count_high_rows(policy):
    """Wrap the high level's forward to count the observations it is asked about."""
    calls = []
    forward = policy.high.forward
    policy.high.forward = lambda obs: (calls.append(len(obs["image"])), forward(obs))[1]
    return calls


def test_the_high_level_is_asked_only_at_sub_goal_boundaries():
    torch.manual_seed(0)
    _, env, policy = agent(n_envs=6)
    collector = OptionCollector(env, policy, 24, torch.device("cpu"), 0, contextlib.nullcontext, 0.99, 0.95)
    calls = count_high_rows(policy)
    rollout, high, stats = collector.collect()
    # Every env chooses at its first step; after that exactly where the last option ended (the low
    # level's `done`: sub-goal touched, episode over, or budget spent).
    expected = env.num_envs + int(rollout.dones[:-1].sum())
    assert sum(calls) == expected == stats["high_queries"]
    assert high is not None and len(high["actions"]) == int(rollout.dones[:-1].sum())
    # the sub-goal is a per-step field, constant within an option
    subgoal = rollout.step_fields["subgoal"]
    changed = (subgoal[1:] != subgoal[:-1]) & (rollout.dones[:-1] == 0)
    assert not bool(changed.any())
    assert rollout.step_fields["progress"].shape == subgoal.shape


def test_an_option_ends_when_its_step_budget_is_spent():
    _, env, policy = agent(n_envs=1, overrides=["algo.option_steps=3"])
    policy.low.forward = lambda obs: (torch.tensor([[9.0, 0.0, 0.0, 0.0]]), torch.zeros(1))  # always "up": never arrives
    collector = OptionCollector(env, policy, 10, torch.device("cpu"), 0, contextlib.nullcontext, 0.99, 0.95)
    env.set_level(0, ["A.r..", ".....", "..B..", ".....", "y...0"], STEPS[:2])  # after the collector's reset
    collector.obs = env.observation()
    calls = count_high_rows(policy)
    rollout, high, _ = collector.collect()
    assert rollout.dones[:, 0].tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 1, 0]  # every 3 steps
    assert len(calls) == 4 and high["obs"]["image"].shape[0] == 3
    assert float(collector.state[0, OPTION_STEPS]) == 1.0


def test_acting_outside_training_keeps_the_chosen_clause_until_a_boundary():
    _, env, policy = agent(n_envs=1, overrides=["algo.option_steps=2"])
    policy.eval()
    obs = env.observation()
    state, starts = policy.initial_state(1, "cpu"), torch.ones(1)
    calls = count_high_rows(policy)
    with torch.inference_mode():
        for _ in range(4):
            _, _, state = policy.step(env.observation(), state, starts)
            starts = torch.zeros(1)
    assert len(calls) == 2  # at the start, then when the 2-step budget was spent
    assert bool(open_clauses(obs["subgoals"], obs["progress"], policy.pad_id)[0, int(state[0, CLAUSE])])
    assert "sub-goal" in policy.describe(obs, state, env.tokenizer)


def test_pointer_keys_depend_on_a_clauses_words_and_place_not_its_position():
    """The same open clauses in the same order get the same keys wherever they sit: the 4th position of a
    4-step instruction is scored by the function the 2- and 3-step ones trained."""
    torch.manual_seed(0)
    keys = ClauseKeys(vocab_size=20, pad_id=0, width=8)
    a, b, c, d = [[5, 6, 7], [5, 8, 9], [5, 10, 0], [5, 11, 12]]  # clauses of token ids (0: padding)
    four = torch.tensor([[a, b, c, d]])
    three = torch.tensor([[b, c, d, [0, 0, 0]]])
    after_one = keys(four, open_clauses(four, torch.tensor([[1]]), 0))
    fresh = keys(three, open_clauses(three, torch.tensor([[0]]), 0))
    torch.testing.assert_close(after_one[0, 1:], fresh[0, :3])
    assert not torch.allclose(after_one[0, 1], after_one[0, 2])  # another place, another key


@pytest.mark.parametrize("head", ["pointer", "index"])
def test_both_high_heads_mask_closed_clauses_and_play_four_step_levels(head):
    _, env, policy = agent(n_envs=4, overrides=[f"algo.high_head={head}", "data.sequence_steps=[4]"])
    obs = env.observation()
    obs["progress"] = torch.tensor([[0], [1], [2], [3]])
    with torch.inference_mode():
        logits, value = policy.high_outputs(obs)
    assert logits.shape == (4, 4) and value.shape == (4,)
    open_ = open_clauses(obs["subgoals"], obs["progress"], policy.pad_id)
    assert bool((logits[~open_] == MASKED_LOGIT).all()) and bool((logits[open_] > MASKED_LOGIT).all())
    assert open_.sum(1).tolist() == [4, 3, 2, 1]


def test_a_cli_run_checkpoints_both_levels_resumes_exactly_and_evaluates(run_mmrl, tmp_path, monkeypatch):
    from mmrl_cli.cli import main
    from mmrl_cli.trainer import train

    args = ["algo=hierarchical", "data=goto-seq", *SMALL, "runs_root=runs", "checkpoint.every_updates=1"]
    first = run_mmrl("train", *args, "total_steps=128", "run_name=hrl", timeout=120)  # the console script's path
    assert first.returncode == 0, first.stderr
    (run_dir,) = (tmp_path / "runs").glob("*/*-hrl")
    assert (run_dir / "checkpoints" / "00000002").is_dir()
    monkeypatch.chdir(tmp_path)
    main(["train", f"resume={run_dir}", "total_steps=256"])  # resumed through the CLI, in this process
    weights = load_file(str(run_dir / "model.safetensors"))
    assert any(k.startswith("high.") for k in weights) and any(k.startswith("low.") for k in weights)

    straight = tmp_path / "straight"
    train(compose_train_config(args + ["total_steps=256"]), straight)
    expected = load_file(str(straight / "model.safetensors"))
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)

    main(["eval", f"run={run_dir}", "episodes=6", "gif.episodes=1", "gif.max_steps=10"])
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["episodes"] == 6 and (run_dir / "eval" / "episodes.gif").is_file()

    # trained on 2- and 3-step instructions, played on 4-step ones: the same env with another setting
    main(["eval", f"run={run_dir}", "episodes=4", "gif.episodes=0", "data.sequence_steps=[4]"])
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["data_changes"] == {"sequence_steps": [4]} and results["episodes"] == 4
    with pytest.raises(SystemExit) as stopped:  # a setting that changes what the policy reads: one line, exit 2
        main(["eval", f"run={run_dir}", "data.grid_size=7"])
    assert stopped.value.code == 2


def test_the_gif_names_the_chosen_sub_goal():
    from mmrl_cli.gif import record_episodes

    cfg, _, policy = agent(n_envs=1)
    episodes = record_episodes(policy, cfg, torch.device("cpu"), "validation", 1, True, 0, 6)
    notes = episodes[0]["notes"]
    assert len(notes) == len(episodes[0]["frames"]) and all(n.startswith("sub-goal ") for n in notes[1:])


def test_the_low_level_starts_from_a_goto_run_and_can_be_frozen(tmp_path):
    from mmrl_cli.trainer import train

    goto = compose_train_config([*[o for o in SMALL if not o.startswith(("algo.high", "algo.option"))],
                                 "data.max_steps=48", "total_steps=64"])
    train(goto, tmp_path / "goto")
    cfg = compose_train_config(["algo=hierarchical", "data=goto-seq", *SMALL, "total_steps=64",
                                f"algo.low_init_from={tmp_path / 'goto'}", "algo.low_train=freeze"])
    train(cfg, tmp_path / "hrl")
    low = load_file(str(tmp_path / "goto" / "model.safetensors"))
    after = load_file(str(tmp_path / "hrl" / "model.safetensors"))
    assert all(torch.equal(after[f"low.{k}"], v) for k, v in low.items())
