"""Weight-only int8 (W8A16): int8 weights with float32 per-output-channel scales, float activations.

    qlinear_w8a16(x, w, ws, b, act)                                   x float [..., K], w int8 [N, K]
    qconv_w8a16(x, w, ws, b, stride, padding, dilation, groups, act)  the weight dequantized per call, float conv
    qembedding(w, ws, indices, padding_idx, dtype)                    int8 rows gathered, then scaled

``qlinear_w8a16`` runs :func:`slimgraph.kernels.w8a16_matmul` (Triton on CUDA / under the interpreter, its torch
reference elsewhere) and the activation after it; the conv and the embedding are pure torch (no kernel: a conv
weight is small next to its activations, and a gather reads one row per token). MACs: the GEMM's / the conv's.
ONNX translations: :mod:`slimgraph.quant.onnx_ops`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ir.cost import conv_macs, linear_macs, register_macs
from ..kernels.epilogue import apply_activation
from ..kernels.w8a16_matmul import w8a16_matmul
from .int8_conv import CONV_GEOMETRY, conv_out_shape

__all__: list[str] = []


@torch.library.custom_op("slimgraph::qlinear_w8a16", mutates_args=(),
                         schema="(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, str act) -> Tensor")
def _qlinear_w8a16(x, w, w_scale, bias, act):
    return apply_activation(w8a16_matmul(x.contiguous(), w, w_scale, bias), act)


@_qlinear_w8a16.register_fake
def _(x, w, w_scale, bias, act):
    return x.new_empty((*x.shape[:-1], w.shape[0]))


@torch.library.custom_op(
    "slimgraph::qconv_w8a16", mutates_args=(),
    schema=f"(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, {CONV_GEOMETRY}) -> Tensor")
def _qconv_w8a16(x, w, w_scale, bias, stride, padding, dilation, groups, act):
    weight = w.to(torch.float32) * w_scale.reshape(-1, *([1] * (w.dim() - 1)))
    conv = F.conv1d if w.dim() == 3 else F.conv2d
    y = conv(x, weight.to(x.dtype), bias.to(x.dtype) if bias is not None else None, stride, padding, dilation, groups)
    return apply_activation(y, act)


@_qconv_w8a16.register_fake
def _(x, w, w_scale, bias, stride, padding, dilation, groups, act):
    return x.new_empty(conv_out_shape(x.shape, w.shape, stride, padding, dilation))


@torch.library.custom_op(
    "slimgraph::qembedding", mutates_args=(),
    schema="(Tensor w, Tensor w_scale, Tensor indices, int padding_idx, ScalarType out_dtype) -> Tensor")
def _qembedding(w, w_scale, indices, padding_idx, out_dtype):
    rows = F.embedding(indices, w).to(torch.float32)
    return (rows * F.embedding(indices, w_scale.unsqueeze(-1))).to(out_dtype)


@_qembedding.register_fake
def _(w, w_scale, indices, padding_idx, out_dtype):
    return w_scale.new_empty((*indices.shape, w.shape[1]), dtype=out_dtype)


register_macs(torch.ops.slimgraph.qlinear_w8a16.default)(linear_macs)
register_macs(torch.ops.slimgraph.qconv_w8a16.default)(conv_macs)
