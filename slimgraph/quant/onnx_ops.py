"""ONNX translations of the int8 ops, as QDQ graphs that ONNX Runtime and TensorRT recognize.

Every int8 GEMM becomes ``DequantizeLinear`` on each quantized input feeding a float ``Gemm``/``Conv``/``MatMul``,
which runtimes fuse back into integer kernels::

    qlinear_static(q, s, Wq, ws, b, act, out_scale)
      =>  Reshape(q, [-1, K]) -> DequantizeLinear(s, zp=0) -> Gemm(transB=1, bias) <- DequantizeLinear(Wq, ws, axis=0)
          -> act -> Reshape(.., [..., N]) [-> QuantizeLinear(out_scale)]
    quantize_per_tensor(x, s)          =>  QuantizeLinear(x, s, zp=int8 0)
    dynamic_quantize_per_token(x)      =>  s = ReduceMax(|x|, -1) / 127;  QuantizeLinear(x2d, s, zp=0[M], axis=0)
    qconv_*(q, s, Wq, ws, ...)         =>  DequantizeLinear -> Conv(group, pads, ...) <- DequantizeLinear(axis=0)
    qembedding(Wq, ws, ids)            =>  Gather(DequantizeLinear(Wq, ws, axis=0), ids)

TensorRT's rules hold by construction: zero points are int8 zeros (symmetric, signed), weight scales are
per output channel on axis 0, weights are in [-127, 127]; the int8 activation is reshaped to 2-D *before*
its DequantizeLinear so each DQ feeds the Gemm directly. Static scales are initializers; the dynamic schemes
compute theirs in the graph (ONNX Runtime runs them; TensorRT needs constant scales, i.e. ``w8a8``).

The functions are onnxscript trace-only translations: they run once at export time with symbolic values, so
plain Python control flow on attributes (``act``, optional bias) is fine.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import torch
from onnxscript import opset18 as op

sgops = torch.ops.slimgraph
_FLOAT = 1  # ONNX TensorProto.FLOAT, the element type the dequantized math runs in


def _const(array: np.ndarray):
    return op.Constant(value=ir.tensor(array))


def _scalar(value: float):
    return _const(np.array(value, np.float32))


def _zero_point(n: int | None = None):
    """Symmetric int8 zero point: a scalar, or one per channel for per-axis scales."""
    return _const(np.zeros(() if n is None else (n,), np.int8))


def _dynamic_zero_point(scale):
    return op.ConstantOfShape(op.Shape(scale), value=ir.tensor(np.zeros((1,), np.int8)))


def _activation(y, act: str):
    if act == "none":
        return y
    if act == "relu":
        return op.Relu(y)
    if act == "relu6":
        return op.Clip(y, _scalar(0.0), _scalar(6.0))
    half, one = _scalar(0.5), _scalar(1.0)
    if act == "gelu":  # opset 18 has no Gelu: the erf form, exact like torch's default
        return op.Mul(op.Mul(y, half), op.Add(op.Erf(op.Div(y, _scalar(math.sqrt(2.0)))), one))
    if act == "gelu_tanh":
        inner = op.Mul(_scalar(math.sqrt(2.0 / math.pi)), op.Add(y, op.Mul(_scalar(0.044715), op.Mul(y, op.Mul(y, y)))))
        return op.Mul(op.Mul(y, half), op.Add(op.Tanh(inner), one))
    if act == "silu":
        return op.Mul(y, op.Sigmoid(y))
    if act == "sigmoid":
        return op.Sigmoid(y)
    if act == "tanh":
        return op.Tanh(y)
    if act == "hardswish":
        return op.HardSwish(y)
    raise ValueError(f"no ONNX translation for activation {act!r}")


def _cast_out(y, out_dtype: int):
    return y if out_dtype in (-1, _FLOAT) else op.Cast(y, to=out_dtype)


def _dequantized_weight(w, w_scale):
    return op.DequantizeLinear(w, w_scale, _zero_point(w.shape[0]), axis=0)


def _rows(x, k: int):
    return op.Reshape(x, _const(np.array([-1, k], np.int64)))


def _restore_rows(y, like, n: int):
    shape = op.Concat(op.Shape(like, end=-1), _const(np.array([n], np.int64)), axis=0)
    return op.Reshape(y, shape)


def _gemm(x2d, wf, bias):
    return op.Gemm(x2d, wf, bias, transB=1) if bias is not None else op.Gemm(x2d, wf, transB=1)


# ------------------------------------------------------------------------------------------------ boundaries


def quantize_per_tensor(x, scale):
    return op.QuantizeLinear(x, scale, _zero_point())


def _quantize_rows(x2d):
    absmax = op.Max(op.ReduceMax(op.Abs(x2d), _const(np.array([1], np.int64)), keepdims=0),
                    _const(np.array(1e-12, np.float32)))
    scale = op.Div(absmax, _const(np.array(127.0, np.float32)))
    return op.QuantizeLinear(x2d, scale, _dynamic_zero_point(scale), axis=0), scale


def dynamic_quantize_per_token(x):
    return _quantize_per_token(x, x.shape[-1])


def _quantize_per_token(x, k: int):
    q2, scale = _quantize_rows(_rows(op.Cast(x, to=_FLOAT), k))
    return op.Reshape(q2, op.Shape(x)), op.Reshape(scale, op.Shape(x, end=-1))


def dynamic_quantize_per_tensor(x):
    absmax = op.Max(op.ReduceMax(op.Abs(op.Cast(x, to=_FLOAT)), keepdims=0), _const(np.array(1e-12, np.float32)))
    scale = op.Div(absmax, _const(np.array(127.0, np.float32)))
    return op.QuantizeLinear(x, scale, _zero_point()), scale


def layer_norm_quantize_per_token(x, normalized_shape: list[int], weight=None, bias=None, eps: float = 1e-5):
    k = x.shape[-1]
    if weight is None:
        weight = _const(np.ones((k,), np.float32))
    y = op.LayerNormalization(x, weight, bias, axis=-1, epsilon=eps) if bias is not None else \
        op.LayerNormalization(x, weight, axis=-1, epsilon=eps)
    # LayerNormalization has three outputs (Y, Mean, InvStdDev): onnxscript hands back all of them as a tuple
    if isinstance(y, (tuple, list)):
        y = y[0]
    return _quantize_per_token(y, k)  # k from x: the exporter infers no shape for LayerNormalization's output


# ---------------------------------------------------------------------------------------------------- GEMMs


def qlinear_static(x, x_scale, w, w_scale, bias=None, act: str = "none", out_scale=None, out_dtype: int = _FLOAT):
    n, k = w.shape[0], w.shape[1]
    xf = op.DequantizeLinear(_rows(x, k), x_scale, _zero_point())
    y = _restore_rows(_activation(_gemm(xf, _dequantized_weight(w, w_scale), bias), act), x, n)
    return op.QuantizeLinear(y, out_scale, _zero_point()) if out_scale is not None else _cast_out(y, out_dtype)


def qlinear_dynamic(x, x_scale, w, w_scale, bias=None, act: str = "none", out_dtype: int = _FLOAT):
    n, k = w.shape[0], w.shape[1]
    rows_scale = op.Reshape(x_scale, _const(np.array([-1], np.int64)))
    xf = op.DequantizeLinear(_rows(x, k), rows_scale, _dynamic_zero_point(rows_scale), axis=0)
    y = _restore_rows(_activation(_gemm(xf, _dequantized_weight(w, w_scale), bias), act), x, n)
    return _cast_out(y, out_dtype)


def qlinear_w8a16(x, w, w_scale, bias=None, act: str = "none"):
    n, k = w.shape[0], w.shape[1]
    wf = op.CastLike(_dequantized_weight(w, w_scale), x)
    return _restore_rows(_activation(_gemm(_rows(x, k), wf, bias), act), x, n)


def _conv(xf, wf, bias, stride, padding, dilation, groups: int):
    pads = list(padding) + list(padding)
    if bias is not None:
        return op.Conv(xf, wf, bias, strides=stride, pads=pads, dilations=dilation, group=groups)
    return op.Conv(xf, wf, strides=stride, pads=pads, dilations=dilation, group=groups)


def qconv_static(x, x_scale, w, w_scale, bias=None, stride: list[int] = (1,), padding: list[int] = (0,),
                 dilation: list[int] = (1,), groups: int = 1, act: str = "none", out_scale=None,
                 out_dtype: int = _FLOAT):
    xf = op.DequantizeLinear(x, x_scale, _zero_point())
    y = _activation(_conv(xf, _dequantized_weight(w, w_scale), bias, stride, padding, dilation, groups), act)
    return op.QuantizeLinear(y, out_scale, _zero_point()) if out_scale is not None else _cast_out(y, out_dtype)


def qconv_dynamic(x, x_scale, w, w_scale, bias=None, stride: list[int] = (1,), padding: list[int] = (0,),
                  dilation: list[int] = (1,), groups: int = 1, act: str = "none", out_dtype: int = _FLOAT):
    return qconv_static(x, x_scale, w, w_scale, bias, stride, padding, dilation, groups, act, None, out_dtype)


def qconv_w8a16(x, w, w_scale, bias=None, stride: list[int] = (1,), padding: list[int] = (0,),
                dilation: list[int] = (1,), groups: int = 1, act: str = "none"):
    wf = op.CastLike(_dequantized_weight(w, w_scale), x)
    return _activation(_conv(x, wf, bias, stride, padding, dilation, groups), act)


def _dequantized_rows(x, k: int):
    """Per-row dynamic Q/DQ of an N-D tensor whose last dim is ``k`` (rows = all leading dims)."""
    q2, scale = _quantize_rows(_rows(op.Cast(x, to=_FLOAT), k))
    xf = op.DequantizeLinear(q2, scale, _dynamic_zero_point(scale), axis=0)
    return op.Reshape(xf, op.Shape(x))


def qmatmul_dynamic(a, b):
    rank = len(b.shape)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    af = _dequantized_rows(a, a.shape[-1])
    bf = op.Transpose(_dequantized_rows(op.Transpose(b, perm=perm), b.shape[-2]), perm=perm)  # per column of b
    return op.CastLike(op.MatMul(af, bf), a)


def qembedding(w, w_scale, indices, padding_idx: int = -1, out_dtype: int = _FLOAT):
    return _cast_out(op.Gather(_dequantized_weight(w, w_scale), indices, axis=0), out_dtype)


TRANSLATIONS = {
    sgops.quantize_per_tensor.default: quantize_per_tensor,
    sgops.dynamic_quantize_per_token.default: dynamic_quantize_per_token,
    sgops.dynamic_quantize_per_tensor.default: dynamic_quantize_per_tensor,
    sgops.layer_norm_quantize_per_token.default: layer_norm_quantize_per_token,
    sgops.qlinear_static.default: qlinear_static,
    sgops.qlinear_dynamic.default: qlinear_dynamic,
    sgops.qlinear_w8a16.default: qlinear_w8a16,
    sgops.qconv_static.default: qconv_static,
    sgops.qconv_dynamic.default: qconv_dynamic,
    sgops.qconv_w8a16.default: qconv_w8a16,
    sgops.qmatmul_dynamic.default: qmatmul_dynamic,
    sgops.qembedding.default: qembedding,
}
