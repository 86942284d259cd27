"""How the built-in task words its instructions: one fixed wording, or paraphrases with held-out ones.

``data.wordings=fixed`` (the default): every instruction is "go to the <colour> <object>".
``data.wordings=paraphrase``: training levels are worded with `TRAIN_TEMPLATES` and the
training synonyms of each object; the ``new-wordings`` split words held-out levels with
`HELDOUT_TEMPLATES` and the held-out synonyms (of objects, and of some colours), none of which a
training instruction ever contains; so ``mmrl eval split=new-wordings`` measures whether a
policy understands instructions phrased in ways it was never trained on. The canonical colour
and object words (red, ball, ...) appear in both: they are the task.

``data.wordings=synonyms``: the same training wordings; in ``new-wordings`` *every* colour and
object is named by a word no training instruction contains (`NEW_WORD_SYNONYMS`: "the cherry
globe", "the navy latchkey"), so no canonical word gives the target away: only a text encoder
that already knows these words (a pretrained one) can tell the target from the distractors.

A level's wording is a stateless function of its level id (`wording_index`), like its layout.
"""

from __future__ import annotations

import itertools

COLORS = ("red", "green", "blue", "purple", "yellow", "grey")
OBJECT_TYPES = ("ball", "key", "box")
WORDINGS = ("fixed", "paraphrase", "synonyms")

FIXED_TEMPLATE = "go to the {color} {object}"
TRAIN_TEMPLATES = (
    FIXED_TEMPLATE,
    "find the {color} {object}",
    "walk over to the {color} {object}",
    "move to the {object} that is {color}",
    "get to the {color} {object}",
    "head for the {color} {object}",
    "the {color} {object} is your goal",
)
HELDOUT_TEMPLATES = (
    "navigate towards the {color} {object}",
    "approach the {object} which is {color}",
    "your target is the {color} {object}",
    "reach the {color} {object}",
    "touch the {object} that is {color}",
)
# Other words for an object or colour: those in training instructions, and those held out.
TRAIN_SYNONYMS = {"ball": ("sphere",), "box": ("crate",)}
HELDOUT_SYNONYMS = {"ball": ("orb",), "box": ("chest",), "red": ("crimson",), "purple": ("violet",), "grey": ("gray",)}
# ``wordings=synonyms``: held-out words for every colour and object (the only words of new-wordings).
# Picked from dictionary synonyms as the two (per word) that the pretrained MiniLM relates best to
# the canonical word (`scripts/bench_transfer.py --part probe`); yellow has none it relates well.
NEW_WORD_SYNONYMS = {
    "red": ("crimson", "cherry"), "green": ("olive", "lime"), "blue": ("navy", "cerulean"),
    "purple": ("violet", "lavender"), "yellow": ("canary", "golden"), "grey": ("gray", "silver"),
    "ball": ("orb", "globe"), "key": ("latchkey", "passkey"), "box": ("chest", "container"),
}


def held_out_synonyms(wordings: str) -> dict[str, tuple[str, ...]]:
    """The held-out words of a wordings mode, by the colour or object they stand for."""
    return NEW_WORD_SYNONYMS if wordings == "synonyms" else HELDOUT_SYNONYMS


def object_words(word: str, held_out: bool, wordings: str) -> tuple[str, ...]:
    """The words an instruction may use for an object type: training (the word and its training
    synonyms) or held out (its held-out synonyms, or the word itself when it has none)."""
    if held_out:
        return held_out_synonyms(wordings).get(word, (word,))
    return (word, *TRAIN_SYNONYMS.get(word, ()))


def color_words(color: str, held_out: bool, wordings: str) -> tuple[str, ...]:
    """The words an instruction may use for a colour: training (the colour), held out under
    ``paraphrase`` (the colour and its held-out synonyms) or under ``synonyms`` (the synonyms only)."""
    if not held_out:
        return (color,)
    synonyms = held_out_synonyms(wordings).get(color, ())
    return synonyms if wordings == "synonyms" else (color, *synonyms)


def instructions(wordings: str, held_out: bool, color: str, object_type: str) -> list[str]:
    """Every wording of "go to the `color` `object_type`" in a set: fixed, training paraphrases,
    or held-out paraphrases (`held_out`), in a fixed order."""
    if wordings == "fixed":
        return [FIXED_TEMPLATE.format(color=color, object=object_type)]
    templates = HELDOUT_TEMPLATES if held_out else TRAIN_TEMPLATES
    return [template.format(color=c, object=o)
            for template, o, c in itertools.product(templates, object_words(object_type, held_out, wordings),
                                                      color_words(color, held_out, wordings))]


def variant_count(wordings: str, held_out: bool) -> int:
    """How many wordings each object kind has in a set (the same for every kind: see `table`)."""
    return max(len(instructions(wordings, held_out, c, o)) for c in COLORS for o in OBJECT_TYPES)


def table(wordings: str, held_out: bool) -> list[list[str]]:
    """[variant][kind] instruction texts, kinds in the env's order (type-major, then colour); a kind
    with fewer wordings than the most repeats its own cyclically, so every row is full."""
    count = variant_count(wordings, held_out)
    kinds = [instructions(wordings, held_out, color, object_type) for object_type in OBJECT_TYPES for color in COLORS]
    return [[texts[v % len(texts)] for texts in kinds] for v in range(count)]


def all_instructions(wordings: str) -> list[str]:
    """Every instruction the task can give under `wordings` (training and held out)."""
    return sorted({text for held_out in (False, True) for row in table(wordings, held_out) for text in row})
