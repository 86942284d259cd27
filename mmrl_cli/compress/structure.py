"""Models whose shapes are not their config's: pruned units and factorised layers.

A structurally compressed policy is built from its config as usual, then `adopt_shapes` gives it
the shapes of its saved weights: a layer saved as ``<name>.first.weight`` + ``<name>.second.weight``
becomes a `LowRankLinear`, and a layer saved smaller (fewer neurons, heads or channels) gets
parameters of the saved size. Attention bookkeeping (GPT-2's split size and head count) follows
the layer sizes (`sync_attention`). Checkpoints note such a policy in their header
(``mmrl_structure``), so only those are reshaped: any other shape mismatch stays an error.
"""

from __future__ import annotations

import torch
from torch import nn

STRUCTURE_NOTE = "compressed"  # the header note of a structurally compressed policy's weights


class LowRankLinear(nn.Module):
    """``y = second(first(x))``: a (out x in) weight as (out x rank) @ (rank x in), one bias."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def conv1d_class():
    """transformers' GPT-2 ``Conv1D`` (a linear layer with its weight stored as (in, out))."""
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def is_linear_like(module: nn.Module) -> bool:
    """True for layers `LowRankLinear` can replace: ``nn.Linear`` and GPT-2's ``Conv1D``."""
    return isinstance(module, (nn.Linear, conv1d_class()))


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The (out, in) weight of a Linear or Conv1D layer (Conv1D stores it transposed)."""
    return module.weight if isinstance(module, nn.Linear) else module.weight.t()


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the submodule called `name` (dotted) is."""
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def input_size(layer: nn.Module) -> int:
    """Input width of a Linear, LowRankLinear or Conv1D layer (Conv1D stores its weight as (in, out))."""
    return layer.in_features if hasattr(layer, "in_features") else layer.weight.shape[0]


def is_structured(policy: nn.Module) -> bool:
    """True when `policy` has been pruned or factorised so that its shapes are not its config's."""
    return bool(getattr(policy, "structure_compressed", False))


def sync_attention(policy: nn.Module) -> None:
    """After heads were removed: GPT-2 attention's split size and head count from its layer sizes
    (ViT's attention reshapes by head size alone)."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    for module in policy.modules():
        if isinstance(module, GPT2Attention):
            module.split_size = input_size(module.c_proj)  # heads x head_dim
            module.num_heads = module.split_size // module.head_dim


def fit_size_attributes(module: nn.Module) -> None:
    """Make a layer's size attributes agree with its (resized) weight."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif isinstance(module, nn.Conv2d):
        module.out_channels, module.in_channels = weight.shape[:2]
    elif isinstance(module, conv1d_class()):
        module.nx, module.nf = weight.shape
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(weight.shape)
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = weight.shape


def resize_parameters(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give `module`'s own parameters the `shapes` (by parameter name) and fix its size attributes."""
    for name, shape in shapes.items():
        old = getattr(module, name)
        if tuple(old.shape) != tuple(shape):
            setattr(module, name, nn.Parameter(old.new_empty(shape), requires_grad=old.requires_grad))
    fit_size_attributes(module)


def adopt_shapes(policy: nn.Module, saved: dict[str, tuple[int, ...]]) -> None:
    """Reshape `policy` (built from its config) to the saved weights' shapes; see the module docstring."""
    for name, module in list(policy.named_modules()):
        if f"{name}.first.weight" in saved and is_linear_like(module):
            rank, in_features = saved[f"{name}.first.weight"]
            out_features = saved[f"{name}.second.weight"][0]
            replace_module(policy, name, LowRankLinear(in_features, out_features, rank).to(module.weight.device))
    for name, module in policy.named_modules():
        own = {p: saved[f"{name}.{p}" if name else p] for p, _ in module.named_parameters(recurse=False)
               if (f"{name}.{p}" if name else p) in saved}
        if own:
            resize_parameters(module, own)
    sync_attention(policy)
    policy.structure_compressed = True


def adopt_saved_structure(policy: nn.Module, weights) -> None:
    """Reshape `policy` like the weights file `weights` if its header says it was structurally
    compressed (`adopt_shapes`), or give it the LoRA adapters it was saved with; leave it as
    built otherwise."""
    from ..checkpoint import STRUCTURE_KEY, file_metadata, tensor_shapes
    from ..models.finetune import adopt_lora_note

    note = file_metadata(weights).get(STRUCTURE_KEY)
    if adopt_lora_note(policy, note):
        return
    if note:
        adopt_shapes(policy, tensor_shapes(weights))
