"""The activation epilogue every kernel and op shares: one table of names, the torch reference, and its Triton twin.

Kernels fuse ``act(y)`` into their epilogue as the compile-time code ``ACTIVATION_CODES[name]``
(:func:`apply_activation_tl` on an fp32 tile); references and graph ops call :func:`apply_activation`. The two must
agree to float32 rounding, which the kernel tests check for every name.

(The graph-level ops ``slimgraph::linear_act`` / ``conv_act`` that once lived here are in
:mod:`slimgraph.ops.epilogue`.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..errors import InputError

__all__ = ["ACTIVATIONS", "ACTIVATION_CODES", "activation_code", "apply_activation", "apply_activation_tl",
           "check_activation"]

ACTIVATIONS = ("none", "relu", "relu6", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "hardswish")
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}


_TORCH_ACTIVATIONS = {
    "none": lambda y: y,
    "relu": torch.relu,
    "relu6": lambda y: torch.clamp(y, 0.0, 6.0),
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hardswish": F.hardswish,
}
assert tuple(_TORCH_ACTIVATIONS) == ACTIVATIONS, "every activation needs its torch reference"


def apply_activation(y: torch.Tensor, act: str | None) -> torch.Tensor:
    """Reference activation epilogue; ``act`` is one of :data:`ACTIVATIONS` (None means "none")."""
    return _TORCH_ACTIVATIONS[check_activation(act)](y)


def check_activation(act: str | None) -> str:
    act = "none" if act is None else act
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")
    return act


def activation_code(op: str, act: str | None) -> int:
    """Validate an activation name (None means "none") and return its compile-time code for the kernels."""
    try:
        return ACTIVATION_CODES[check_activation(act)]
    except ValueError as err:
        raise InputError(f"{op}: {err}") from None


@triton.jit
def _tanh(x):
    # tl.math has no tanh in every Triton we support; this form never overflows (exp of a non-positive number).
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def apply_activation_tl(y, ACT: tl.constexpr):
    """Triton twin of :func:`apply_activation` on an fp32 tile; ``ACT`` is an ACTIVATION_CODES value."""
    if ACT == 1:  # relu
        y = tl.maximum(y, 0.0)
    elif ACT == 2:  # relu6
        y = tl.minimum(tl.maximum(y, 0.0), 6.0)
    elif ACT == 3:  # gelu (erf form, as F.gelu)
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    elif ACT == 4:  # gelu_tanh
        y = 0.5 * y * (1.0 + _tanh(0.7978845608028654 * (y + 0.044715 * y * y * y)))
    elif ACT == 5:  # silu
        y = y * tl.sigmoid(y)
    elif ACT == 6:  # sigmoid
        y = tl.sigmoid(y)
    elif ACT == 7:  # tanh
        y = _tanh(y)
    elif ACT == 8:  # hardswish
        y = y * tl.minimum(tl.maximum(y + 3.0, 0.0), 6.0) / 6.0
    return y


# The jit body above spells the codes as literals (constexpr comparisons must fold at compile time); this keeps the
# literals honest if ACTIVATIONS is ever reordered.
_CODED = ("relu", "relu6", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "hardswish")
assert [ACTIVATION_CODES[n] for n in _CODED] == list(range(1, 9)), "ACTIVATIONS reordered: update apply_activation_tl"
