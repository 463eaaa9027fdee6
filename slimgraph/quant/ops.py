"""Graph-level int8 ops that the ``quant`` pass inserts: ``torch.ops.slimgraph.*``.

Each op is an opaque ``torch.library.custom_op`` with a fake implementation (torch.compile and torch.export
trace it without running it), a MACs rule for reports, and an implementation that calls the kernels of
:mod:`slimgraph.kernels`: the Triton kernel on CUDA (or under ``TRITON_INTERPRET=1``), their pure-torch reference
on CPU, except that int8 Linear and Conv on CPU run through oneDNN's int8 kernels where the CPU has them
(:mod:`slimgraph.quant.cpu_int8`; the reference otherwise). Weights are real int8 tensors with float32
per-output-channel scales; nothing is fake-quantized.

Boundary ops (float -> int8)::

    quantize_per_tensor(x, scale) -> q                      static: q = clamp(round(x / scale), -128, 127)
    dynamic_quantize_per_token(x) -> (q, scale[rows])      run-time per-row absmax / 127
    dynamic_quantize_per_tensor(x) -> (q, scale[])         run-time whole-tensor absmax / 127 (conv inputs)
    layer_norm_quantize_per_token(x, shape, w, b, eps)     LayerNorm fused into the per-row quantizer

Compute ops (int8 in, dequantize + bias + activation in the GEMM epilogue)::

    qlinear_static(q, s, w, ws, b, act, out_scale?, dtype)  out_scale given: the epilogue requantizes (int8 out)
    qlinear_dynamic(q, s_rows, w, ws, b, act, dtype)
    qconv_static / qconv_dynamic(q, s, w, ws, b, stride, padding, dilation, groups, act, [out_scale?,] dtype)
    qlinear_w8a16(x, w, ws, b, act), qconv_w8a16(x, w, ws, b, stride, padding, dilation, groups, act)
    qmatmul_dynamic(a, b)                                   both operands activations (attention), per-token
    qembedding(w, ws, indices, padding_idx, dtype)          weight-only rows

Static activations clamp to [-128, 127] like ONNX QuantizeLinear, so an exported QDQ graph reproduces these
numbers; dynamic scales map each row's absmax to 127 and weights use [-127, 127] (symmetric, TensorRT's rule).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..ir.cost import conv_macs, linear_macs, matmul_macs, register_macs
from ..kernels import int8_conv2d, int8_matmul, layernorm_quantize, quantize_per_token, w8a16_matmul
from ..kernels.epilogue import apply_activation
from . import cpu_int8

__all__ = ["ACT_QMAX", "ACT_QMIN", "BOUNDARY_OPS", "QUANTIZED_COMPUTE_OPS", "quantize_tensor_reference",
           "quantize_weight"]

ACT_QMIN, ACT_QMAX = -128, 127


# ------------------------------------------------------------------------------------------------ references


def quantize_tensor_reference(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Static per-tensor quantization, ONNX QuantizeLinear's arithmetic (divide, round half to even, saturate)."""
    return torch.round(x.to(torch.float32) / scale.to(torch.float32)).clamp_(ACT_QMIN, ACT_QMAX).to(torch.int8)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel (dim 0) int8 weight in [-127, 127] and its float32 scales ``[OC]``."""
    rows = w.detach().reshape(w.shape[0], -1).to(torch.float32).contiguous()
    q, scale = quantize_per_token(rows)  # the kernels' per-row quantizer: scale = absmax / 127
    return q.reshape(w.shape), scale


def _rows_absmax_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_per_token(x.contiguous())


def _requantize(y: torch.Tensor, out_scale: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    return y.to(out_dtype) if out_scale is None else quantize_tensor_reference(y, out_scale)


def _conv_nd(x, w, x_scale, w_scale, bias, stride, padding, dilation, groups, act, out_dtype):
    """int8 conv1d/conv2d on NCHW tensors through the NHWC int8_conv2d kernel (conv1d runs as a 1xL conv2d)."""
    if w.dim() == 3:
        x, w = x.unsqueeze(2), w.unsqueeze(2)
        stride, padding, dilation = [1, stride[0]], [0, padding[0]], [1, dilation[0]]
        return _conv_nd(x, w, x_scale, w_scale, bias, stride, padding, dilation, groups, act, out_dtype).squeeze(2)
    y = int8_conv2d(x.permute(0, 2, 3, 1).contiguous(), w.permute(0, 2, 3, 1).contiguous(), x_scale.reshape(1),
                    w_scale, bias, list(stride), list(padding), list(dilation), groups, act, out_dtype)
    return y.permute(0, 3, 1, 2)


def _conv_out_shape(x_shape, w_shape, stride, padding, dilation) -> list:
    spatial = []
    for i, size in enumerate(x_shape[2:]):
        k = w_shape[2 + i]
        spatial.append((size + 2 * padding[i] - dilation[i] * (k - 1) - 1) // stride[i] + 1)
    return [x_shape[0], w_shape[0], *spatial]


# ------------------------------------------------------------------------------------------- boundary ops


@torch.library.custom_op("slimgraph::quantize_per_tensor", mutates_args=(), schema="(Tensor x, Tensor scale) -> Tensor")
def _quantize_per_tensor(x, scale):
    return quantize_tensor_reference(x, scale)


@_quantize_per_tensor.register_fake
def _(x, scale):
    return x.new_empty(x.shape, dtype=torch.int8)


@torch.library.custom_op("slimgraph::dynamic_quantize_per_token", mutates_args=(),
                         schema="(Tensor x) -> (Tensor, Tensor)")
def _dynamic_quantize_per_token(x):
    return _rows_absmax_quantize(x)


@_dynamic_quantize_per_token.register_fake
def _(x):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("slimgraph::dynamic_quantize_per_tensor", mutates_args=(),
                         schema="(Tensor x) -> (Tensor, Tensor)")
def _dynamic_quantize_per_tensor(x):
    # One scale for the whole tensor: a KxK conv window mixes pixels, so per-row scales do not factor out.
    q, scale = quantize_per_token(x.reshape(1, -1).contiguous())
    return q.reshape(x.shape), scale.reshape(())


@_dynamic_quantize_per_tensor.register_fake
def _(x):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((), dtype=torch.float32)


@torch.library.custom_op(
    "slimgraph::layer_norm_quantize_per_token", mutates_args=(),
    schema="(Tensor x, int[] normalized_shape, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor)")
def _layer_norm_quantize_per_token(x, normalized_shape, weight, bias, eps):
    return layernorm_quantize(x.contiguous(), weight, bias, eps)


@_layer_norm_quantize_per_token.register_fake
def _(x, normalized_shape, weight, bias, eps):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:-1], dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ W8A8 GEMMs

_QLINEAR_ARGS = "Tensor x, Tensor x_scale, Tensor w, Tensor w_scale, Tensor? bias, str act"
_CONV_GEOMETRY = "int[] stride, int[] padding, int[] dilation, int groups, str act"


@torch.library.custom_op("slimgraph::qlinear_static", mutates_args=(),
                         schema=f"({_QLINEAR_ARGS}, Tensor? out_scale, ScalarType out_dtype) -> Tensor")
def _qlinear_static(x, x_scale, w, w_scale, bias, act, out_scale, out_dtype):
    y = cpu_int8.qlinear(x, x_scale, w, w_scale, bias, act, out_scale, out_dtype)
    if y is not None:
        return y
    dtype = out_dtype if out_scale is None else torch.float32
    y = int8_matmul(x.contiguous(), w, x_scale.reshape(1), w_scale, bias, act, dtype)
    return _requantize(y, out_scale, out_dtype)


@_qlinear_static.register_fake
def _(x, x_scale, w, w_scale, bias, act, out_scale, out_dtype):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=out_dtype if out_scale is None else torch.int8)


@torch.library.custom_op("slimgraph::qlinear_dynamic", mutates_args=(),
                         schema=f"({_QLINEAR_ARGS}, ScalarType out_dtype) -> Tensor")
def _qlinear_dynamic(x, x_scale, w, w_scale, bias, act, out_dtype):
    y = cpu_int8.qlinear(x, x_scale, w, w_scale, bias, act, None, out_dtype, per_row=True)
    if y is not None:
        return y
    return int8_matmul(x.contiguous(), w, x_scale.contiguous(), w_scale, bias, act, out_dtype)


@_qlinear_dynamic.register_fake
def _(x, x_scale, w, w_scale, bias, act, out_dtype):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=out_dtype)


@torch.library.custom_op(
    "slimgraph::qconv_static", mutates_args=(),
    schema=f"(Tensor x, Tensor x_scale, Tensor w, Tensor w_scale, Tensor? bias, {_CONV_GEOMETRY}, Tensor? out_scale, "
    "ScalarType out_dtype) -> Tensor")
def _qconv_static(x, x_scale, w, w_scale, bias, stride, padding, dilation, groups, act, out_scale, out_dtype):
    y = cpu_int8.qconv(x, x_scale, w, w_scale, bias, stride, padding, dilation, groups, act, out_scale, out_dtype)
    if y is not None:
        return y
    dtype = out_dtype if out_scale is None else torch.float32
    y = _conv_nd(x, w, x_scale, w_scale, bias, stride, padding, dilation, groups, act, dtype)
    return _requantize(y, out_scale, out_dtype).contiguous()


@_qconv_static.register_fake
def _(x, x_scale, w, w_scale, bias, stride, padding, dilation, groups, act, out_scale, out_dtype):
    shape = _conv_out_shape(x.shape, w.shape, stride, padding, dilation)
    return x.new_empty(shape, dtype=out_dtype if out_scale is None else torch.int8)


@torch.library.custom_op(
    "slimgraph::qconv_dynamic", mutates_args=(),
    schema=f"(Tensor x, Tensor x_scale, Tensor w, Tensor w_scale, Tensor? bias, {_CONV_GEOMETRY}, "
    "ScalarType out_dtype) -> Tensor")
def _qconv_dynamic(x, x_scale, w, w_scale, bias, stride, padding, dilation, groups, act, out_dtype):
    y = cpu_int8.qconv(x, x_scale, w, w_scale, bias, stride, padding, dilation, groups, act, None, out_dtype)
    if y is not None:
        return y
    return _conv_nd(x, w, x_scale, w_scale, bias, stride, padding, dilation, groups, act, out_dtype).contiguous()


@_qconv_dynamic.register_fake
def _(x, x_scale, w, w_scale, bias, stride, padding, dilation, groups, act, out_dtype):
    return x.new_empty(_conv_out_shape(x.shape, w.shape, stride, padding, dilation), dtype=out_dtype)


# --------------------------------------------------------------------------------------------- weight-only


@torch.library.custom_op("slimgraph::qlinear_w8a16", mutates_args=(),
                         schema="(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, str act) -> Tensor")
def _qlinear_w8a16(x, w, w_scale, bias, act):
    return apply_activation(w8a16_matmul(x.contiguous(), w, w_scale, bias), act)


@_qlinear_w8a16.register_fake
def _(x, w, w_scale, bias, act):
    return x.new_empty((*x.shape[:-1], w.shape[0]))


@torch.library.custom_op(
    "slimgraph::qconv_w8a16", mutates_args=(),
    schema=f"(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, {_CONV_GEOMETRY}) -> Tensor")
def _qconv_w8a16(x, w, w_scale, bias, stride, padding, dilation, groups, act):
    # No weight-only conv kernel: dequantize the (small) conv weight per call and run the float conv.
    weight = w.to(torch.float32) * w_scale.reshape(-1, *([1] * (w.dim() - 1)))
    conv = F.conv1d if w.dim() == 3 else F.conv2d
    y = conv(x, weight.to(x.dtype), bias.to(x.dtype) if bias is not None else None, stride, padding, dilation, groups)
    return apply_activation(y, act)


@_qconv_w8a16.register_fake
def _(x, w, w_scale, bias, stride, padding, dilation, groups, act):
    return x.new_empty(_conv_out_shape(x.shape, w.shape, stride, padding, dilation))


# ----------------------------------------------------------------------------------- activations x activations


def _quantize_columns(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column quantization of the right operand (reduce over its K dim, -2)."""
    q, scale = _rows_absmax_quantize(b.transpose(-1, -2))
    return q.transpose(-1, -2), scale


@torch.library.custom_op("slimgraph::qmatmul_dynamic", mutates_args=(), schema="(Tensor a, Tensor b) -> Tensor")
def _qmatmul_dynamic(a, b):
    qa, sa = _rows_absmax_quantize(a)
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


@torch.library.custom_op(
    "slimgraph::qembedding", mutates_args=(),
    schema="(Tensor w, Tensor w_scale, Tensor indices, int padding_idx, ScalarType out_dtype) -> Tensor")
def _qembedding(w, w_scale, indices, padding_idx, out_dtype):
    rows = F.embedding(indices, w).to(torch.float32)
    return (rows * F.embedding(indices, w_scale.unsqueeze(-1))).to(out_dtype)


@_qembedding.register_fake
def _(w, w_scale, indices, padding_idx, out_dtype):
    return w_scale.new_empty((*indices.shape, w.shape[1]), dtype=out_dtype)


# ------------------------------------------------------------------------------------------------ MACs rules

sg_ops = torch.ops.slimgraph


@register_macs(sg_ops.qlinear_static.default, sg_ops.qlinear_dynamic.default)
def _qlinear_macs(ins: Sequence, out) -> int:
    return linear_macs([ins[0], ins[2]], out)  # (x, x_scale, w, ...)


@register_macs(sg_ops.qconv_static.default, sg_ops.qconv_dynamic.default)
def _qconv_macs(ins: Sequence, out) -> int:
    return conv_macs([ins[0], ins[2]], out)


register_macs(sg_ops.qlinear_w8a16.default)(linear_macs)
register_macs(sg_ops.qconv_w8a16.default)(conv_macs)
register_macs(sg_ops.qmatmul_dynamic.default)(matmul_macs)

QUANTIZED_COMPUTE_OPS = frozenset({
    sg_ops.qlinear_static.default, sg_ops.qlinear_dynamic.default, sg_ops.qlinear_w8a16.default,
    sg_ops.qconv_static.default, sg_ops.qconv_dynamic.default, sg_ops.qconv_w8a16.default,
    sg_ops.qmatmul_dynamic.default, sg_ops.qembedding.default,
})
BOUNDARY_OPS = frozenset({
    sg_ops.quantize_per_tensor.default, sg_ops.dynamic_quantize_per_token.default,
    sg_ops.dynamic_quantize_per_tensor.default, sg_ops.layer_norm_quantize_per_token.default,
})
