"""Small offline datasets used by the demos, calibration and fidelity measurements.

English text comes from sources shipped with this package or Python itself, so nothing is ever
downloaded: ``everyday_english.txt`` (general sentences written for slimgraph), prose sentences from
CPython's bundled documentation topics (``pydoc_data``), and, for training only, prose sentences from the
docstrings of the Python standard library. The first two are split deterministically (every fourth
sentence is held out for evaluation and never used for calibration or distillation); the docstrings only
ever feed the "train" split, so distillation sees thousands of distinct sentences instead of a few hundred
while the held-out set stays the same.
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


_PROSE_JUNK = re.compile(r"[{}\[\]=<>*_|#@$\\`]|\.\.\.|::|\d\d|-->|\(\)")


@lru_cache(maxsize=1)
def _stdlib_docstrings() -> tuple[str, ...]:
    """Prose sentences of the standard library's docstrings (parsed, never imported; ~3 s, cached)."""
    import ast
    import os
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    skip = {"test", "tests", "idlelib", "site-packages", "lib2to3", "ensurepip", "turtledemo", "__pycache__"}
    found: dict[str, None] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for name in sorted(f for f in files if f.endswith(".py")):
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", re.sub(r"\s+", " ", doc)):
                            s = s.strip()
                            if 40 < len(s) < 200 and s[0].isupper() and s.count('"') <= 2 and not _PROSE_JUNK.search(s):
                                found[s] = None
    return tuple(found)


def english_sentences(split: str = "train", *, extra_training_text: bool = True) -> list[str]:
    """English sentences: ``split`` is "train" (calibration/distillation), "heldout" or "all".

    ``extra_training_text`` adds the standard-library docstring sentences to "train" (and "all").
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    out: list[str] = []
    for source in (_everyday(), _python_docs()):
        for i, s in enumerate(source):
            held = i % HELDOUT_EVERY == HELDOUT_EVERY - 1
            if split == "all" or (split == "heldout") == held:
                out.append(s)
    if split != "heldout" and extra_training_text:
        held = set(english_sentences("heldout"))
        out.extend(s for s in _stdlib_docstrings() if s not in held)
    return out
