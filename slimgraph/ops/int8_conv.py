"""W8A8 convolutions on NCHW graph tensors: int8 conv1d / conv2d with the dequantize epilogue fused.

    qconv_static(q, s, w, ws, b, stride, padding, dilation, groups, act, out_scale?, dtype)
    qconv_dynamic(q, s, w, ws, b, stride, padding, dilation, groups, act, dtype)      s from dynamic_quantize_per_tensor

Implementations, in order: on CPU oneDNN's int8 convolution where the CPU has it
(:mod:`slimgraph.quant.cpu_int8`), else :func:`slimgraph.kernels.int8_conv2d`, whose kernel is NHWC: the graph's
NCHW tensors are permuted around it, and conv1d runs as a 1xL conv2d. One activation scale per tensor (a KxK
window mixes pixels). MACs: the conv's. ONNX translations: :mod:`slimgraph.quant.onnx_ops`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..ir.cost import conv_macs, register_macs
from ..kernels.int8_conv import int8_conv2d
from .int8_linear import cpu_int8_backend
from .quantize import requantize

__all__ = ["CONV_GEOMETRY", "conv_out_shape"]

CONV_GEOMETRY = "int[] stride, int[] padding, int[] dilation, int groups, str act"
_QCONV_ARGS = f"Tensor x, Tensor x_scale, Tensor w, Tensor w_scale, Tensor? bias, {CONV_GEOMETRY}"


def conv_out_shape(x_shape, w_shape, stride, padding, dilation) -> list:
    """NCHW (or NCL) output shape of a convolution."""
    spatial = []
    for i, size in enumerate(x_shape[2:]):
        k = w_shape[2 + i]
        spatial.append((size + 2 * padding[i] - dilation[i] * (k - 1) - 1) // stride[i] + 1)
    return [x_shape[0], w_shape[0], *spatial]


def _conv_nd(x, w, x_scale, w_scale, bias, stride, padding, dilation, groups, act, out_dtype):
    """int8 conv1d/conv2d on NCHW tensors through the NHWC int8_conv2d kernel (conv1d runs as a 1xL conv2d)."""
    if w.dim() == 3:
        x, w = x.unsqueeze(2), w.unsqueeze(2)
        stride, padding, dilation = [1, stride[0]], [0, padding[0]], [1, dilation[0]]
        return _conv_nd(x, w, x_scale, w_scale, bias, stride, padding, dilation, groups, act, out_dtype).squeeze(2)
    y = int8_conv2d(x.permute(0, 2, 3, 1).contiguous(), w.permute(0, 2, 3, 1).contiguous(), x_scale.reshape(1),
                    w_scale, bias, list(stride), list(padding), list(dilation), groups, act, out_dtype)
    return y.permute(0, 3, 1, 2)


@torch.library.custom_op("slimgraph::qconv_static", mutates_args=(),
                         schema=f"({_QCONV_ARGS}, Tensor? out_scale, ScalarType out_dtype) -> Tensor")
def _qconv_static(x, x_scale, w, w_scale, bias, stride, padding, dilation, groups, act, out_scale, out_dtype):
    geometry = (stride, padding, dilation, groups)
    y = cpu_int8_backend().qconv(x, x_scale, w, w_scale, bias, *geometry, act, out_scale, out_dtype)
    if y is not None:
        return y
    dtype = out_dtype if out_scale is None else torch.float32
    y = _conv_nd(x, w, x_scale, w_scale, bias, stride, padding, dilation, groups, act, dtype)
    return requantize(y, out_scale, out_dtype).contiguous()


@_qconv_static.register_fake
def _(x, x_scale, w, w_scale, bias, stride, padding, dilation, groups, act, out_scale, out_dtype):
    shape = conv_out_shape(x.shape, w.shape, stride, padding, dilation)
    return x.new_empty(shape, dtype=out_dtype if out_scale is None else torch.int8)


@torch.library.custom_op("slimgraph::qconv_dynamic", mutates_args=(),
                         schema=f"({_QCONV_ARGS}, ScalarType out_dtype) -> Tensor")
def _qconv_dynamic(x, x_scale, w, w_scale, bias, stride, padding, dilation, groups, act, out_dtype):
    geometry = (stride, padding, dilation, groups)
    y = cpu_int8_backend().qconv(x, x_scale, w, w_scale, bias, *geometry, act, None, out_dtype)
    if y is not None:
        return y
    return _conv_nd(x, w, x_scale, w_scale, bias, stride, padding, dilation, groups, act, out_dtype).contiguous()


@_qconv_dynamic.register_fake
def _(x, x_scale, w, w_scale, bias, stride, padding, dilation, groups, act, out_dtype):
    return x.new_empty(conv_out_shape(x.shape, w.shape, stride, padding, dilation), dtype=out_dtype)


@register_macs(torch.ops.slimgraph.qconv_static.default, torch.ops.slimgraph.qconv_dynamic.default)
def _qconv_macs(ins: Sequence, out) -> int:
    return conv_macs([ins[0], ins[2]], out)  # (x, x_scale, w, ...)
