"""Word-level instruction tokenizer that needs no download.

Known words (the built-in tasks' vocabulary and BabyAI's) get fixed ids; any other word is
hashed (crc32, stable across runs and machines) into a fixed set of buckets, so a gymnasium
env with free-form text missions still gets consistent token ids.
"""

from __future__ import annotations

import re
import zlib

import torch

PAD_ID = 0
COLORS = ("red", "green", "blue", "purple", "yellow", "grey")
OBJECT_TYPES = ("ball", "key", "box")
KNOWN_WORDS = (
    "<pad>", "go", "to", "the", "a", "then", "and", "after", "you", "pick", "up", "open",
    "put", "next", "door", "object", "get", "reach", "find", "on", "your", "left", "right",
    "in", "front", "of", "behind", ",",
    *COLORS, *OBJECT_TYPES,
)
VOCAB_SIZE = 128


class WordTokenizer:
    """Maps an instruction string to a fixed-length tensor of token ids (0 = padding)."""

    def __init__(self, max_tokens: int, vocab_size: int = VOCAB_SIZE):
        if vocab_size <= len(KNOWN_WORDS):
            raise ValueError(f"vocab_size must exceed {len(KNOWN_WORDS)} known words")
        self.max_tokens = max_tokens
        self.vocab_size = vocab_size
        self.word_to_id = {word: i for i, word in enumerate(KNOWN_WORDS)}

    def token_id(self, word: str) -> int:
        """Id of one word: its fixed id if known, else a stable hash bucket."""
        if word in self.word_to_id:
            return self.word_to_id[word]
        buckets = self.vocab_size - len(KNOWN_WORDS)
        return len(KNOWN_WORDS) + zlib.crc32(word.encode()) % buckets

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, truncated or right-padded with 0 to `max_tokens`."""
        words = re.findall(r"[a-z]+|,", text.lower())
        ids = [self.token_id(w) for w in words][: self.max_tokens]
        return ids + [PAD_ID] * (self.max_tokens - len(ids))

    def encode_batch(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), max_tokens) int64 tensor of token ids."""
        return torch.tensor([self.encode(t) for t in texts], dtype=torch.int64)

    def decode(self, ids) -> str:
        """Readable text of token ids (hashed words come back as `<wN>`)."""
        words = []
        for i in (int(x) for x in ids):
            if i == PAD_ID:
                continue
            words.append(KNOWN_WORDS[i] if i < len(KNOWN_WORDS) else f"<w{i}>")
        return " ".join(words)
