"""The real int8 path on x86 CPUs: oneDNN's int8 GEMM and convolution, as shipped in the torch CPU wheel.

The ``torch.ops.slimgraph`` int8 ops (:mod:`slimgraph.quant.ops`) call :func:`qlinear` / :func:`qconv` first on
CPU tensors; a ``None`` answer means "not here" and the op runs its pure-torch reference instead, so a graph stays
runnable on every CPU. The arithmetic is the reference's: int8 x int8 products summed exactly in int32, then
``acc * x_scale * w_scale[oc] + bias`` and the activation in fp32 (oneDNN applies scale, bias and activation
in its epilogue; only the order of the two scale multiplications differs, i.e. a float32 rounding step), and for
an int8 output the saturating requantization of ONNX QuantizeLinear (round half to even).

When oneDNN runs (:func:`available`):
  * x86-64 CPU, torch built with oneDNN (``torch.backends.mkldnn``), the ``torch.ops.onednn`` int8 ops present
    and a one-time smoke test passing. Elsewhere (ARM, a build without oneDNN) the reference runs.
  * ``SLIMGRAPH_ONEDNN=0`` in the environment turns the path off (to compare against the reference, or to rule
    it out when debugging).

Weights are prepacked once into oneDNN's blocked layout and cached per weight tensor (weakly: the cache entry
goes when the weight does; an in-place change of the weight, seen through its version counter, repacks it).

Three oneDNN constraints shape the calls:
  * fast kernels take unsigned activations only (the conv refuses int8 input; the GEMM accepts it but runs a
    reference loop, 1000x slower): the int8 input is mapped to uint8 with zero point 128 by flipping the sign
    bit (``q ^ 0x80 == q + 128``), which is exact;
  * on x86 CPUs without VNNI (AVX2 only, e.g. this project's 2-core machines) the uint8 x int8 kernels add each
    pair of neighbouring products in int16 with saturation (``vpmaddubsw``): 2 * 255 * 127 does not fit, so the
    sign-bit mapping above gives wrong sums for large activations (measured: 255 instead of 32258). Checked once
    at start-up (:func:`saturates`); there, only inputs in [0, 128] enter oneDNN (pairs <= 2 * 128 * 127 fit):
    a non-negative input (after ReLU, the usual CNN case) goes in as it is with zero point 0, one call; a signed
    one as its positive and negative parts, two calls whose float results are subtracted (exact sums, twice the
    work). Both are exact like the reference;
  * its per-tensor activation scale is one number: per-row (dynamic, per-token) scales multiply the int32 GEMM
    result after the call, before the bias, as in the reference.

Per-row (dynamic) Linears therefore gain nothing from oneDNN's epilogue, and they take ``torch._int_mm`` instead
where it sums exactly (:func:`int_mm_exact`, checked once at the int8 extremes): signed int8 x int8 -> int32, no
uint8 shift, no zero-point compensation, the weight kept transposed once per weight. Measured on the 2-core AVX-512
VNNI machine, one thread, interleaved (MiniLM's 256 x 384 x 1536 layer, per-row epilogue included): 0.53 ms
against 0.74 ms for the uint8 oneDNN call and its epilogue (bench/results/cpu-speed.md has the whole model).
"""

from __future__ import annotations

import logging
import os
import platform
from functools import cache

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from ..kernels.epilogue import apply_activation

__all__ = ["available", "cache_info", "clear_cache", "int_mm_exact", "int_mm_rows", "qconv", "qlinear", "saturates"]

log = logging.getLogger("slimgraph")

# slimgraph activation -> oneDNN (post-op name, scalars, algorithm); the rest runs after the call in torch.
_LINEAR_POST_OPS = {
    "none": ("none", [], ""),
    "relu": ("relu", [], ""),
    "relu6": ("hardtanh", [0.0, 6.0], ""),
    "gelu": ("gelu", [], "none"),
    "gelu_tanh": ("gelu", [], "tanh"),
    "silu": ("swish", [], ""),
    "tanh": ("tanh", [], ""),
    "hardswish": ("hardswish", [], ""),
}
_CONV_POST_OPS = {"none": ("none", [], ""), "relu": ("relu", [], "")}
_ZERO_POINT = 128  # int8 activations enter oneDNN as uint8 q + 128 (see the module docstring)

_packed: WeakTensorKeyDictionary = WeakTensorKeyDictionary()  # weight -> {layout key: (version, packed, zero pts)}
_stats = {"packs": 0, "hits": 0}


def _disabled_by_env() -> bool:
    value = os.environ.get("SLIMGRAPH_ONEDNN")  # read on every call (tests and users flip it at run time)
    return value is not None and value.strip().lower() in ("0", "false", "off", "no")


@cache
def _onednn_works() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False  # oneDNN's int8 ops are built for x86 in the torch wheels; ARM builds use other backends
    if not torch.backends.mkldnn.is_available():
        return False
    ops = getattr(torch.ops, "onednn", None)
    try:
        qlinear_op, qconv_op = ops.qlinear_pointwise, ops.qconv2d_pointwise
        w = torch.ones(2, 4, dtype=torch.int8)
        y = qlinear_op(torch.full((1, 4), 129, dtype=torch.uint8), 1.0, _ZERO_POINT, ops.qlinear_prepack(w, None),
                       torch.ones(2), torch.zeros(2, dtype=torch.int64), None, 1.0, 0, torch.float32, "none", [], "")
        cw = torch.ones(2, 1, 1, 1, dtype=torch.int8)
        packed = ops.qconv_prepack(cw, torch.ones(2), 1.0, _ZERO_POINT, [1, 1], [0, 0], [1, 1], 1, None)
        z = qconv_op(torch.full((1, 1, 2, 2), 129, dtype=torch.uint8), 1.0, _ZERO_POINT, packed, torch.ones(2),
                     torch.zeros(2, dtype=torch.int64), None, [1, 1], [0, 0], [1, 1], 1, 1.0, 0, torch.float32, "none",
                     [], "")
        return bool(torch.equal(y, torch.full((1, 2), 4.0)) and torch.equal(z, torch.ones(1, 2, 2, 2)))
    except (AttributeError, RuntimeError, NotImplementedError) as exc:
        log.info("oneDNN int8 ops unavailable, int8 layers use the torch reference on CPU (%s)", exc)
        return False


def available() -> bool:
    """True when int8 Linear/Conv on CPU tensors run through oneDNN (see the module docstring for when)."""
    return not _disabled_by_env() and _onednn_works()


@cache
def saturates() -> bool:
    """True when this CPU's oneDNN uint8 x int8 GEMM saturates pairs of products at int16 (x86 without VNNI)."""
    if not _onednn_works():
        return False
    ops = torch.ops.onednn
    packed = ops.qlinear_prepack(torch.full((1, 2), 127, dtype=torch.int8), None)
    y = ops.qlinear_pointwise(torch.full((1, 2), 255, dtype=torch.uint8), 1.0, 0, packed, torch.ones(1),
                              torch.zeros(1, dtype=torch.int64), None, 1.0, 0, torch.float32, "none", [], "")
    return float(y) != 2 * 255 * 127


@cache
def int_mm_exact() -> bool:
    """True when ``torch._int_mm`` on CPU sums int8 x int8 products exactly in int32 here: checked once at the int8
    extremes, where a kernel adding product pairs in int16 (x86 without VNNI) would saturate."""
    if not _onednn_works():
        return False
    k = 64
    x = torch.full((3, k), 127, dtype=torch.int8)
    x[1] = -128
    x[2, ::2] = -127
    w = torch.full((k, 2), 127, dtype=torch.int8)
    w[:, 1] = -127
    try:
        y = torch._int_mm(x, w)
    except (RuntimeError, NotImplementedError) as exc:
        log.info("torch._int_mm unavailable on CPU, dynamic int8 Linears use oneDNN's uint8 GEMM (%s)", exc)
        return False
    return bool(torch.equal(y.long(), x.long() @ w.long()))


def _unsigned_parts(q: torch.Tensor) -> list[tuple[torch.Tensor, int, float]]:
    """``q`` (int8) as oneDNN inputs ``[(uint8 tensor, zero point, sign)]`` whose signed sum is ``q``; see the
    module docstring (one input with zero point 128 where the kernels do not saturate, else parts in [0, 128])."""
    if not saturates():
        return [(_as_uint8(q), _ZERO_POINT, 1.0)]
    if bool((q >= 0).all()):
        return [(q.view(torch.uint8), 0, 1.0)]
    wide = q.to(torch.int16)
    return [(wide.clamp_min(0).to(torch.uint8), 0, 1.0), ((-wide).clamp_min(0).to(torch.uint8), 0, -1.0)]


def _signed_sum(parts: list[tuple[torch.Tensor, int, float]], call) -> torch.Tensor:
    """sum(sign * call(input, zero point)) over the parts; one call (no copy) for a single part."""
    y = None
    for xu, zero_point, sign in parts:
        part = call(xu, zero_point)
        y = part if y is None else (y.add_(part) if sign > 0 else y.sub_(part))
    return y


def clear_cache() -> None:
    _packed.clear()
    _stats.update(packs=0, hits=0)


def cache_info() -> dict:
    """``{"packs": weights packed so far, "hits": calls that reused a packed weight, "weights": cached now}``."""
    return {**_stats, "weights": len(_packed)}


def _version(w: torch.Tensor) -> int:
    # Inference tensors have no version counter; they cannot be changed in place outside inference mode either.
    return -1 if w.is_inference() else w._version


def _prepacked(w: torch.Tensor, key: tuple, pack) -> tuple[torch.Tensor, torch.Tensor]:
    per_weight = _packed.get(w)
    if per_weight is None:
        per_weight = _packed[w] = {}
    entry = per_weight.get(key)
    if entry is not None and entry[0] == _version(w):
        _stats["hits"] += 1
        return entry[1], entry[2]
    with torch.no_grad():
        packed = pack()
    zero_points = torch.zeros(w.shape[0], dtype=torch.int64)
    per_weight[key] = (_version(w), packed, zero_points)
    _stats["packs"] += 1
    return packed, zero_points


def _usable(*tensors: torch.Tensor | None) -> bool:
    if not available():
        return False
    for t in tensors:  # a plain loop: this runs on every int8 layer call, where microseconds add up
        if t is not None and t.device.type != "cpu":
            return False
    return True


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def _float_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.to(torch.float32)


def qlinear(x, x_scale, w, w_scale, bias, act: str, out_scale, out_dtype: torch.dtype, *,
            per_row: bool = False) -> torch.Tensor | None:
    """``act((x @ w.T) * x_scale * w_scale + bias)`` through oneDNN, or None where it does not apply.

    ``x`` int8 ``[..., K]``; ``x_scale`` one element (static) or, with ``per_row``, one per row shaped
    ``x.shape[:-1]`` (dynamic);
    ``w`` int8 ``[N, K]``, ``w_scale`` float32 ``[N]``; ``out_scale`` (static only) asks for the int8 requantized
    output. Returns ``out_dtype`` (or int8 with ``out_scale``) ``[..., N]``.
    """
    if not _usable(x, w, bias) or x.dtype != torch.int8 or w.dtype != torch.int8 or w.dim() != 2:
        return None
    if (x_scale.numel() != 1 and not per_row) or (per_row and out_scale is not None):
        return None
    if per_row and int_mm_exact():
        return _int_mm_rows(x, x_scale, w, w_scale, bias, act, out_dtype)
    w_scale = w_scale.to(torch.float32).reshape(-1).expand(w.shape[0]).contiguous()
    ops = torch.ops.onednn
    packed, w_zero = _prepacked(w, ("linear",), lambda: ops.qlinear_prepack(w, None))
    parts = _unsigned_parts(x.contiguous())
    if per_row:
        # Row scales cannot go into the oneDNN call: scale the exact int32 sums afterwards, then bias, activation.
        y = _signed_sum(parts, lambda xu, zp: ops.qlinear_pointwise(xu, 1.0, zp, packed, w_scale, w_zero, None, 1.0,
                                                                    0, torch.float32, "none", [], ""))
        y.mul_(x_scale.to(torch.float32).reshape(*x.shape[:-1], 1))
        if bias is not None:
            y.add_(bias.to(torch.float32))
        return apply_activation(y, act).to(out_dtype)
    name, scalars, algorithm = _LINEAR_POST_OPS.get(act, ("none", [], ""))
    fused = act in _LINEAR_POST_OPS
    x_scale = x_scale.to(torch.float32).reshape(())
    if len(parts) == 1:  # bias, activation and requantization in oneDNN's epilogue
        xu, zp, _ = parts[0]
        zero_point = torch.full((), zp, dtype=torch.int64)
        if out_scale is not None and fused:
            return ops.qlinear_pointwise.tensor(xu, x_scale, zero_point, packed, w_scale, w_zero, _float_bias(bias),
                                                float(out_scale), 0, torch.int8, name, scalars, algorithm)
        y = ops.qlinear_pointwise.tensor(xu, x_scale, zero_point, packed, w_scale, w_zero, _float_bias(bias), 1.0,
                                         0, torch.float32, name, scalars, algorithm)
    else:  # parts: the epilogue runs here, on their difference
        y = _signed_sum(parts, lambda xu, zp: ops.qlinear_pointwise.tensor(
            xu, x_scale, torch.full((), zp, dtype=torch.int64), packed, w_scale, w_zero, None, 1.0, 0, torch.float32,
            "none", [], ""))
        if bias is not None:
            y.add_(bias.to(torch.float32))
        fused = False
    if not fused:
        y = apply_activation(y, act)
    return y.to(out_dtype) if out_scale is None else _requantize(y, out_scale)


def _int_mm_rows(x, x_scale, w, w_scale, bias, act: str, out_dtype: torch.dtype) -> torch.Tensor:
    """Per-row scaled ``act((x @ w.T) * x_scale[:, None] * w_scale + bias)`` with ``torch._int_mm``'s exact sums."""
    wt, _ = _prepacked(w, ("int_mm",), lambda: w.t().contiguous())  # [K, N] row-major: _int_mm's fast layout
    return int_mm_rows(x, x_scale, wt, w_scale, bias, act, out_dtype)


def int_mm_rows(x, x_scale, w_kn, w_scale, bias, act: str, out_dtype: torch.dtype) -> torch.Tensor:
    """``qlinear_dynamic`` on a weight stored [K, N]: ``torch._int_mm``'s exact int32 sums, then the row scales, the
    column scales, the bias and the activation in fp32 (the reference's order). Plain ATen ops only, so the
    backend also hands it to Inductor, which fuses the epilogue (``backend.lower_int8_for_inductor``)."""
    k, n = w_kn.shape
    flat = x.dim() == 2
    acc = torch._int_mm(x if flat and x.is_contiguous() else x.reshape(-1, k).contiguous(), w_kn)
    # int32 * float32 row scales -> float32 in one pass; then the column scales and the bias in place (the
    # order the reference uses: rows first; measured the fastest of the forms tried)
    y = torch.mul(acc, _f32(x_scale).view(-1, 1) if x_scale.is_contiguous() else _f32(x_scale).reshape(-1, 1))
    y.mul_(_f32(w_scale).reshape(-1))
    if bias is not None:
        y.add_(_f32(bias))
    if act != "none":
        y = apply_activation(y, act)
    if out_dtype != torch.float32:
        y = y.to(out_dtype)
    return y if flat else y.view(*x.shape[:-1], n)


def _as_uint8(q: torch.Tensor) -> torch.Tensor:
    return torch.bitwise_xor(q.view(torch.uint8), 0x80)  # int8 q -> uint8 q + 128, exactly


def _requantize(y: torch.Tensor, out_scale: torch.Tensor) -> torch.Tensor:
    from .ops import quantize_tensor_reference

    return quantize_tensor_reference(y, out_scale)


def qconv(x, x_scale, w, w_scale, bias, stride, padding, dilation, groups: int, act: str, out_scale,
          out_dtype: torch.dtype) -> torch.Tensor | None:
    """int8 conv1d/conv2d (NCHW int8 ``x``, OIHW int8 ``w``, one ``x_scale``) through oneDNN, or None.

    Same contract as the ``qconv_static`` / ``qconv_dynamic`` ops: ``act(conv(x, w) * x_scale * w_scale + bias)``
    as ``out_dtype``, or requantized to int8 with ``out_scale``. The result is NCHW-contiguous like the reference.
    """
    if not _usable(x, w, bias) or x.dtype != torch.int8 or w.dtype != torch.int8 or x_scale.numel() != 1:
        return None
    if w.dim() not in (3, 4) or x.dim() != w.dim():
        return None
    conv1d = w.dim() == 3
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    if conv1d:  # a 1xL conv2d
        stride, padding, dilation = [1, stride[0]], [0, padding[0]], [1, dilation[0]]
    geometry = (tuple(stride), tuple(padding), tuple(dilation), groups)
    ops = torch.ops.onednn
    w_scale = w_scale.to(torch.float32).reshape(-1).expand(w.shape[0]).contiguous()

    def pack():
        weight = w.unsqueeze(2) if conv1d else w
        return ops.qconv_prepack(weight, w_scale, 1.0, _ZERO_POINT, stride, padding, dilation, groups, None)

    packed, w_zero = _prepacked(w, ("conv", *geometry), pack)
    parts = _unsigned_parts(x.unsqueeze(2) if conv1d else x)
    name, scalars, algorithm = _CONV_POST_OPS.get(act, ("none", [], ""))
    fused = act in _CONV_POST_OPS and len(parts) == 1  # parts: the epilogue runs here, on their difference
    x_scale = x_scale.to(torch.float32).reshape(())

    def call(xu, zp, out_scale=1.0, dtype=torch.float32, bias=None, post=("none", [], "")):
        return ops.qconv2d_pointwise.tensor(xu, x_scale, torch.full((), zp, dtype=torch.int64), packed, w_scale,
                                            w_zero, bias, stride, padding, dilation, groups, out_scale, 0, dtype,
                                            *post)

    if fused and out_scale is not None:
        xu, zp, _ = parts[0]
        y = call(xu, zp, float(out_scale), torch.int8, _float_bias(bias), (name, scalars, algorithm))
    else:
        if fused:
            xu, zp, _ = parts[0]
            y = call(xu, zp, bias=_float_bias(bias), post=(name, scalars, algorithm))
        else:
            y = _signed_sum(parts, call)
            if bias is not None:
                y.add_(bias.to(torch.float32).reshape(-1, *([1] * (y.dim() - 2))))
            y = apply_activation(y, act)
        y = y.to(out_dtype) if out_scale is None else _requantize(y, out_scale)
    if conv1d:
        y = y.squeeze(2)
    return y.contiguous()
