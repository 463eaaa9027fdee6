"""W8A8 GEMMs: int8 activations x int8 weights, dequantize + bias + activation in the GEMM epilogue.

    qlinear_static(q, s, w, ws, b, act, out_scale?, dtype)  one activation scale; out_scale given: the epilogue
                                                            requantizes (int8 out)
    qlinear_dynamic(q, s_rows, w, ws, b, act, dtype)        one scale per row (dynamic_quantize_per_token)
    qmatmul_dynamic(a, b)                                   both operands activations (attention), per-token

Implementations, in order: on CPU oneDNN's int8 GEMM where the CPU has it (:mod:`slimgraph.quant.cpu_int8`),
else :func:`slimgraph.kernels.int8_matmul` (the Triton kernel on CUDA and under ``TRITON_INTERPRET=1``, its torch
reference elsewhere). Weights are real int8 ``[N, K]`` tensors with float32 per-output-channel scales. Fake
implementations give shapes to torch.compile / torch.export; MACs rules count the GEMMs in reports. ONNX
translations: :mod:`slimgraph.quant.onnx_ops`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..ir.cost import linear_macs, matmul_macs, register_macs
from ..kernels.int8_matmul import int8_matmul
from ..kernels.quantize import quantize_per_token
from .quantize import requantize

__all__ = ["QLINEAR_ARGS", "cpu_int8_backend"]

QLINEAR_ARGS = "Tensor x, Tensor x_scale, Tensor w, Tensor w_scale, Tensor? bias, str act"


def cpu_int8_backend():
    """:mod:`slimgraph.quant.cpu_int8`, imported on first call: it lives in ``quant``, a layer above ``ops`` whose
    package imports this one, so a module-level import here could run into a half-initialized ``quant``."""
    from ..quant import cpu_int8

    return cpu_int8


@torch.library.custom_op("slimgraph::qlinear_static", mutates_args=(),
                         schema=f"({QLINEAR_ARGS}, Tensor? out_scale, ScalarType out_dtype) -> Tensor")
def _qlinear_static(x, x_scale, w, w_scale, bias, act, out_scale, out_dtype):
    y = cpu_int8_backend().qlinear(x, x_scale, w, w_scale, bias, act, out_scale, out_dtype)
    if y is not None:
        return y
    dtype = out_dtype if out_scale is None else torch.float32
    y = int8_matmul(x.contiguous(), w, x_scale.reshape(1), w_scale, bias, act, dtype)
    return requantize(y, out_scale, out_dtype)


@_qlinear_static.register_fake
def _(x, x_scale, w, w_scale, bias, act, out_scale, out_dtype):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=out_dtype if out_scale is None else torch.int8)


@torch.library.custom_op("slimgraph::qlinear_dynamic", mutates_args=(),
                         schema=f"({QLINEAR_ARGS}, ScalarType out_dtype) -> Tensor")
def _qlinear_dynamic(x, x_scale, w, w_scale, bias, act, out_dtype):
    y = cpu_int8_backend().qlinear(x, x_scale, w, w_scale, bias, act, None, out_dtype, per_row=True)
    if y is not None:
        return y
    return int8_matmul(x.contiguous(), w, x_scale.contiguous(), w_scale, bias, act, out_dtype)


@_qlinear_dynamic.register_fake
def _(x, x_scale, w, w_scale, bias, act, out_dtype):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=out_dtype)


def _quantize_columns(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column quantization of the right operand (reduce over its K dim, -2)."""
    q, scale = quantize_per_token(b.transpose(-1, -2).contiguous())
    return q.transpose(-1, -2), scale


@torch.library.custom_op("slimgraph::qmatmul_dynamic", mutates_args=(), schema="(Tensor a, Tensor b) -> Tensor")
def _qmatmul_dynamic(a, b):
    qa, sa = quantize_per_token(a.contiguous())
    qb, sb = _quantize_columns(b)
    k = a.shape[-1]
    # No batched int8 kernel yet: integer products summed in a float type that holds them exactly
    # (fp32 while K * 127 * 127 < 2**24, i.e. K <= 1040; fp64 beyond).
    exact = torch.float32 if k * 127 * 127 < 2**24 else torch.float64
    acc = torch.matmul(qa.to(exact), qb.to(exact)).to(torch.float32)
    return (acc * sa.unsqueeze(-1) * sb.unsqueeze(-2)).to(a.dtype)


@_qmatmul_dynamic.register_fake
def _(a, b):
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return a.new_empty((*batch, a.shape[-2], b.shape[-1]))


sg_ops = torch.ops.slimgraph


@register_macs(sg_ops.qlinear_static.default, sg_ops.qlinear_dynamic.default)
def _qlinear_macs(ins: Sequence, out) -> int:
    return linear_macs([ins[0], ins[2]], out)  # (x, x_scale, w, ...)


register_macs(sg_ops.qmatmul_dynamic.default)(matmul_macs)
