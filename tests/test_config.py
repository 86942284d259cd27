"""Every option of every config group composes, validates and builds a working pipeline."""

import itertools

import pytest
import torch
from hydra import compose, initialize_config_dir

from mmrl_cli.cli import CONF_DIR, GROUPS, check_compatible, group_options
from mmrl_cli.config import ConfigError, validate
from mmrl_cli.builders import build_env_and_policy, pick_device


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes_and_validates(group):
    for option in group_options(group):
        overrides = [f"{group}={option}"]
        if group == "data" and option in ("cartpole", "gym"):
            overrides.append("model=mlp")
        if group == "hardware" and option == "gpu" and not torch.cuda.is_available():
            with pytest.raises(ConfigError, match="hardware.device"):
                check_compatible(validate(composed(*overrides)))
            continue
        cfg = validate(composed(*overrides))
        check_compatible(cfg)
        assert getattr(cfg, group) is not None


@pytest.mark.parametrize(
    "model,data", [(m, d) for m, d in itertools.product(group_options("model"), group_options("data"))]
)
def test_every_model_builds_for_every_compatible_data(model, data):
    cfg = validate(composed(f"model={model}", f"data={data}", "hardware=cpu"))
    try:
        check_compatible(cfg)
    except ConfigError as e:
        assert data in ("cartpole", "gym") and model != "mlp"
        assert "needs image observations" in str(e)
        return
    env, policy = build_env_and_policy(cfg, 2, pick_device(cfg.hardware))
    obs = env.reset(seed=0)
    logits, value = policy(obs)
    assert logits.shape == (2, env.num_actions) and value.shape == (2,)
    obs, reward, *_ = env.step(logits.argmax(-1))
    assert reward.shape == (2,)


def test_a_data_group_can_set_its_own_evaluation_and_the_command_line_still_wins():
    cfg = validate(composed("data=cartpole", "model=mlp"))
    assert (cfg.eval.every_steps, cfg.eval.episodes, cfg.algo.n_envs) == (25_000, 32, 8)
    assert validate(composed("data=cartpole", "model=mlp", "eval.episodes=7")).eval.episodes == 7
    assert validate(composed()).eval.episodes == 500


def test_yaml_keys_all_carry_comments():
    for path in CONF_DIR.rglob("*.yaml"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#") or stripped.startswith("- ") or stripped in ("defaults:",):
                continue
            if stripped.endswith(":") and not stripped.startswith("-"):  # a section header
                continue
            assert "#" in line, f"{path.name}:{number} has no comment: {line!r}"


@pytest.mark.parametrize(
    "override,key",
    [("algo.lr=-1", "algo.lr"), ("algo.gamma=1.5", "algo.gamma"), ("algo.n_envs=0", "algo.n_envs"),
     ("algo.batch_size=100000", "algo.batch_size"), ("model.heads=5", "model.heads"),
     ("data.grid_size=1", "data.grid_size"), ("hardware.precision=fp8", "hardware.precision"),
     ("algo.lr_schedule=cosine", "algo.lr_schedule"), ("eval.episodes=0", "eval.episodes")],
)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(composed(override))
