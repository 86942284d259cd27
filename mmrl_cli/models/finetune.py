"""Fine-tuning controls: which parameters train, at what learning rate, and LoRA adapters.

The `finetune` config section (docs/transfer.md) names *parts* of a policy or parameter-name
patterns. A part is a set of top-level modules the model class declares in ``PARTS`` (the
ViT-GPT2 policy: ``vision`` = the ViT or pretrained vision tower, ``text`` = the GPT-2 or
pretrained text tower); ``heads`` is every other module (fusion, readout, trunk, memory,
actor and critic). Anything else is an `fnmatch` pattern over parameter names
(``vit.layers.0.*``) or, for LoRA targets, over module names.

- `freeze(policy, names)`: those parameters never change (``requires_grad`` off, left out of the optimiser);
- `add_lora(policy, ...)`: low-rank adapters (peft, Hu et al. 2021) on the linear layers of the
  targets (GPT-2's ``Conv1D`` included); then only the adapters train, plus the parts or
  patterns named in ``train_also`` (e.g. a new task's heads); `lora_settings` records how, so a
  checkpoint can be rebuilt and resumed;
- `merge_lora(policy)`: fold the adapters into plain weights (the same outputs, no adapters);
- `parameter_groups(policy, scales)`: the optimiser's groups, each with an ``lr_scale`` that
  multiplies the algorithm's learning rate (schedules included).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import warnings

import torch
from torch import nn

from ..errors import ConfigError

OTHER_PART = "heads"  # every top-level module no part names


def parts_of(policy: nn.Module) -> dict[str, tuple[str, ...]]:
    """Part name -> the top-level module names in it (``heads``: all the rest)."""
    declared = dict(getattr(policy, "PARTS", {}))
    named = {name for part in declared.values() for name in part}
    declared[OTHER_PART] = tuple(name for name, _ in policy.named_children() if name not in named)
    return declared


def in_selection(name: str, selection: str, parts: dict[str, tuple[str, ...]]) -> bool:
    """True when the parameter or module `name` belongs to a part called `selection` or matches it as a pattern."""
    if selection in parts:
        return name.split(".")[0] in parts[selection]
    return fnmatch.fnmatchcase(name, selection)


def selected(policy: nn.Module, selection: str, key: str) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs a part or pattern selects; ConfigError naming `key` when none."""
    parts = parts_of(policy)
    chosen = [(name, p) for name, p in policy.named_parameters() if in_selection(name, selection, parts)]
    if not chosen:
        raise ConfigError(f"{key}: {selection!r} selects no parameter of this {type(policy).__name__} "
                          f"(parts: {', '.join(parts)}; or a pattern such as 'vit.layers.0.*')")
    return chosen


def freeze(policy: nn.Module, names: list[str]) -> int:
    """Freeze every parameter the parts or patterns `names` select; returns how many values are frozen."""
    count = 0
    for selection in names:
        for _, parameter in selected(policy, selection, "finetune.freeze"):
            if parameter.requires_grad:
                count += parameter.numel()
            parameter.requires_grad_(False)
    return count


def is_lora_layer(module: nn.Module) -> bool:
    """True for a layer peft has wrapped with adapters."""
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def lora_targets(policy: nn.Module, selections: list[str]) -> list[str]:
    """Names of the linear layers (``nn.Linear``, GPT-2's ``Conv1D``) the parts or patterns select."""
    from transformers.pytorch_utils import Conv1D

    parts = parts_of(policy)
    names = [name for name, module in policy.named_modules()
             if isinstance(module, (nn.Linear, Conv1D)) and any(in_selection(name, s, parts) for s in selections)]
    if not names:
        raise ConfigError(f"finetune.lora_targets: {selections} select no linear layer of this {type(policy).__name__} "
                          f"(parts: {', '.join(parts)})")
    return names


def add_lora(policy: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str],
             train_also: list[str] = ()) -> dict:
    """Wrap the layers named `targets` (module names) with LoRA adapters of `rank`; only the
    adapters and the parameters `train_also` selects (parts or patterns) train afterwards.
    Returns the settings (recorded on the policy as ``lora_settings``) that rebuild the same structure."""
    from peft import LoraConfig, inject_adapter_in_model
    from transformers.pytorch_utils import Conv1D

    parts = parts_of(policy)
    trained = {name for name, p in policy.named_parameters() if p.requires_grad
               and any(in_selection(name, s, parts) for s in train_also)}
    for selection in train_also:
        selected(policy, selection, "finetune.lora_train_also")  # names nothing: one line
    conv1d = [n for n in targets if isinstance(policy.get_submodule(n), Conv1D)]
    linear = [n for n in targets if n not in conv1d]
    # peft takes one fan-in/fan-out layout per config: GPT-2's Conv1D stores (in, out), Linear (out, in).
    for names, fan_in_fan_out, adapter in ((linear, False, "default"), (conv1d, True, "conv1d")):
        if names:
            config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names,
                                fan_in_fan_out=fan_in_fan_out)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inject_adapter_in_model(config, policy, adapter_name=adapter)
    for module in policy.modules():  # each injection activated its own adapter only: activate every layer's own
        if is_lora_layer(module):
            module.set_adapter(list(module.lora_A.keys()))
    for name, parameter in policy.named_parameters():  # the adapters, and what train_also names
        parameter.requires_grad_(".lora_" in name or name in trained)
    if hasattr(policy, "analytic_backward"):
        policy.analytic_backward = False  # the closed-form backward knows plain layers only
    settings = {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(targets), "train_also": list(trained)}
    policy.lora_settings = settings
    return settings


def has_lora(policy: nn.Module) -> bool:
    """True when the policy carries LoRA adapters."""
    return getattr(policy, "lora_settings", None) is not None


def merge_lora(policy: nn.Module) -> int:
    """Fold every adapter into its layer's weight and put the plain layer back; returns how many."""
    merged = 0
    for name, module in list(policy.named_modules()):
        if is_lora_layer(module) and hasattr(module, "get_base_layer"):
            with torch.no_grad():
                module.merge(adapter_names=list(module.lora_A.keys()))
            base = module.get_base_layer()
            parent_name, _, child = name.rpartition(".")
            setattr(policy.get_submodule(parent_name) if parent_name else policy, child, base)
            merged += 1
    for parameter in policy.parameters():
        parameter.requires_grad_(True)
    policy.lora_settings = None
    return merged


def lora_note(policy: nn.Module) -> str | None:
    """The header note of a policy with adapters (how to rebuild them), None without."""
    return "lora:" + json.dumps(policy.lora_settings) if has_lora(policy) else None


def adopt_lora_note(policy: nn.Module, note: str | None) -> bool:
    """Give `policy` the adapters a weights file's header note describes; True when it had some."""
    if not note or not note.startswith("lora:"):
        return False
    settings = json.loads(note[len("lora:"):])
    add_lora(policy, settings["rank"], settings["alpha"], settings["dropout"], settings["targets"])
    for name, parameter in policy.named_parameters():
        if name in settings["train_also"]:
            parameter.requires_grad_(True)
    policy.lora_settings = settings
    return True


def parameter_groups(policy: nn.Module, lr: float) -> list[dict]:
    """The trainable parameters as optimiser groups at learning rate `lr`: one per entry of the
    policy's ``lr_scales`` (part or pattern -> multiplier, from ``finetune.lr_scale``; the first
    entry that selects a parameter wins), one for the rest at 1x. Frozen parameters are left out.
    Every group carries its ``lr_scale`` (schedules multiply it in: `GradientStep.set_lr`)."""
    scales = dict(getattr(policy, "lr_scales", None) or {})
    parts = parts_of(policy)
    groups: dict[str, list] = {selection: [] for selection in scales}
    rest = []
    for name, parameter in policy.named_parameters():
        if not parameter.requires_grad:
            continue
        owner = next((s for s in scales if in_selection(name, s, parts)), None)
        (groups[owner] if owner is not None else rest).append(parameter)
    for selection, params in groups.items():
        if not params:
            raise ConfigError(f"finetune.lr_scale: {selection!r} selects no trainable parameter (parts: {', '.join(parts)})")
    out = [{"params": params, "lr": lr * float(scales[s]), "lr_scale": float(scales[s])} for s, params in groups.items()]
    if rest:
        out.insert(0, {"params": rest, "lr": lr, "lr_scale": 1.0})
    return out


def parameter_counts(policy: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter values of a policy."""
    total = sum(p.numel() for p in policy.parameters())
    return sum(p.numel() for p in policy.parameters() if p.requires_grad), total


@contextlib.contextmanager
def unchanged_rng():
    """Run a block without moving torch's global random stream (adapters draw their init from it)."""
    state = torch.random.get_rng_state()
    try:
        yield
    finally:
        torch.random.set_rng_state(state)
