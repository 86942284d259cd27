"""Checks by kind of value, over *every* key of that kind (not a hand-picked list of examples)."""

import dataclasses
import math
import typing

import pytest

from mmrl_cli.config import GROUP_SCHEMAS, ConfigError, TrainConfig
from mmrl_cli.preflight import STEP_COUNT_KEYS, check_memory, check_numbers, check_output_dir


def config_with(group: str, option: str) -> TrainConfig:
    """The default TrainConfig with `group` set to `option`'s defaults (a fresh object each call)."""
    cfg = TrainConfig()
    setattr(cfg, group, GROUP_SCHEMAS[group][option]())
    if group == "algo" and option == "hierarchical":  # it plays the sequential task only
        cfg.data = GROUP_SCHEMAS["data"]["goto"](sequence_steps=[2, 3])
    if group == "compression":  # methods that need a trained run only check that one is named
        cfg.teacher = "runs/teacher" if option in ("kickstart", "distill") else None
        cfg.init_from = "runs/teacher" if option == "lowrank" else None
    return cfg


def every_config():
    """(group, option) for every option of every group: each option's keys appear at least once."""
    for group, options in GROUP_SCHEMAS.items():
        for option in options:
            yield group, option


def keys_of_kind(obj, kind: type, prefix: str = ""):
    """Dotted keys of `obj` whose declared type is `kind` (or Optional[kind], or list[kind])."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint, key = getattr(obj, f.name), hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from keys_of_kind(value, kind, key + ".")
            continue
        args = set(typing.get_args(hint))
        if hint is kind or (kind in args and type(None) in args) or (typing.get_origin(hint) is list and args == {kind}):
            yield key


def set_key(cfg, key: str, value) -> None:
    *path, name = key.split(".")
    obj = cfg
    for part in path:
        obj = getattr(obj, part)
    current = getattr(obj, name)
    setattr(obj, name, [value] * max(1, len(current)) if isinstance(current, list) else value)  # an empty list gets one


def check_all(cfg) -> None:
    cfg.check()
    check_numbers(cfg)


def cases(kind: type):
    seen = set()
    for group, option in every_config():
        for key in keys_of_kind(config_with(group, option), kind):
            label = f"{group}={option}:{key}"
            if key not in seen:
                seen.add(key)
                yield pytest.param(group, option, key, id=label)


@pytest.mark.parametrize("group,option,key", list(cases(float)))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_every_float_key_refuses_non_finite_values(group, option, key, bad):
    cfg = config_with(group, option)
    set_key(cfg, key, bad)
    with pytest.raises(ConfigError) as error:
        check_all(cfg)
    assert str(error.value).startswith(key), str(error.value)


@pytest.mark.parametrize("group,option,key", list(cases(int)))
def test_every_int_key_refuses_values_its_consumer_cannot_take(group, option, key):
    cfg = config_with(group, option)
    set_key(cfg, key, 2**70 if key in STEP_COUNT_KEYS else 2**40)
    with pytest.raises(ConfigError) as error:
        check_all(cfg)
    assert str(error.value).startswith(key), str(error.value)


def test_there_are_many_keys_of_each_kind():
    assert len(list(cases(float))) >= 12 and len(list(cases(int))) >= 30


def test_the_defaults_pass_every_check():
    for group, option in every_config():
        check_all(config_with(group, option))


def test_output_dir_checks(tmp_path):
    check_output_dir("runs_root", tmp_path / "new" / "deeper")  # creatable: fine, and nothing is left behind
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="runs_root: .* exists and is not a directory"):
        check_output_dir("runs_root", tmp_path / "file")
    with pytest.raises(ConfigError, match="cannot be created: .* is not a directory"):
        check_output_dir("runs_root", tmp_path / "file" / "sub")
    with pytest.raises(ConfigError, match="is not writable"):
        check_output_dir("runs_root", "/proc/mmrl-test-runs")


def test_memory_check_names_the_key_that_grew():
    cfg = TrainConfig()
    cfg.rollout.n_steps = 10**9
    spec = {"vector": ((1000,), __import__("torch").float32)}
    with pytest.raises(ConfigError, match="^rollout.n_steps: the rollout"):
        check_memory(cfg, spec, lambda: (10, 10))
    cfg.rollout.n_steps = 16
    with pytest.raises(ConfigError, match="the model has 100,000,000,000,000 parameters"):
        check_memory(cfg, spec, lambda: (10**14, 10))
    with pytest.raises(ConfigError, match="one forward pass over 512 observations needs"):
        check_memory(cfg, spec, lambda: (10**6, 10**12))
    check_memory(cfg, spec, lambda: (10**6, 10**5))  # an ordinary run fits


def test_activation_count_runs_every_model_on_the_meta_device():
    """Every model runs on meta (no memory) so its layer outputs can be counted; wider means more."""
    import torch

    from mmrl_cli.envs.spec import observation_spec_of
    from mmrl_cli.models import build_policy
    from mmrl_cli.preflight import activation_elements_per_sample

    for data, model in [("goto", "vit-gpt2"), ("goto", "cnn"), ("cartpole", "mlp")]:
        cfg = config_with("data", data)
        cfg.model = config_with("model", model).model
        spec, n_actions = observation_spec_of(cfg.data)
        counts = []
        for scale in (1, 2):
            if model == "mlp":
                cfg.model.hidden_sizes = [64 * scale, 64 * scale]
            elif model == "cnn":
                cfg.model.channels = [c * scale for c in cfg.model.channels]
            else:
                cfg.model.hidden_size = 48 * scale
            with torch.device("meta"):
                policy = build_policy(cfg.model, spec, n_actions, cfg.data.tile_size if data == "goto" else 1)
            counts.append(activation_elements_per_sample(policy, spec))
        assert 0 < counts[0] < counts[1], (model, counts)
