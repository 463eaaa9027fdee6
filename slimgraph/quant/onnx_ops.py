"""ONNX translations of the int8 ops: portable QDQ graphs by default, or the forms ONNX Runtime's CPU provider
turns into integer kernels (:func:`for_onnxruntime`).

The default (portable) form follows TensorRT's QDQ rules: every int8 GEMM is ``DequantizeLinear`` on each
quantized input feeding a float ``Gemm``/``Conv``/``MatMul``, zero points are int8 zeros, weight scales per
output channel on axis 0, weights in [-127, 127]::

    quantize_per_tensor(x, s)          =>  QuantizeLinear(x, s, zp=int8 0)
    dequantize_per_tensor(q, s)        =>  DequantizeLinear(q, s, zp as written)  (ORT: QLinearConv -> DQ -> Add)
    qlinear_static(q, s, Wq, ws, b, act, out_scale)
      =>  Reshape(q, [-1, K]) -> DequantizeLinear(s, zp=0) -> Gemm(transB=1, b) <- DequantizeLinear(Wq, ws, axis=0)
          -> act -> Reshape(.., [..., N]) [-> QuantizeLinear(out_scale)]
    dynamic_quantize_per_token(x)      =>  s = ReduceMax(|x|, -1) / 127;  QuantizeLinear(x2d, s, zp=0[M], axis=0)
    qconv_*(q, s, Wq, ws, ...)         =>  DequantizeLinear -> Conv(group, pads, ...) <- DequantizeLinear(axis=0)
    qembedding(Wq, ws, ids)            =>  Gather(DequantizeLinear(Wq, ws, axis=0), ids)

TensorRT fuses these back into int8 kernels; ONNX Runtime 1.32's CPU provider mostly does not (it ran them as
float convs between Q/DQ pairs, slower than the float model). Inside ``with for_onnxruntime():`` the export
writes what ORT does fuse, checked on hand-built graphs against the optimized model ORT writes
(``SessionOptions.optimized_model_filepath``; tests/quant/test_onnx_ort_fusion.py keeps it so):

- QLinearConv / QGemm with int8 output need the QuantizeLinear right after the Conv/Gemm. A Relu in between is
  only dropped (ORT's ReluQuantFusion) when that QuantizeLinear's zero point is the bottom of its range, so a
  Relu's requantized output is written at the bottom of its range: uint8 with zero point 0 after a conv, int8
  with zero point -128 after a Linear (:func:`_relu_zero_point`; same scale: [0, 255 * scale] instead of the
  symmetric [0, 127 * scale]; inside the calibrated range the same integers shifted by 128). Each
  DequantizeLinear reads an int8 tensor with the zero point its QuantizeLinear wrote (:func:`_written_zero_point`).
  TensorRT refuses non-zero zero points: this is why it is not the default.
- ORT's integer kernels take int8 activations as uint8 q + 128 and, on x86 CPUs without VNNI (AVX2 only, like
  our 2-core machines), add pairs of uint8 x int8 products in int16 with saturation: 2 * 255 * 127 does not fit
  (measured: 8160 for a sum of 1032256, in QGemm, QLinearConv and MatMulInteger alike). Its uint8 x uint8
  kernels do not saturate; int8 x int8 runs a slow reference loop. CPUs with AVX-512 VNNI or AVX-VNNI sum
  uint8 x int8 products in int32 (``vpdpbusd``), exactly, and about twice as fast as uint8 x uint8 (measured
  in ORT 1.32, one thread, 256x384x1536: 0.44 ms against 0.95 ms). Hence ``for_onnxruntime(target=...)``:
  ``"avx2"`` (exact everywhere): only a Relu output (zero point -128, i.e. uint8 [0, 127] inside ORT) may enter
  QLinearConv / QGemm; a signed input goes to an integer GEMM with uint8 operands (activation and weight + 128,
  zero points 128: exact int32 sums) for a Linear, and stays a float conv (dequantized by Cast * scale, which
  ORT does not fuse) for a Conv. ``"vnni"`` (exact on VNNI CPUs only, wrong elsewhere): int8 weights enter the
  integer GEMM as they are, and a signed conv input is a plain DequantizeLinear, so ORT runs that conv as
  QLinearConv with int8 activations. ``"auto"`` (the default) picks by the CPU that exports.
- Integer GEMMs of a Linear are ``MatMulIntegerToFloat`` (com.microsoft: the int32 sums scaled by
  a_scale * w_scale, plus the bias, in the GEMM's output stage): for a static per-tensor input scale that is
  the whole epilogue; per-row (dynamic) scales follow as one Mul and the bias as one Add.
- A float-output Gemm becomes QGemm only with no bias or an int32 bias behind DequantizeLinear (scale
  x_scale * w_scale), as ORT's own quantizer writes it. A Conv has no integer form with a float output.
- w8a8-dynamic's per-row activation scales block every QDQ fusion (ORT wants one activation scale per tensor):
  the uint8 ``MatMulInteger`` above keeps our per-token numerics exactly.

The functions are onnxscript trace-only translations: they run once at export time with symbolic values, so
plain Python control flow on attributes (``act``, optional bias, the chosen form) is fine, and so is looking at
the node that produced an input (``value.producer()``).
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnxscript import opset18 as op
from onnxscript.values import Op, Opset

from ..errors import SlimgraphError

sgops = torch.ops.slimgraph


def _matmul_integer_to_float_schema() -> onnx.defs.OpSchema:
    """The schema of ORT's contrib op com.microsoft::MatMulIntegerToFloat (onnx ships none for ORT's contrib ops;
    onnxscript needs one to record the node): ``(A - a_zero) @ (B - b_zero) * a_scale * b_scale + bias``."""
    param, optional = onnx.defs.OpSchema.FormalParameter, onnx.defs.OpSchema.FormalParameterOption.Optional
    return onnx.defs.OpSchema(
        "MatMulIntegerToFloat", "com.microsoft", 1,
        inputs=[param("A", "T1"), param("B", "T2"), param("a_scale", "T3"), param("b_scale", "T3"),
                param("a_zero_point", "T1", param_option=optional), param("b_zero_point", "T2", param_option=optional),
                param("bias", "T3", param_option=optional)],
        outputs=[param("Y", "T3")],
        type_constraints=[("T1", ["tensor(int8)", "tensor(uint8)"], ""), ("T2", ["tensor(int8)", "tensor(uint8)"], ""),
                          ("T3", ["tensor(float)"], "")])


_MSFT = Opset("com.microsoft", 1)  # ORT's contrib ops, written in ORT form only
_MATMUL_INTEGER_TO_FLOAT = Op(_MSFT, "MatMulIntegerToFloat", _matmul_integer_to_float_schema())
_FLOAT, _UINT8, _INT32 = 1, 2, 6  # ONNX TensorProto element types
_INT32_LIMIT = float(2**31 - 128)  # float32 rounds 2**31 - 1 up: stay clear of the int32 edge before the Cast
# ops that move int8 values without changing them (MaxPool picks one of them): a DequantizeLinear looks through
# them for the QuantizeLinear that wrote the value
_LAYOUT_OPS = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Expand"})
_INT8_PASSTHROUGH = _LAYOUT_OPS | {"MaxPool"}
_SHIFTED = "slimgraph.relu_zero_point"  # meta mark of the -128 zero points written for Relu outputs
_PER_ROW = "slimgraph.per_row"  # meta mark of the int8 rows written by _quantize_rows (one scale per row)


_ORT_FORM = contextvars.ContextVar("slimgraph_onnx_ort_form", default="")  # "" (portable) | "avx2" | "vnni"
ORT_TARGETS = ("auto", "avx2", "vnni")


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has AVX-512 VNNI or AVX-VNNI (``vpdpbusd``: uint8 x int8 products summed in int32, never
    saturating); read from /proc/cpuinfo, False where it cannot be read (not Linux, not x86)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_vnni", "avx_vnni"})


def resolve_ort_target(target: str = "auto") -> str:
    """``"avx2"`` or ``"vnni"`` for ``target`` (``"auto"``: the CPU this runs on, see :func:`cpu_has_vnni`)."""
    if target not in ORT_TARGETS:
        raise ValueError(f"for_onnxruntime: target must be one of {ORT_TARGETS}, got {target!r}")
    if target == "auto":
        return "vnni" if cpu_has_vnni() else "avx2"
    return target


@contextlib.contextmanager
def for_onnxruntime(target: str = "auto"):
    """Exports inside this block use the forms ONNX Runtime's CPU provider runs as integer kernels (module
    docstring); the default is the portable QDQ form TensorRT reads.

    ``target`` picks which CPUs the file is exact on. ``"avx2"``: every x86 CPU (uint8 x uint8 integer GEMMs
    only; signed conv inputs stay float convs). ``"vnni"``: only CPUs with AVX-512 VNNI or AVX-VNNI, where ORT's
    uint8 x int8 kernels sum in int32: int8 weights enter MatMulInteger as they are and convs reading a signed
    int8 input become QLinearConv, faster, but on a CPU without VNNI such a file saturates int16 pair sums and
    gives wrong results. ``"auto"`` (default): ``"vnni"`` when the exporting CPU has VNNI, else ``"avx2"``: a
    file exported with auto on a VNNI machine is for VNNI machines. The chosen target is the context value
    (``with for_onnxruntime() as target``)."""
    resolved = resolve_ort_target(target)
    token = _ORT_FORM.set(resolved)
    try:
        yield resolved
    finally:
        _ORT_FORM.reset(token)


def export_form() -> str:
    """The form exports take here: ``"qdq"`` (portable, the default) or the ``for_onnxruntime`` target
    (``"avx2"`` / ``"vnni"``); export_onnx writes it into the file's metadata (``slimgraph.onnx_form``)."""
    return _ORT_FORM.get() or "qdq"


def _vnni() -> bool:
    return _ORT_FORM.get() == "vnni"


def _const(array: np.ndarray):
    return op.Constant(value=ir.tensor(array))


def _scalar(value: float):
    return _const(np.array(value, np.float32))


def _zero_point(n: int | None = None):
    """Symmetric int8 zero point: a scalar, or one per channel for per-axis scales."""
    return _const(np.zeros(() if n is None else (n,), np.int8))


def _dynamic_zero_point(scale, value: int = 0, dtype=np.int8):
    return op.ConstantOfShape(op.Shape(scale), value=ir.tensor(np.array([value], dtype)))


def _writer(x):
    """The QuantizeLinear node that wrote int8 ``x``, looking through ops that move int8 values unchanged (layout
    ops, MaxPool, and Relu on a symmetric int8 value); None for a graph input or constant. In ORT form an int8
    value from any other op has an unknown zero point: that stops the export instead of guessing."""
    value, through_relu = x, False
    while isinstance(value, ir.Value) and (node := value.producer()) is not None:
        if node.op_type == "QuantizeLinear" and node.domain in ("", "ai.onnx"):
            shifted = len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].meta.get(_SHIFTED)
            if through_relu and shifted:  # an int8 Relu clamps at 0, i.e. at 128 * scale for this tensor
                _unknown_zero_point(x, "Relu")
            return node
        if node.op_type == "Relu":
            through_relu = True
        elif node.op_type not in _INT8_PASSTHROUGH:
            if _ORT_FORM.get() and node.op_type != "Constant":
                _unknown_zero_point(x, node.op_type)
            return None
        value = node.inputs[0]
    return None


def _unknown_zero_point(x, op_type: str):
    raise SlimgraphError(f"ONNX export for onnxruntime: the int8 value {x.name!r} comes through a {op_type} node "
                         "that does not keep its zero point; export without for_onnxruntime() (the portable QDQ "
                         "form) instead")


def _written_zero_point(x):
    """The zero point ``x`` was quantized with: a requantized Relu output carries -128 (see the module docstring),
    every other int8 tensor of ours (graph inputs, constants, boundary quantizers) the symmetric 0."""
    writer = _writer(x)
    if writer is not None and len(writer.inputs) > 2 and writer.inputs[2] is not None:
        return writer.inputs[2]
    return _zero_point()


def _shifted(x) -> bool:
    """``x`` is a Relu output written with zero point -128 (ORT form): ORT's kernels read it as uint8 in [0, 127]."""
    writer = _writer(x)
    return writer is not None and len(writer.inputs) > 2 and bool(writer.inputs[2].meta.get(_SHIFTED))


def _dequantize_input(x, x_scale, integer_conv: bool = True):
    """Float ``x`` for a conv; ``integer_conv``: ORT may run the conv as QLinearConv (DQ -> Conv -> Q)."""
    if _ORT_FORM.get() and not _shifted(x) and (_ORT_FORM.get() == "avx2" or not integer_conv):
        # A signed int8 input would enter ORT's uint8 x int8 kernels as q + 128, whose int16 pair sums saturate on
        # CPUs without VNNI (module docstring): dequantized by arithmetic, ORT keeps this conv in float, exact.
        # On VNNI targets the DequantizeLinear below lets ORT run a conv with int8 output as QLinearConv; a
        # float-output conv stays float in ORT anyway, and a DequantizeLinear of its own would be merged by ORT's
        # common-subexpression pass with that of an integer conv reading the same input (a block's conv1 and
        # its shortcut conv), and ORT forms no QLinearConv from a DequantizeLinear with two readers.
        return op.Mul(op.Cast(x, to=_FLOAT), x_scale)
    if _ORT_FORM.get() == "vnni" and (requantized := _relu_of_symmetric(x)) is not None:
        return op.DequantizeLinear(requantized, x_scale, requantized.producer().inputs[2])
    return op.DequantizeLinear(x, x_scale, _written_zero_point(x))


def _relu_of_symmetric(x):
    """For ``x = Relu(QuantizeLinear(v, s, 0))`` (a quantizer hoisted above a Relu): ``QuantizeLinear(Relu(v), s,
    -128)``, the Relu-epilogue form (:func:`_requantize_output`), else None. ORT forms no QLinearConv from a
    DequantizeLinear that reads an int8 Relu; from this form it drops the Relu into the quantizer. The same
    integers inside the calibrated range [0, 127 * s]; above it, up to 255 * s where torch saturates at 127 * s."""
    relu = x.producer() if isinstance(x, ir.Value) else None
    if relu is None or relu.op_type != "Relu":
        return None
    writer = relu.inputs[0].producer()
    if writer is None or writer.op_type != "QuantizeLinear" or writer.domain not in ("", "ai.onnx"):
        return None
    if len(writer.inputs) > 2 and writer.inputs[2] is not None and writer.inputs[2].meta.get(_SHIFTED):
        return None
    return op.QuantizeLinear(op.Relu(writer.inputs[0]), writer.inputs[1], _relu_zero_point())


def _relu_zero_point(unsigned: bool = True):
    """The zero point of a Relu output in ORT form, the bottom of its range: a uint8 tensor with zero point 0 (the
    int8 integers with zero point -128, + 128: what ORT's kernels read). Not int8 -128: ORT turns an int8
    QuantizeLinear into uint8 only where one DequantizeLinear reads it directly, so a value read by two integer
    convs (a stride-2 block's conv1 and shortcut) or through a MaxPool (a stem's pooled output, also read by a
    residual add) stayed int8 while the convs' outputs became uint8, and ORT fused none of those convs.
    ``unsigned=False``: int8 -128, for a Linear's output, whose value the exported graph declares int8 after
    its row Reshape (a Linear's output has one reader: ORT converts it)."""
    zero_point = _const(np.array(0, np.uint8) if unsigned else np.array(-128, np.int8))
    zero_point.meta[_SHIFTED] = True
    return zero_point


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


def _requantize_output(y, act: str, out_scale, unsigned: bool = True):
    """act(y) quantized with ``out_scale``; in ORT form a Relu's output at the bottom of its range
    (:func:`_relu_zero_point`: uint8 0 after a conv, int8 -128 after a Linear, ``unsigned=False``) so that ORT folds
    the Relu into the QuantizeLinear and the Conv/Gemm before it into an integer kernel with int8 output."""
    if act == "relu" and _ORT_FORM.get():
        return op.QuantizeLinear(op.Relu(y), out_scale, _relu_zero_point(unsigned))
    return op.QuantizeLinear(_activation(y, act), out_scale, _zero_point())


def _cast_out(y, out_dtype: int):
    return y if out_dtype in (-1, _FLOAT) else op.Cast(y, to=out_dtype)


def _dequantized_weight(w, w_scale):
    return op.DequantizeLinear(w, w_scale, _zero_point(w.shape[0]), axis=0)


def _int32_bias(bias, x_scale, w_scale, n: int):
    """The bias on the int32 accumulator's grid (scale x_scale * w_scale, zero point 0), behind DequantizeLinear:
    the form ORT needs to run a float-output Gemm as QGemm. Rounding moves each bias by at most half a step of
    the accumulator, far below the int8 activation's own rounding. The arithmetic is on initializers only, so
    the exporter/ORT fold it to one int32 constant."""
    scale = op.Mul(op.Reshape(x_scale, _const(np.array([1], np.int64))), w_scale)
    steps = op.Clip(op.Round(op.Div(bias, scale)), _scalar(-_INT32_LIMIT), _scalar(_INT32_LIMIT))
    return op.DequantizeLinear(op.Cast(steps, to=_INT32), scale, _const(np.zeros((n,), np.int32)), axis=0)


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


def dequantize_per_tensor(q, scale):
    # the zero point q was written with: -128 after a Relu epilogue in ORT form, else 0
    return op.DequantizeLinear(q, scale, _written_zero_point(q))


def _row_scales(x2d):
    absmax = op.Max(op.ReduceMax(op.Abs(x2d), _const(np.array([1], np.int64)), keepdims=0),
                    _const(np.array(1e-12, np.float32)))
    return op.Div(absmax, _const(np.array(127.0, np.float32)))


def _quantize_rows(x2d):
    scale = _row_scales(x2d)
    q = op.QuantizeLinear(x2d, scale, _dynamic_zero_point(scale), axis=0)
    q.meta[_PER_ROW] = True
    return q, scale


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
    if _ORT_FORM.get() and not _shifted(x):  # signed input: exact uint8 x uint8 MatMulInteger (module docstring)
        if out_scale is None:
            return _cast_out(_integer_matmul_rows(x, x_scale, w, w_scale, bias, act, per_tensor=True), out_dtype)
        y = _integer_matmul_rows(x, x_scale, w, w_scale, bias, "none", per_tensor=True)
        return _requantize_output(y, act, out_scale, unsigned=False)
    xf = op.DequantizeLinear(_rows(x, k), x_scale, _written_zero_point(x))
    if out_scale is not None:  # Gemm -> Q: ORT takes the float bias itself here
        y = _requantize_output(_gemm(xf, _dequantized_weight(w, w_scale), bias), act, out_scale,
                               unsigned=False)
        return _restore_rows(y, x, n)
    if bias is not None and _ORT_FORM.get():
        bias = _int32_bias(bias, x_scale, w_scale, n)
    y = _restore_rows(_activation(_gemm(xf, _dequantized_weight(w, w_scale), bias), act), x, n)
    return _cast_out(y, out_dtype)


def _uint8_rows(x, k: int):
    """int8 per-row quantized ``x`` as uint8 rows ``[M, K]`` with zero point 128 (MatMulInteger's exact form).

    When ``x`` is our per-row QuantizeLinear's output, reshaped only, the same float rows and scales are quantized
    again straight to uint8 (the int8 QuantizeLinear is then unused and ORT drops it); otherwise shifted by 128."""
    value = x
    while isinstance(value, ir.Value) and (node := value.producer()) is not None and node.op_type == "Reshape":
        value = node.inputs[0]  # a Reshape keeps the row-major order of the rows; a Transpose would not
    writer = value.producer() if isinstance(value, ir.Value) else None
    if writer is not None and writer.op_type == "QuantizeLinear" and value.meta.get(_PER_ROW):
        rows, scale = writer.inputs[0], writer.inputs[1]  # [M, K] rows and their [M] scales
        return op.QuantizeLinear(rows, scale, _dynamic_zero_point(scale, 128, np.uint8), axis=0)
    if writer is not None and writer.op_type == "QuantizeLinear" and value is x:  # a static per-tensor quantizer
        return _rows(op.QuantizeLinear(writer.inputs[0], writer.inputs[1], _const(np.array(128, np.uint8))), k)
    shifted = op.Add(op.Cast(_rows(x, k), to=_INT32), _const(np.array(128, np.int32)))
    return op.Cast(shifted, to=_UINT8)


def _integer_matmul_rows(x, x_scale, w, w_scale, bias, act: str, per_tensor: bool = False):
    """ORT form of qlinear_dynamic: exact int32 sums, then the reference's epilogue ``acc * x_scale[row] * w_scale
    + bias`` and the activation, in float.

    One ``MatMulIntegerToFloat`` (com.microsoft) computes ``acc * a_scale * w_scale`` in the GEMM's output stage:
    with a per-tensor ``x_scale`` (static) that and the bias are the whole epilogue; per-row scales, which the op
    does not take, follow as one Mul (and the bias as one Add, which ORT fuses with a following Gelu). Operands:
    uint8 activations (zero point 128) times int8 weights on VNNI targets, else times uint8 weights + 128
    (zero point 128): both exact on their targets (module docstring)."""
    n, k = w.shape[0], w.shape[1]
    w_t = op.Transpose(w, perm=[1, 0])  # initializer arithmetic: folded to one [K, N] constant
    if _vnni():
        w_q, w_zero = w_t, None
    else:
        w_q = op.Cast(op.Add(op.Cast(w_t, to=_INT32), _const(np.array(128, np.int32))), to=_UINT8)
        w_zero = _const(np.array(128, np.uint8))
    a_zero = _const(np.array(128, np.uint8))
    if per_tensor:
        scale = op.Reshape(x_scale, _const(np.array([], np.int64)))
        y = _MATMUL_INTEGER_TO_FLOAT(_uint8_rows(x, k), w_q, scale, w_scale, a_zero, w_zero, bias)
    else:
        y = _MATMUL_INTEGER_TO_FLOAT(_uint8_rows(x, k), w_q, _scalar(1.0), w_scale, a_zero, w_zero)
        y = op.Mul(y, op.Reshape(x_scale, _const(np.array([-1, 1], np.int64))))
        if bias is not None:
            y = op.Add(y, bias)
        if _same_rows(x_scale, x):
            # the output's leading dims from the row scales: reading Shape(x) would keep x's int8 quantizer, whose
            # values nothing else reads (the GEMM re-quantizes the float rows to uint8), running in ORT
            shape = op.Concat(op.Shape(x_scale), _const(np.array([n], np.int64)), axis=0)
            return op.Reshape(_activation(y, act), shape)
    return _restore_rows(_activation(y, act), x, n)


def _same_rows(x_scale, x) -> bool:
    """``x_scale`` holds one scale per row of ``x``, shaped like x's leading dims (as the per-token quantizer
    writes it), as far as the traced shapes tell: equal static sizes or equal named symbolic dims."""
    if x_scale.shape is None or x.shape is None or len(x_scale.shape) != len(x.shape) - 1:
        return False
    for a, b in zip(x_scale.shape, x.shape[:-1], strict=True):
        a, b = (d if isinstance(d, int) else getattr(d, "value", None) for d in (a, b))
        if a is None or a != b:
            return False
    return True


def qlinear_dynamic(x, x_scale, w, w_scale, bias=None, act: str = "none", out_dtype: int = _FLOAT):
    if _ORT_FORM.get():
        return _cast_out(_integer_matmul_rows(x, x_scale, w, w_scale, bias, act), out_dtype)
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
    # ORT runs QLinearConv for DQ -> Conv -> Q only, and in the avx2 form only for an input from a Relu epilogue
    integer = out_scale is not None and (_ORT_FORM.get() != "avx2" or _shifted(x))
    xf = _dequantize_input(x, x_scale, integer_conv=integer)
    if _ORT_FORM.get() and not integer:
        # a float-output conv stays float in ORT: its weight dequantized by arithmetic on initializers, which ORT
        # folds to a float constant (it keeps DequantizeLinear unfolded for its QDQ fusions, and then both
        # dequantizes the weight at every run and runs a plain conv instead of its blocked NCHWc one)
        shape = _const(np.array([-1] + [1] * (len(w.shape) - 1), np.int64))
        wf = op.Mul(op.Cast(w, to=_FLOAT), op.Reshape(w_scale, shape))
    else:
        wf = _dequantized_weight(w, w_scale)
    y = _conv(xf, wf, bias, stride, padding, dilation, groups)
    if out_scale is not None:  # Conv -> Q: ORT forms QLinearConv (it takes the float bias itself)
        return _requantize_output(y, act, out_scale)
    return _cast_out(_activation(y, act), out_dtype)


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
    sgops.dequantize_per_tensor.default: dequantize_per_tensor,
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
