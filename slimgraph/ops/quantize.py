"""Boundary ops: float -> int8 activations, as the ``quant`` pass inserts them in front of int8 GEMMs and convs.

    quantize_per_tensor(x, scale) -> q                      static: q = clamp(round(x / scale), -128, 127)
    dequantize_per_tensor(q, scale) -> x                    q * scale in float32 (an int8 epilogue's output read
                                                            by a float op, e.g. a residual add)
    dynamic_quantize_per_token(x) -> (q, scale[rows])      run-time per-row absmax / 127
    dynamic_quantize_per_tensor(x) -> (q, scale[])         run-time whole-tensor absmax / 127 (conv inputs)
    layer_norm_quantize_per_token(x, shape, w, b, eps)     LayerNorm fused into the per-row quantizer

Static activations clamp to [-128, 127] like ONNX QuantizeLinear, so an exported QDQ graph reproduces these
numbers; dynamic scales map each row's absmax to 127 and weights use [-127, 127] (symmetric, TensorRT's rule).

Each op: schema + torch reference here, fake implementation beside it, the kernel of
:mod:`slimgraph.kernels.quantize` (Triton on CUDA / under the interpreter, its reference elsewhere). No MACs
(memory-bound). ONNX translations: :mod:`slimgraph.quant.onnx_ops`. Also here: the weight quantizer every int8
rewrite uses (:func:`quantize_weight`).
"""

from __future__ import annotations

import torch

from ..kernels.quantize import layernorm_quantize, quantize_per_token

__all__ = ["ACT_QMAX", "ACT_QMIN", "BOUNDARY_OPS", "quantize_tensor_reference", "quantize_weight", "requantize"]

ACT_QMIN, ACT_QMAX = -128, 127


def quantize_tensor_reference(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Static per-tensor quantization, ONNX QuantizeLinear's arithmetic (divide, round half to even, saturate)."""
    return torch.round(x.to(torch.float32) / scale.to(torch.float32)).clamp_(ACT_QMIN, ACT_QMAX).to(torch.int8)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel (dim 0) int8 weight in [-127, 127] and its float32 scales ``[OC]``."""
    rows = w.detach().reshape(w.shape[0], -1).to(torch.float32).contiguous()
    q, scale = quantize_per_token(rows)  # the kernels' per-row quantizer: scale = absmax / 127
    return q.reshape(w.shape), scale


def requantize(y: torch.Tensor, out_scale: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """The output of a static int8 op: ``y`` as ``out_dtype``, or requantized to int8 when ``out_scale`` is given."""
    return y.to(out_dtype) if out_scale is None else quantize_tensor_reference(y, out_scale)


def _int8_and_row_scales(x):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("slimgraph::quantize_per_tensor", mutates_args=(), schema="(Tensor x, Tensor scale) -> Tensor")
def _quantize_per_tensor(x, scale):
    return quantize_tensor_reference(x, scale)


@_quantize_per_tensor.register_fake
def _(x, scale):
    return x.new_empty(x.shape, dtype=torch.int8)


@torch.library.custom_op("slimgraph::dequantize_per_tensor", mutates_args=(),
                         schema="(Tensor q, Tensor scale) -> Tensor")
def _dequantize_per_tensor(q, scale):
    return q.to(torch.float32) * scale.to(torch.float32)


@_dequantize_per_tensor.register_fake
def _(q, scale):
    return q.new_empty(q.shape, dtype=torch.float32)


@torch.library.custom_op("slimgraph::dynamic_quantize_per_token", mutates_args=(),
                         schema="(Tensor x) -> (Tensor, Tensor)")
def _dynamic_quantize_per_token(x):
    return quantize_per_token(x.contiguous())


_dynamic_quantize_per_token.register_fake(_int8_and_row_scales)


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
    return _int8_and_row_scales(x)


sg_ops = torch.ops.slimgraph
BOUNDARY_OPS = frozenset({
    sg_ops.quantize_per_tensor.default, sg_ops.dequantize_per_tensor.default, sg_ops.dynamic_quantize_per_token.default,
    sg_ops.dynamic_quantize_per_tensor.default, sg_ops.layer_norm_quantize_per_token.default,
})
