"""Batched CartPole matches gymnasium; the gymnasium adapter handles vector and Dict envs."""

import numpy as np
import pytest
import torch
import gymnasium as gym

from mmrl_cli.envs import CartPoleEnv, GymVectorEnv


def test_batched_cartpole_follows_gymnasium_dynamics():
    ours = CartPoleEnv(1, seed=0)
    ours.reset(seed=0)
    theirs = gym.make("CartPole-v1").unwrapped
    theirs.reset(seed=0)
    theirs.state = ours.state[0].double().numpy().copy()
    rng = np.random.default_rng(0)
    for _ in range(200):
        action = int(rng.integers(2))
        obs, reward, terminated, truncated, info = ours.step(torch.tensor([action]))
        ref_obs, ref_reward, ref_terminated, _, _ = theirs.step(action)
        if terminated.item():
            assert ref_terminated
            np.testing.assert_allclose(info["final_obs"]["vector"][0].numpy(), ref_obs, rtol=1e-4, atol=1e-5)
            theirs.reset()
            theirs.state = ours.state[0].double().numpy().copy()
            continue
        assert not ref_terminated and reward.item() == ref_reward
        np.testing.assert_allclose(obs["vector"][0].numpy(), ref_obs, rtol=1e-4, atol=1e-5)


def test_batched_cartpole_truncates_at_the_time_limit():
    env = CartPoleEnv(4, max_steps=5, seed=1)
    env.reset(seed=1)
    for _ in range(4):
        _, _, terminated, truncated, _ = env.step(torch.tensor([0, 1, 0, 1]))
        assert not truncated.any()
    _, _, terminated, truncated, info = env.step(torch.tensor([0, 1, 0, 1]))
    assert (truncated | terminated).all() and info["episode_length"].tolist() == [5, 5, 5, 5]
    assert env.steps.tolist() == [0, 0, 0, 0]


def test_batched_cartpole_success_is_balancing_until_the_time_limit():
    """The built-in CartPole: a fallen pole is a failure, a full episode a success (as the gym path)."""
    env = CartPoleEnv(1, max_steps=500, seed=0)
    env.reset(seed=0)
    for _ in range(200):  # always push right: the pole falls
        _, _, terminated, _, info = env.step(torch.tensor([1]))
        if terminated.any():
            break
    assert terminated.all() and info["success"].tolist() == [False]
    short = CartPoleEnv(2, max_steps=3, seed=0)
    short.reset(seed=0)
    for _ in range(3):
        _, _, terminated, truncated, info = short.step(torch.tensor([0, 1]))
    assert truncated.all() and not terminated.any() and info["success"].tolist() == [True, True]


def test_gym_adapter_vector_env_with_final_obs():
    env = GymVectorEnv("CartPole-v1", 3, torch.device("cpu"), seed=0)
    obs = env.reset()
    assert obs["vector"].shape == (3, 4) and env.num_actions == 2
    episodes = 0
    for _ in range(300):
        obs, reward, terminated, truncated, info = env.step(torch.zeros(3, dtype=torch.int64))
        if len(info["done_index"]):
            episodes += len(info["done_index"])
            assert info["final_obs"]["vector"].shape == (len(info["done_index"]), 4)
            assert (info["episode_length"] > 0).all()
    assert episodes > 3
    env.close()


def test_gym_adapter_tokenizes_minigrid_missions():
    pytest.importorskip("minigrid")
    env = GymVectorEnv("BabyAI-GoToRedBallGrey-v0", 2, torch.device("cpu"), seed=0, mission_tokens=8)
    obs = env.reset()
    assert set(obs) == {"grid", "mission", "vector"} and obs["grid"].dtype == torch.uint8
    assert obs["mission"][0].tolist()[:5] == env.observations.tokenizer.encode("go to the red ball", 8)[:5]
    env.close()
