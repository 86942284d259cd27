"""Structured pruning: remove whole units (MLP neurons, attention heads, conv channels) so the
matrices really shrink, and inference gets faster (masking alone saves neither time nor memory).

A `UnitGroup` is a set of units that are removed together from every tensor they touch: the
layer that *produces* unit i (its output rows, bias entries) and every layer that *consumes* it
(its input columns). For an attention head the unit is a block of `head_dim` rows of q, k and v
and the matching columns of the output projection. A unit's importance is the L2 norm of all the
weights it touches; each group keeps its ``1 - amount`` most important units (at least one).

Which groups a policy has is written down per model class in `GROUPS` (a plain dict): the
shapes of these models are known, so no tracing is needed. Removing a unit gives exactly the
outputs of the dense model with that unit's weights set to zero (`mask_units`), which the tests
check.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

from .structure import resize_parameters, sync_attention

# A tensor a group touches: (parameter name, axis, positions of unit i along that axis).
Touch = tuple[str, int, Callable[[int], list[int]]]


@dataclasses.dataclass
class UnitGroup:
    """Units removed together (see the module docstring)."""

    name: str
    size: int  # units in the group
    touches: list[Touch]

    def positions(self, units: list[int], touch: Touch) -> list[int]:
        """Indices along `touch`'s axis that belong to `units`."""
        return [p for u in units for p in touch[2](u)]


def one(u: int) -> list[int]:
    """Unit i is index i."""
    return [u]


def block(width: int, copies: int = 1, stride: int = 0) -> Callable[[int], list[int]]:
    """Unit i is the block [i*width, (i+1)*width), repeated `copies` times `stride` apart (q|k|v)."""
    return lambda u: [c * stride + u * width + j for c in range(copies) for j in range(width)]


def linear_chain(first: str, consumers: list[str], size: int) -> UnitGroup:
    """Neurons of Linear layer `first` (output rows) feeding Linear layers `consumers` (input columns)."""
    touches = [(f"{first}.weight", 0, one), (f"{first}.bias", 0, one)]
    touches += [(f"{c}.weight", 1, one) for c in consumers]
    return UnitGroup(f"{first} neurons", size, touches)


def head_mlp_groups(policy) -> list[UnitGroup]:
    """Hidden neurons of separate actor/critic MLPs (`ActorCriticHeads` with hidden widths)."""
    groups = []
    for branch in ("actor", "critic"):
        layers = getattr(policy.heads, branch)
        if not isinstance(layers, nn.Sequential):
            continue
        linears = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
        for a, b in zip(linears, linears[1:]):
            groups.append(linear_chain(f"heads.{branch}.{a}", [f"heads.{branch}.{b}"], layers[a].out_features))
    return groups


def head_inputs(policy) -> list[str]:
    """The first Linear layer(s) of the actor and critic: what the trunk's last layer feeds."""
    names = []
    for branch in ("actor", "critic"):
        layers = getattr(policy.heads, branch)
        names.append(f"heads.{branch}.0" if isinstance(layers, nn.Sequential) else f"heads.{branch}")
    return names


def trunk_groups(policy) -> list[UnitGroup]:
    """Neurons of each hidden layer of the trunk MLP (each feeds the next, the last feeds the heads)."""
    linears = [i for i, m in enumerate(policy.trunk) if isinstance(m, nn.Linear)]
    groups = []
    for position, i in enumerate(linears):
        consumers = [f"trunk.{linears[position + 1]}"] if position + 1 < len(linears) else head_inputs(policy)
        groups.append(linear_chain(f"trunk.{i}", consumers, policy.trunk[i].out_features))
    return groups + head_mlp_groups(policy)


def residual_group(policy) -> UnitGroup:
    """The channels of the transformers' residual stream (their width d), shared by ViT and GPT-2:
    every embedding, norm and projection that reads or writes it, FiLM, and the readout's inputs.
    Unlike the other groups this changes LayerNorm statistics (fine-tuning recovers)."""
    d = policy.vit.layernorm.weight.shape[0]
    vector = lambda name, axis=0: (name, axis, one)  # noqa: E731
    touches = [vector("vit.embeddings.cls_token", 2), vector("vit.embeddings.position_embeddings", 2),
               vector("vit.embeddings.patch_embeddings.projection.weight"), vector("vit.embeddings.patch_embeddings.projection.bias"),
               vector("vit.layernorm.weight"), vector("vit.layernorm.bias")]
    for i in range(len(policy.vit.layers)):
        p = f"vit.layers.{i}"
        touches += [vector(f"{p}.{n}.{t}") for n in ("layernorm_before", "layernorm_after") for t in ("weight", "bias")]
        touches += [vector(f"{p}.attention.{n}.weight", 1) for n in ("q_proj", "k_proj", "v_proj")]
        touches += [vector(f"{p}.attention.o_proj.weight"), vector(f"{p}.attention.o_proj.bias"),
                    vector(f"{p}.mlp.fc1.weight", 1), vector(f"{p}.mlp.fc2.weight"), vector(f"{p}.mlp.fc2.bias")]
    if policy.gpt is not None:
        touches += [vector("gpt.wte.weight", 1), vector("gpt.wpe.weight", 1), vector("gpt.ln_f.weight"), vector("gpt.ln_f.bias")]
        for i in range(len(policy.gpt.h)):
            p = f"gpt.h.{i}"
            touches += [vector(f"{p}.{n}.{t}") for n in ("ln_1", "ln_2", "ln_cross_attn") for t in ("weight", "bias")]
            for attn in ("attn", "crossattention"):  # Conv1D weights are (in, out)
                touches += [vector(f"{p}.{attn}.c_attn.weight"), vector(f"{p}.{attn}.c_proj.weight", 1),
                            vector(f"{p}.{attn}.c_proj.bias")]
            touches += [vector(f"{p}.crossattention.q_attn.weight"), vector(f"{p}.mlp.c_fc.weight"),
                        vector(f"{p}.mlp.c_proj.weight", 1), vector(f"{p}.mlp.c_proj.bias")]
        film = block(1, 2, d)  # FiLM's output is [scale (d), shift (d)]
        touches += [("film.weight", 1, one), ("film.weight", 0, film), ("film.bias", 0, film)]
    keypoints, channels = policy.keypoints.out_features, policy.neighbourhood.out_channels
    touches += [vector("keypoints.weight", 1), vector("neighbourhood.weight", 1),
                ("trunk.0.weight", 1, lambda u: [2 * keypoints + keypoints * channels + u])]  # the mean patch state
    return UnitGroup("residual channels", d, touches)


def vit_gpt2_groups(policy) -> list[UnitGroup]:
    """Heads and MLP neurons of every ViT and GPT-2 layer, the neighbourhood conv's channels, the
    trunk; with the spatial readout also the residual channels (`residual_group`)."""
    groups = [residual_group(policy)] if policy.readout == "spatial" else []
    for i, layer in enumerate(policy.vit.layers):
        p, attention = f"vit.layers.{i}", layer.attention
        hd = attention.head_dim
        heads = attention.q_proj.out_features // hd
        touches = [(f"{p}.attention.{n}.{t}", 0, block(hd)) for n in ("q_proj", "k_proj", "v_proj") for t in ("weight", "bias")]
        groups.append(UnitGroup(f"{p} heads", heads, touches + [(f"{p}.attention.o_proj.weight", 1, block(hd))]))
        groups.append(linear_chain(f"{p}.mlp.fc1", [f"{p}.mlp.fc2"], layer.mlp.fc1.out_features))
    for i, block_ in enumerate(policy.gpt.h if policy.gpt is not None else []):
        p = f"gpt.h.{i}"
        for attn, projections in (("attn", 3), ("crossattention", 2)):
            module = getattr(block_, attn, None)
            if module is None:
                continue
            hd, width = module.head_dim, module.split_size
            qkv = block(hd, projections, width)  # Conv1D weights are (in, out): units are columns
            touches = [(f"{p}.{attn}.c_attn.weight", 1, qkv), (f"{p}.{attn}.c_attn.bias", 0, qkv),
                       (f"{p}.{attn}.c_proj.weight", 0, block(hd))]
            if attn == "crossattention":
                touches += [(f"{p}.{attn}.q_attn.weight", 1, block(hd)), (f"{p}.{attn}.q_attn.bias", 0, block(hd))]
            groups.append(UnitGroup(f"{p}.{attn} heads", width // hd, touches))
        fc = block_.mlp.c_fc
        groups.append(UnitGroup(f"{p}.mlp neurons", fc.nf, [(f"{p}.mlp.c_fc.weight", 1, one), (f"{p}.mlp.c_fc.bias", 0, one),
                                                             (f"{p}.mlp.c_proj.weight", 0, one)]))
    if policy.readout in ("spatial", "both"):
        # Trunk input layout: [coords (2K), K blocks of neighbourhood channels (C each), mean patch (d), ...]
        keypoints, channels = policy.keypoints.out_features, policy.neighbourhood.out_channels
        at_keypoints = lambda u: [2 * keypoints + k * channels + u for k in range(keypoints)]  # noqa: E731
        groups.append(UnitGroup("neighbourhood channels", channels, [
            ("neighbourhood.weight", 0, one), ("neighbourhood.bias", 0, one), ("trunk.0.weight", 1, at_keypoints)]))
    return groups + trunk_groups(policy)


def cnn_groups(policy) -> list[UnitGroup]:
    """Channels of each conv layer (the last one's feed the trunk as channel-major blocks), the trunk."""
    convs = [i for i, m in enumerate(policy.conv) if isinstance(m, nn.Conv2d)]
    groups = []
    for position, i in enumerate(convs):
        conv = policy.conv[i]
        touches = [(f"conv.{i}.weight", 0, one), (f"conv.{i}.bias", 0, one)]
        if position + 1 < len(convs):
            touches.append((f"conv.{convs[position + 1]}.weight", 1, one))
        else:
            spatial = policy.conv_spatial  # H x W of the last conv's output
            touches.append(("trunk.0.weight", 1, block(spatial)))
        groups.append(UnitGroup(f"conv.{i} channels", conv.out_channels, touches))
    return groups + trunk_groups(policy)


def mlp_groups(policy) -> list[UnitGroup]:
    """Neurons of each paired hidden layer of the MLP policy (actor and critic lose the same
    indices: the pair is one tensor of shape (2, in, out)); the last layer feeds both heads."""
    groups = []
    for i, layer in enumerate(policy.layers):
        consumers = [(f"layers.{i + 1}.weight", 1, one)] if i + 1 < len(policy.layers) else \
            [("heads.actor.weight", 1, one), ("heads.critic.weight", 1, one)]
        groups.append(UnitGroup(f"layers.{i} neurons", layer.weight.shape[2],
                                [(f"layers.{i}.weight", 2, one), (f"layers.{i}.bias", 2, one), *consumers]))
    return groups


def groups_of(policy: nn.Module) -> list[UnitGroup]:
    """The prunable unit groups of `policy`; ValueError for a model class without any."""
    from ..models.cnn import CnnPolicy
    from ..models.mlp import MlpPolicy
    from ..models.vit_gpt2 import VitGpt2Policy

    finders = {VitGpt2Policy: vit_gpt2_groups, CnnPolicy: cnn_groups, MlpPolicy: mlp_groups}
    finder = finders.get(type(policy))
    if finder is None:
        raise ValueError(f"structured pruning supports {', '.join(c.__name__ for c in finders)}, not {type(policy).__name__}")
    return finder(policy)


def importance(params: dict[str, torch.Tensor], group: UnitGroup) -> torch.Tensor:
    """L2 norm of every weight each unit touches."""
    squares = torch.zeros(group.size)
    for touch in group.touches:
        name, axis, _ = touch
        tensor = params[name].detach().float().cpu()
        per_index = tensor.square().sum(dim=[d for d in range(tensor.dim()) if d != axis]) if tensor.dim() > 1 else tensor.square()
        for u in range(group.size):
            squares[u] += per_index[group.positions([u], touch)].sum()
    return squares.sqrt()


def units_to_keep(params: dict[str, torch.Tensor], group: UnitGroup, amount: float) -> list[int]:
    """The ``1 - amount`` most important units of `group` (at least one), in their original order."""
    keep = max(1, group.size - math.floor(amount * group.size))
    return sorted(torch.topk(importance(params, group), keep).indices.tolist())


def mask_units(policy: nn.Module, group: UnitGroup, keep: list[int]) -> None:
    """Zero every weight of the units not in `keep` (the dense equivalent of removing them)."""
    params = dict(policy.named_parameters())
    dropped = [u for u in range(group.size) if u not in keep]
    with torch.no_grad():
        for touch in group.touches:
            name, axis, _ = touch
            index = torch.tensor(group.positions(dropped, touch), dtype=torch.long, device=params[name].device)
            params[name].index_fill_(axis, index, 0.0)


def remove_units(policy: nn.Module, group: UnitGroup, keep: list[int]) -> None:
    """Physically remove the units not in `keep`: every touched tensor keeps only their positions."""
    for touch in group.touches:
        name, axis, _ = touch
        module_name, _, param_name = name.rpartition(".")
        module = policy.get_submodule(module_name)
        old = getattr(module, param_name)
        dropped = set(group.positions([u for u in range(group.size) if u not in keep], touch))
        kept = [p for p in range(old.shape[axis]) if p not in dropped]
        index = torch.tensor(kept, dtype=torch.long, device=old.device)
        setattr(module, param_name, nn.Parameter(old.detach().index_select(axis, index).clone(), requires_grad=old.requires_grad))
        resize_parameters(module, {})  # size attributes follow the weight


def prune_structured(policy: nn.Module, amount: float) -> list[dict]:
    """Remove `amount` of the units of every group of `policy` (lowest L2 norm first); one row per group."""
    rows = []
    for name in [g.name for g in groups_of(policy)]:
        # Groups are described afresh each time: an earlier removal changes the sizes a later one sees.
        group = next(g for g in groups_of(policy) if g.name == name)
        keep = units_to_keep(dict(policy.named_parameters()), group, amount)
        remove_units(policy, group, keep)
        sync_attention(policy)
        rows.append({"group": name, "units": group.size, "kept": len(keep)})
    policy.structure_compressed = True
    return rows
