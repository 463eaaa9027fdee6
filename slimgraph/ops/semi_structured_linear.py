"""``slimgraph::semi_structured_linear``: ``act(x @ W.T + bias)`` with a 2:4-sparse ``W`` on sparse tensor cores.

    W [N, K] (2 of every 4 along K non-zero) --to_semi_structured-->  packed [N, K/2], meta int16 (CUTLASS layout)

``packed`` and ``meta`` are plain tensors (graph attributes), produced by torch's own pure-torch CUTLASS packing, the
one ``torch.sparse.to_sparse_semi_structured`` uses on its CUTLASS path. On CUDA the op calls
``torch._sparse_semi_structured_linear`` (CUTLASS 2:4 GEMM; fp16/bf16; N a multiple of 32 and K of 64); anywhere
else it unpacks ``W`` with torch's inverse conversion and runs the dense GEMM, so a lowered graph still runs on CPU.
Cost: ``rows x N x K / 2`` MACs. No ONNX translation: export the dense 2:4 model (``lower="off"``) instead, whose
zeros TensorRT's own 2:4 kernels find. Only an NVIDIA GPU can exercise the fast path (tests skip it elsewhere).
"""

from __future__ import annotations

from math import prod

import torch
import torch.nn.functional as F
from torch.sparse._semi_structured_conversions import (
    sparse_semi_structured_from_dense_cutlass,
    sparse_semi_structured_to_dense_cutlass,
)

from ..errors import InputError
from ..ir.cost import register_macs
from ..kernels.epilogue import ACTIVATIONS, apply_activation

__all__ = ["semi_structured_problem", "to_semi_structured"]

OP = "semi_structured_linear"
DTYPES = (torch.float16, torch.bfloat16)
MIN_ROWS, MIN_COLS, X_ROWS = 32, 64, 8  # CUTLASS fp16/bf16 tile constraints (weight rows, weight cols, input rows)


def semi_structured_problem(w: torch.Tensor) -> str:
    """Why ``w`` cannot run on the 2:4 tensor-core path ("" when it can)."""
    if w.device.type != "cuda":
        return "2:4 tensor cores need an NVIDIA GPU"
    if w.dtype not in DTYPES:
        return f"2:4 tensor cores take fp16/bf16 weights, this one is {str(w.dtype).removeprefix('torch.')}"
    n, k = w.shape
    if n % MIN_ROWS or k % MIN_COLS:
        return f"2:4 kernels need N % {MIN_ROWS} == 0 and K % {MIN_COLS} == 0, got [{n}, {k}]"
    return ""


def to_semi_structured(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed [N, K/2], meta) of a 2:4-sparse fp16/bf16 weight (every group of 4 along K holds at most 2 non-zeros)."""
    if w.dim() != 2 or w.dtype not in DTYPES:
        raise InputError(f"to_semi_structured: needs a 2-D fp16/bf16 weight, got {tuple(w.shape)} {w.dtype}")
    return sparse_semi_structured_from_dense_cutlass(w.detach().contiguous())


def _check(x, packed, meta, n: int, k: int, bias, activation: str) -> None:
    if x.dtype != packed.dtype or packed.dtype not in DTYPES:
        raise InputError(f"{OP}: x ({x.dtype}) and the packed weight ({packed.dtype}) must share fp16 or bf16")
    if packed.shape != (n, k // 2) or x.shape[-1] != k:
        raise InputError(f"{OP}: packed weight {tuple(packed.shape)} and x {tuple(x.shape)} do not fit a [{n}, {k}] "
                         "weight")
    if bias is not None and bias.shape != (n,):
        raise InputError(f"{OP}: bias must be [{n}], got {tuple(bias.shape)}")
    if activation not in ACTIVATIONS:
        raise InputError(f"{OP}: unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")


@torch.library.custom_op(
    "slimgraph::semi_structured_linear",
    mutates_args=(),
    schema="(Tensor x, Tensor packed, Tensor meta, int n, int k, Tensor? bias, str activation) -> Tensor",
)
def _semi_structured_linear_op(x, packed, meta, n, k, bias, activation):
    _check(x, packed, meta, n, k, bias, activation)
    x2 = x.reshape(-1, k)
    rows = x2.shape[0]
    if x.device.type == "cuda":
        pad = -rows % X_ROWS  # the kernel's input tile: pad rows, drop them after
        y = torch._sparse_semi_structured_linear(F.pad(x2, (0, 0, 0, pad)), packed, meta, bias=bias)[:rows]
    else:
        y = F.linear(x2, sparse_semi_structured_to_dense_cutlass(packed, meta), bias)
    return apply_activation(y, activation).contiguous().reshape(*x.shape[:-1], n)


@_semi_structured_linear_op.register_fake
def _(x, packed, meta, n, k, bias, activation):
    _check(x, packed, meta, n, k, bias, activation)
    return x.new_empty((*x.shape[:-1], n))


@register_macs(torch.ops.slimgraph.semi_structured_linear.default)
def _semi_structured_macs(ins, out) -> int:
    """Half the dense GEMM: the tensor cores skip the two zeros of every four."""
    x, packed = ins[0], ins[1]
    return 0 if x is None or packed is None else prod(x[:-1]) * packed[0] * packed[1]
