"""Pretrained towers from local Hugging Face directories: a text encoder and a vision encoder.

`load_text_tower(value, key)` gives a `TextTower` (GPT-2, BERT/MiniLM, or CLIP's text
encoder) that turns instruction ids into one sentence vector; `load_vision_tower(value, key,
cell_size)` gives a `VisionTower` (ViT, or CLIP's vision encoder) that turns an image into
patch tokens. `value` is a directory (or a packaged model, `text.PACKAGED_MODELS`); ``key`` is
the config key that named it, for one-line errors.

Loading is offline and safe: ``local_files_only``, ``use_safetensors`` (a directory with only
a pickled ``pytorch_model.bin`` is refused) and never remote code. A directory whose model is
of another architecture, or whose weights do not fit its config, is a `ConfigError` naming
`key`.

A sentence vector is computed once per *distinct* instruction in a batch (`TextTower.forward`):
a batch of 128 envs holds a handful of missions, so a 6-layer MiniLM costs little more than a
lookup, and gradients still reach every use of each instruction.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..text import local_model_dir

# model_type -> (transformers class, its keyword arguments, the attribute holding the tower or None)
TEXT_CLASSES = {"gpt2": ("GPT2Model", {}, None), "bert": ("BertModel", {"add_pooling_layer": False}, None),
                "clip_text_model": ("CLIPTextModel", {}, None), "clip": ("CLIPModel", {}, "text_model")}
VISION_CLASSES = {"vit": ("ViTModel", {"add_pooling_layer": False}, None),
                  "clip_vision_model": ("CLIPVisionModel", {}, None), "clip": ("CLIPModel", {}, "vision_model")}
# Pixel normalisation each vision family was pretrained with (a preprocessor_config.json overrides).
PIXEL_STATS = {"vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
               "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))}


def model_kind(directory: Path, key: str, kinds: tuple[str, ...]) -> str:
    """The ``model_type`` of the Hugging Face model in `directory`; ConfigError unless it is one of `kinds`."""
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{key}: {directory} holds no config.json (not a Hugging Face model directory)")
    try:
        kind = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key}: {config_file} is not readable JSON ({e})") from None
    if kind not in kinds:
        raise ConfigError(f"{key}: {directory} holds a {kind!r} model; expected one of {', '.join(kinds)}")
    if not any(directory.glob("*.safetensors")):
        raise ConfigError(f"{key}: {directory} has no .safetensors weights (only safetensors are loaded, never pickles)")
    return kind


def from_pretrained(model_class, directory: Path, key: str, weights: str = "pretrained", **kwargs) -> nn.Module:
    """`model_class.from_pretrained` offline, safetensors only, no remote code, quietly; errors as
    one line. ``weights="random"``: the same architecture (its config.json) with fresh weights."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # no load report, no progress bar: the live view stays clean
    hf_logging.disable_progress_bar()
    try:
        on_meta = torch.get_default_device().type == "meta"  # pre-flight: shapes only, nothing loaded
        if weights == "random" or on_meta:
            config = AutoConfig.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
            model = model_class(config, **kwargs)
            if on_meta and weights != "random":
                check_saved_shapes(model, directory, key)
            return model
        return model_class.from_pretrained(str(directory), local_files_only=True, use_safetensors=True,
                                           trust_remote_code=False, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise ConfigError(f"{key}: the weights in {directory} do not load into its config ({str(e).splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def check_saved_shapes(model: nn.Module, directory: Path, key: str) -> None:
    """ConfigError unless the safetensors weights in `directory` have the shapes `model` (built
    from the directory's config) expects, for the tensors they share (names with or without the
    model's prefix); read from the file headers, nothing loaded."""
    from safetensors import safe_open

    saved = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            saved.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
    prefix = getattr(model, "base_model_prefix", "")
    matched = 0
    for name, tensor in model.state_dict().items():
        shape = saved.get(name, saved.get(f"{prefix}.{name}" if prefix else name))
        if shape is None:
            continue
        matched += 1
        if shape != tuple(tensor.shape):
            raise ConfigError(f"{key}: {name} has shape {list(shape)} in the weights of {directory} but its config "
                              f"makes {list(tensor.shape)}")
    if not matched:
        raise ConfigError(f"{key}: no tensor in the weights of {directory} belongs to its {type(model).__name__}")


def load_hf_tower(value: str, key: str, classes: dict, weights: str) -> tuple[Path, str, nn.Module]:
    """(directory, model_type, tower) of the local model `value` names, for one of `classes`."""
    import transformers

    directory = local_model_dir(value, key)
    kind = model_kind(directory, key, tuple(classes))
    class_name, kwargs, part = classes[kind]
    model = from_pretrained(getattr(transformers, class_name), directory, key, weights, **kwargs)
    return directory, kind, getattr(model, part) if part else model


class TextTower(nn.Module):
    """A pretrained text encoder: instruction ids (B, L) -> sentence vectors (B, width).

    GPT-2: the last real token's state (it has read the whole instruction); BERT/MiniLM: the
    mean of the token states (sentence-transformers' pooling, what MiniLM was trained for);
    CLIP: its pooled end-of-text state.
    """

    def __init__(self, model: nn.Module, kind: str, pad_id: int):
        super().__init__()
        self.model, self.kind, self.pad_id = model, kind, pad_id
        config = model.config
        self.width = getattr(config, "hidden_size", None) or config.n_embd

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Sentence vectors of distinct instructions (no de-duplication here)."""
        valid = ids != self.pad_id
        if self.kind == "clip":
            return self.model(input_ids=ids, attention_mask=valid.long()).pooler_output
        states = self.model(input_ids=ids, attention_mask=valid.long()).last_hidden_state
        if self.kind == "gpt2":
            last = (valid.sum(1) - 1).clamp(min=0)
            return states[torch.arange(len(ids), device=ids.device), last]
        mask = valid.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        distinct, index = torch.unique(ids, dim=0, return_inverse=True)
        frozen = not any(p.requires_grad for p in self.parameters())
        vectors = self.remembered(distinct) if frozen else self.encode(distinct)
        return vectors.index_select(0, index)

    def remembered(self, distinct: torch.Tensor) -> torch.Tensor:
        """A frozen tower is a fixed function of the ids: each instruction's vector is computed
        once and remembered (a task has a few hundred instructions at most)."""
        cache = self.__dict__.setdefault("_vectors", {})
        keys = [row.tobytes() for row in distinct.cpu().numpy()]
        missing = [i for i, k in enumerate(keys) if k not in cache]
        if missing:
            with torch.no_grad():
                new = self.encode(distinct[missing])
            cache.update(zip((keys[i] for i in missing), new))
        return torch.stack([cache[k] for k in keys]).to(distinct.device)


def load_text_tower(value: str, key: str, pad_id: int, weights: str = "pretrained") -> TextTower:
    """The pretrained text encoder `value` names (see the module docstring); ``weights="random"``:
    its architecture with fresh weights."""
    directory, kind, model = load_hf_tower(value, key, TEXT_CLASSES, weights)
    return TextTower(model, "clip" if kind.startswith("clip") else kind, pad_id)


class VisionTower(nn.Module):
    """A pretrained vision encoder split into its three steps, so the policy can condition the
    patch tokens on the instruction between embedding and the encoder layers:
    ``embed(pixels in [0, 1]) -> tokens (B, 1 + P, width)``, ``layers``, ``norm``.

    The image is scaled (nearest neighbour) so one env cell fills one pretrained patch, then
    normalised as the model was pretrained; position embeddings are interpolated to the grid.
    """

    def __init__(self, model: nn.Module, kind: str, cell_size: int, mean, std):
        super().__init__()
        self.model, self.kind = model, kind
        config = model.config
        self.width, self.patch_size = config.hidden_size, config.patch_size
        self.scale = self.patch_size / cell_size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.layers = model.layers if kind == "vit" else model.encoder.layers

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) floats in [0, 1] -> patch tokens with a leading class token."""
        if self.scale != 1:
            pixels = F.interpolate(pixels, scale_factor=self.scale, mode="nearest")
        tokens = self.model.embeddings((pixels - self.mean) / self.std, interpolate_pos_encoding=True)
        return tokens if self.kind == "vit" else self.model.pre_layrnorm(tokens)

    def run_layers(self, tokens: torch.Tensor) -> torch.Tensor:
        """The encoder layers over the tokens."""
        for layer in self.layers:
            tokens = layer(tokens) if self.kind == "vit" else layer(tokens, None)
        return tokens

    def norm(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final layer norm."""
        return self.model.layernorm(tokens) if self.kind == "vit" else self.model.post_layernorm(tokens)


def pixel_stats(directory: Path, family: str) -> tuple[tuple, tuple]:
    """Mean and std the model was pretrained with: its preprocessor_config.json, else the family's."""
    stats = PIXEL_STATS[family]
    processor = directory / "preprocessor_config.json"
    if processor.is_file():
        try:
            raw = json.loads(processor.read_text())
            stats = (tuple(raw.get("image_mean", stats[0])), tuple(raw.get("image_std", stats[1])))
        except (OSError, ValueError):
            pass
    return stats


def load_vision_tower(value: str, key: str, cell_size: int, channels: int, weights: str = "pretrained") -> VisionTower:
    """The pretrained vision encoder `value` names; `cell_size` is the env's pixels per cell;
    ``weights="random"``: its architecture with fresh weights."""
    directory, kind, model = load_hf_tower(value, key, VISION_CLASSES, weights)
    family = "vit" if kind == "vit" else "clip"
    if model.config.num_channels != channels:
        raise ConfigError(f"{key}: the model in {directory} reads {model.config.num_channels}-channel images, the env gives "
                          f"{channels} channels (a pretrained vision tower needs RGB pixels: data.image=pixels)")
    return VisionTower(model, family, cell_size, *pixel_stats(directory, family))
