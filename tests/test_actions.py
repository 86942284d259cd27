"""The open actor contract: action distributions (categorical, diagonal Gaussian) used alike by
sampling, losses and evaluation; Box action spaces trained by PPO and A2C through `data=gym`."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from mmrl_cli import trainer
from mmrl_cli.compose import compose_train_config
from mmrl_cli.config import ConfigError
from mmrl_cli.distributions import ActionSpace, Categorical, DiagGaussian, sample_actions


def test_gaussian_log_probabilities_and_entropy_match_torch_distributions():
    torch.manual_seed(0)
    space = ActionSpace.box((3,), -2.0, 2.0)
    mean, log_std = torch.randn(5, 3), torch.randn(3) * 0.3
    dist = DiagGaussian(mean, log_std, space)
    reference = torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1)
    actions = reference.sample()
    assert torch.allclose(dist.log_prob(actions), reference.log_prob(actions), atol=1e-5)
    assert torch.allclose(dist.entropy(), reference.entropy(), atol=1e-5)


def test_tanh_squashed_log_probability_includes_the_change_of_variables():
    space = ActionSpace.box((2,), -1.0, 1.0, squash="tanh")
    mean, log_std = torch.tensor([[0.3, -0.7]]), torch.tensor([0.1, -0.2])
    dist = DiagGaussian(mean, log_std, space)
    reference = torch.distributions.TransformedDistribution(
        torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1),
        [torch.distributions.TanhTransform()])
    raw = torch.tensor([[0.5, -1.5]])
    assert torch.allclose(dist.log_prob(raw), reference.log_prob(torch.tanh(raw)), atol=1e-5)
    assert torch.allclose(dist.to_env(raw), torch.tanh(raw))  # bounds [-1, 1]: tanh itself


def test_clipped_actions_stay_inside_per_dimension_bounds():
    space = ActionSpace.box((2,), [-1.0, 0.0], [1.0, 5.0])
    dist = DiagGaussian(torch.zeros(4, 2), torch.full((2,), 3.0), space)  # very wide
    env_actions = dist.to_env(dist.sample(torch.Generator().manual_seed(0)))
    assert (env_actions[:, 0].abs() <= 1).all() and (env_actions[:, 1] >= 0).all() and (env_actions[:, 1] <= 5).all()


def test_sampling_is_reproducible_from_its_generator_and_mode_is_the_mean():
    dist = DiagGaussian(torch.ones(3, 1), torch.zeros(1), ActionSpace.box((1,), -2, 2))
    a = sample_actions(dist, generator=torch.Generator().manual_seed(3))[0]
    b = sample_actions(dist, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b) and a.shape == (3, 1)
    assert torch.equal(sample_actions(dist, deterministic=True)[0], torch.ones(3, 1))
    categorical = Categorical(torch.tensor([[0.0, 5.0, 0.0]]))
    assert sample_actions(categorical, deterministic=True)[0].item() == 1


def test_infinite_action_bounds_are_refused():
    with pytest.raises(ValueError, match="infinite action bounds"):
        ActionSpace.box((1,), -np.inf, np.inf)


class UnboundedActions(gym.Env):
    """A one-step env whose Box action space has no bounds."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)

    def reset(self, seed=None, options=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, True, False, {}


def test_an_env_with_infinite_action_bounds_is_one_config_error():
    gym.register("mmrl-test/Unbounded-v0", entry_point=UnboundedActions)
    with pytest.raises(ConfigError, match="data.env_id: mmrl-test/Unbounded-v0: infinite action bounds"):
        from mmrl_cli.compat import check_compatible

        check_compatible(compose_train_config(["data=gym", "data.env_id=mmrl-test/Unbounded-v0", "model=mlp"]))


PENDULUM = ["data=gym", "data.env_id=Pendulum-v1", "model=mlp", "rollout.n_envs=4", "rollout.n_steps=64",
            "eval.episodes=2", "eval.every_steps=100000", "monitor.progress=false", "monitor.tensorboard=false"]


@pytest.mark.parametrize("algo,squash", [("ppo", "clip"), ("a2c", "tanh")])
def test_box_actions_train_with_ppo_and_a2c_and_resume(tmp_path, algo, squash):
    """A Gaussian policy trains on Pendulum (its log std is learned, the actions stay in bounds);
    a run stopped half-way resumes from its checkpoint and ends at the planned step."""
    from safetensors.torch import load_file

    from mmrl_cli.checkpoint import find_checkpoint

    overrides = [*PENDULUM, f"algo={algo}", f"data.action_squash={squash}", "checkpoint.every_updates=2"]
    overrides += ["algo.batch_size=64", "algo.n_epochs=2"] if algo == "ppo" else []
    summary = trainer.train(compose_train_config([*overrides, "total_steps=512"]), tmp_path)
    assert math.isfinite(summary["heldout_return"]) and summary["steps"] == 512
    summary = trainer.train(compose_train_config([*overrides, "total_steps=1024"]), tmp_path,
                            resume_from=find_checkpoint(tmp_path)[0])
    assert summary["steps"] == 1024 and math.isfinite(summary["heldout_return"])
    log_std = load_file(tmp_path / "model.safetensors")["heads.log_std"]
    assert log_std.shape == (1,) and not torch.equal(log_std, torch.zeros(1))  # it learned
