"""Small offline datasets used by the demos, calibration and fidelity measurements.

English text comes from two sources shipped with this package or Python itself, so nothing is ever
downloaded: ``everyday_english.txt`` (general sentences written for slimgraph) and prose sentences
extracted from CPython's bundled documentation topics (``pydoc_data``). Each source is split
deterministically: every fourth sentence is held out for evaluation and never used for calibration
or distillation.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

HELDOUT_EVERY = 4


@lru_cache(maxsize=1)
def _everyday() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("everyday_english.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@lru_cache(maxsize=1)
def _python_docs() -> tuple[str, ...]:
    try:
        import pydoc_data.topics as topics
    except ImportError:  # some minimal Python builds drop pydoc_data
        return ()
    text = re.sub(r"\s+", " ", " ".join(topics.topics.values()))
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)
    keep = []
    for s in sentences:
        s = s.strip()
        # plain prose only: no code, markup, version tables or long numbers
        if 50 < len(s) < 220 and s[0].isupper() and s.count('"') <= 2 and not re.search(
            r"[{}\[\]=<>*_|#@$\\]|\.\.\.|::|\d\d|-->", s
        ):
            keep.append(s)
    return tuple(dict.fromkeys(keep))  # drop repeats, keep order


def english_sentences(split: str = "train") -> list[str]:
    """English sentences: ``split`` is "train" (calibration/distillation), "heldout" or "all"."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    out: list[str] = []
    for source in (_everyday(), _python_docs()):
        for i, s in enumerate(source):
            held = i % HELDOUT_EVERY == HELDOUT_EVERY - 1
            if split == "all" or (split == "heldout") == held:
                out.append(s)
    return out
