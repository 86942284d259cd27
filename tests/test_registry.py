"""The registries agree with the YAML: every registered component has its YAML, every YAML of a
group holds exactly its schema's keys (each with a comment), the option named after a type
states that schema's defaults (defaults are written once and checked here), and the one
registry of config groups matches each command's defaults list."""

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mmrl_cli.algos import ALGOS
from mmrl_cli.compose import ALL_GROUPS, COMMAND_GROUPS, CONF_DIR, group_options
from mmrl_cli.config import GROUP_SCHEMAS, HardwareConfig

SCHEMAS = {**GROUP_SCHEMAS, "hardware": {None: HardwareConfig}}


def section_of(group: str, option: str) -> dict:
    """The values an option's YAML sets in its group (packaged `_global_` files nest them under the group)."""
    loaded = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
    return loaded.get(group, loaded) if "# @package _global_" in (CONF_DIR / group / f"{option}.yaml").read_text() else loaded


def plain(value):
    """Tuples (dataclass defaults) and lists (YAML) compare equal."""
    return list(value) if isinstance(value, tuple) else value


OPTIONS = [(group, option) for group in SCHEMAS for option in group_options(group)]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_yaml_option_holds_exactly_its_schema_keys_each_commented(group, option):
    values = section_of(group, option)
    schema = SCHEMAS[group].get(values.get("type")) if "type" in values else SCHEMAS[group].get(None)
    assert schema is not None, f"{group}/{option}.yaml: type {values.get('type')!r} is not registered"
    fields = {f.name for f in dataclasses.fields(schema)}
    assert set(values) <= fields, f"{group}/{option}.yaml: unknown keys {set(values) - fields}"
    if group != "hardware":  # hardware presets set what they change; the rest comes from train.yaml
        assert set(values) == fields, f"{group}/{option}.yaml: missing {fields - set(values)}"
    for line in (CONF_DIR / group / f"{option}.yaml").read_text().splitlines():
        if ":" in line and not line.lstrip().startswith("#") and line.split(":")[0].strip() in fields:
            assert "#" in line, f"{group}/{option}.yaml: no comment on {line.strip()!r}"


@pytest.mark.parametrize("group", [g for g in SCHEMAS if g != "hardware"])
def test_the_option_named_after_each_type_states_the_schema_defaults(group):
    for kind, schema in SCHEMAS[group].items():
        assert kind in group_options(group), f"{group}: type {kind!r} has no conf/{group}/{kind}.yaml"
        values, defaults = section_of(group, kind), schema()
        differing = {f.name for f in dataclasses.fields(schema)
                     if plain(getattr(defaults, f.name)) != values[f.name] and getattr(defaults, f.name) != "???"}
        assert not differing, f"conf/{group}/{kind}.yaml differs from {schema.__name__}'s defaults in {sorted(differing)}"


def test_every_algorithm_has_a_schema_and_every_schema_an_algorithm():
    assert set(ALGOS) == set(GROUP_SCHEMAS["algo"]) | {"distill"}


def test_the_group_registry_matches_each_commands_defaults_list():
    for command, groups in COMMAND_GROUPS.items():
        defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{command}.yaml")).get("defaults", [])
        listed = [next(iter(entry)) for entry in defaults if isinstance(entry, dict)]
        listed = [g for g in listed if not g.startswith("override ")]
        assert sorted(listed) == sorted(groups), f"conf/{command}.yaml lists {listed}, COMMAND_GROUPS {groups}"
    assert all(group_options(group) for group in ALL_GROUPS)


def test_the_readme_names_every_option_of_every_group():
    """README's table of config groups lists each group's options: a new YAML file is named there."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {line.split("|")[1].strip().split()[0].strip("`"): line.split("|")[2]
            for line in readme.splitlines() if line.startswith("| `")}
    for group in ALL_GROUPS:
        assert group in rows, f"README's table of config groups has no row for {group}"
        unnamed = [o for o in group_options(group) if f"`{o}`" not in rows[group]]
        assert not unnamed, f"README's {group} row does not name {unnamed}"
