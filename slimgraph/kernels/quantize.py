"""Per-token int8 quantization, alone or fused behind LayerNorm / RMSNorm, in one pass over each row.

    scale = max(|y|) / 127 per row,  q = round_half_even(y * (127 / max|y|)) in [-127, 127],  y ≈ q * scale

with ``y = x`` (``quantize_per_token``), ``y = LayerNorm(x)`` (``layernorm_quantize``) or ``y = RMSNorm(x)``
(``rmsnorm_quantize``). The fused variants let the normalization that feeds a W8A8 GEMM write int8 directly: the
fp16 normalized activations never reach device memory (2 B/elem written and re-read saved; the kernel moves 2 B
in and 1 B out per element). Statistics, normalization and quantization are computed in fp32; the fused result
is therefore slightly *more* accurate than LayerNorm-in-fp16 followed by quantize_per_token.

Rows whose absolute maximum is below ``MIN_ABSMAX`` (all-zero rows) are quantized against ``MIN_ABSMAX``: their
scale stays positive and finite and q is 0, never NaN. Inputs are assumed finite.

Kernel design: one program per row. Rows up to ``MAX_ONE_PASS`` elements are held in registers (one read of x);
longer rows take a chunked path that re-reads the row (from L2) once per statistic. Memory-bound: block size and
warps follow the row length (table below), there is no GEMM-style autotuning to do. Rounding is exact
round-half-to-even built from floor() (the GPU's ``rint`` is not reachable portably from Triton 3.6-3.9 and the
interpreter), so the kernel matches ``torch.round`` bit for bit.

Functions: :func:`quantize_per_token`, :func:`layernorm_quantize`, :func:`rmsnorm_quantize` (dispatch: Triton or
the torch reference, see :mod:`.dispatch`), :func:`norm_quantize_kernel` (the launcher),
:func:`quantize_rows_reference`.
They are plain functions, not graph ops: graphs call ``slimgraph::dynamic_quantize_per_token`` /
``layer_norm_quantize_per_token`` (:mod:`slimgraph.ops.quantize`), which run these. RMSNorm has a kernel path but no
graph op yet: the quantization rewrite fuses LayerNorm only.
"""

from __future__ import annotations

from math import prod

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..errors import InputError
from .checks import check_same_device, check_tensor, check_vector
from .dispatch import use_triton
from .launch import candidate_configs, launch
from .tiles import next_power_of_2

__all__ = [
    "MIN_ABSMAX",
    "layernorm_quantize",
    "quantize_per_token",
    "quantize_rows_reference",
    "rmsnorm_quantize",
]

MIN_ABSMAX = 1e-12
MAX_ONE_PASS = 16384  # elements of one row kept in registers (fp32: 64 KiB spread over up to 16 warps)
_NONE, _LAYERNORM, _RMSNORM = 0, 1, 2
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _row_config(k: int, block_k: int | None = None) -> triton.Config:
    """Row-length buckets (UNTUNED GUESSES): about 8-16 elements per thread so each thread issues 16-byte loads."""
    block = block_k or min(next_power_of_2(k), MAX_ONE_PASS)
    warps = 1 if block <= 256 else 2 if block <= 512 else 4 if block <= 2048 else 8 if block <= 8192 else 16
    return triton.Config({"BLOCK_K": block}, num_warps=warps, num_stages=1)


@triton.jit
def _round_half_even(v):
    # Exact: v - floor(v) is exact in fp32 for |v| < 2**23, unlike floor(v + 0.5), which misrounds 0.49999997.
    f = tl.floor(v)
    frac = v - f
    fi = f.to(tl.int32)
    up = (frac > 0.5) | ((frac == 0.5) & ((fi & 1) == 1))
    return fi + up.to(tl.int32)


@triton.jit
def _rsqrt(v):
    # Correctly rounded sqrt and division (tl.sqrt and "/" are approximate on the GPU): once per row, free.
    return tl.math.div_rn(1.0, tl.math.sqrt_rn(v))


@triton.jit
def _normalized(x, mask, offs, mean, rstd, w_ptr, b_ptr,
                NORM: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):  # fmt: skip
    if NORM == 1:
        y = (x - mean) * rstd
    elif NORM == 2:
        y = x * rstd
    else:
        y = x
    if HAS_W:
        y = y * tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, y, 0.0)  # lanes past K must not reach the absmax


@triton.jit
def _store_quantized(q_row, offs, mask, y, inv):
    q = _round_half_even(y * inv)
    q = tl.minimum(tl.maximum(q, -127), 127)
    tl.store(q_row + offs, q.to(tl.int8), mask=mask)


@triton.jit
def _norm_quant_kernel(
    x_ptr, w_ptr, b_ptr, q_ptr, scale_ptr,
    K, eps, min_absmax,
    NORM: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, ONE_PASS: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)  # int64: rows * K may pass 2**31 elements
    x_row = x_ptr + row * K
    q_row = q_ptr + row * K
    offs0 = tl.arange(0, BLOCK_K)
    if ONE_PASS:
        mask = offs0 < K
        x = tl.load(x_row + offs0, mask=mask, other=0.0).to(tl.float32)
        mean = 0.0
        rstd = 1.0
        if NORM == 1:
            mean = tl.sum(x, axis=0) / K
            centered = tl.where(mask, x - mean, 0.0)
            rstd = _rsqrt(tl.sum(centered * centered, axis=0) / K + eps)
        elif NORM == 2:
            rstd = _rsqrt(tl.sum(x * x, axis=0) / K + eps)
        y = _normalized(x, mask, offs0, mean, rstd, w_ptr, b_ptr, NORM, HAS_W, HAS_B)
        absmax = tl.maximum(tl.max(tl.abs(y), axis=0), min_absmax)
        tl.store(scale_ptr + row, tl.math.div_rn(absmax, 127.0))
        _store_quantized(q_row, offs0, mask, y, tl.math.div_rn(127.0, absmax))
    else:
        # Rows too long for registers: one sweep per statistic; the re-reads of the row hit L2.
        mean = 0.0
        rstd = 1.0
        if NORM == 1:
            acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                acc += tl.load(x_row + k0 + offs0, mask=k0 + offs0 < K, other=0.0).to(tl.float32)
            mean = tl.sum(acc, axis=0) / K
            acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                mask = k0 + offs0 < K
                x = tl.load(x_row + k0 + offs0, mask=mask, other=0.0).to(tl.float32)
                centered = tl.where(mask, x - mean, 0.0)
                acc += centered * centered
            rstd = _rsqrt(tl.sum(acc, axis=0) / K + eps)
        elif NORM == 2:
            acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                x = tl.load(x_row + k0 + offs0, mask=k0 + offs0 < K, other=0.0).to(tl.float32)
                acc += x * x
            rstd = _rsqrt(tl.sum(acc, axis=0) / K + eps)
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            mask = k0 + offs0 < K
            x = tl.load(x_row + k0 + offs0, mask=mask, other=0.0).to(tl.float32)
            y = _normalized(x, mask, k0 + offs0, mean, rstd, w_ptr, b_ptr, NORM, HAS_W, HAS_B)
            amax = tl.maximum(amax, tl.abs(y))
        absmax = tl.maximum(tl.max(amax, axis=0), min_absmax)
        tl.store(scale_ptr + row, tl.math.div_rn(absmax, 127.0))
        inv = tl.math.div_rn(127.0, absmax)
        for k0 in range(0, K, BLOCK_K):
            mask = k0 + offs0 < K
            x = tl.load(x_row + k0 + offs0, mask=mask, other=0.0).to(tl.float32)
            y = _normalized(x, mask, k0 + offs0, mean, rstd, w_ptr, b_ptr, NORM, HAS_W, HAS_B)
            _store_quantized(q_row, k0 + offs0, mask, y, inv)


# ------------------------------------------------------------------------------------------------ checks, launch


def _check(op: str, x, weight=None, bias=None, eps: float = 0.0) -> tuple[int, int]:
    check_tensor(op, "x", x, dtypes=_FLOATS, min_dim=1)
    K = x.shape[-1]
    if K == 0:
        raise InputError(f"{op}: argument 'x' must have a non-empty last dim, got shape {tuple(x.shape)}")
    if weight is not None:
        check_vector(op, "weight", weight, K, dtypes=_FLOATS)
    if bias is not None:
        check_vector(op, "bias", bias, K, dtypes=_FLOATS)
    if not eps >= 0.0:
        raise InputError(f"{op}: argument 'eps' must be >= 0, got {eps}")
    check_same_device(op, x=x, weight=weight, bias=bias)
    return prod(x.shape[:-1]), K


def norm_quantize_kernel(x, weight=None, bias=None, eps: float = 0.0, *, norm: str = "none", block_k=None):
    """Run the Triton kernel directly; ``norm`` is "none", "layernorm" or "rmsnorm"; ``block_k`` (tests) forces a
    block size, and with it the chunked path when smaller than the row."""
    code = {"none": _NONE, "layernorm": _LAYERNORM, "rmsnorm": _RMSNORM}[norm]
    M, K = _check(f"{norm}_quantize" if code else "quantize_per_token", x, weight, bias, eps)
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scale = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    if M == 0:
        return q, scale
    config = _row_config(K, block_k)
    configs = candidate_configs([config], interpreter_config=config, config=config)
    dummy = x  # never read: HAS_W / HAS_B are compile-time False
    launch(
        _norm_quant_kernel,
        lambda meta: (M,),
        (x, weight if weight is not None else dummy, bias if bias is not None else dummy, q, scale,
         K, float(eps), MIN_ABSMAX),
        configs=configs,
        key=("K",),
        bucket="rows",
        NORM=code,
        HAS_W=weight is not None,
        HAS_B=bias is not None,
        ONE_PASS=K <= config.kwargs["BLOCK_K"],
    )  # fmt: skip
    return q, scale


# ----------------------------------------------------------------------------------------------------- reference


def quantize_rows_reference(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantization of ``y`` (computed in fp32), the arithmetic of the kernel."""
    y = y.to(torch.float32)
    absmax = y.abs().amax(dim=-1).clamp_min(MIN_ABSMAX)
    scale = absmax / 127.0
    inv = torch.full_like(absmax, 127.0) / absmax  # not 127.0 / absmax: torch evaluates that as 127 * (1 / absmax)
    q = torch.round(y * inv.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return q, scale


def layernorm_quantize_reference(x, weight=None, bias=None, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`layernorm_quantize`'s arithmetic in plain ATen ops (statistics in fp32), any device."""
    return _reference(x, weight, bias, eps, _LAYERNORM)


def _reference(x, weight, bias, eps, code):
    x32 = x.to(torch.float32)
    w32 = weight.to(torch.float32) if weight is not None else None
    if code == _LAYERNORM:
        y = F.layer_norm(x32, (x.shape[-1],), w32, bias.to(torch.float32) if bias is not None else None, eps)
    elif code == _RMSNORM:
        y = F.rms_norm(x32, (x.shape[-1],), w32, eps)
    else:
        y = x32
    return quantize_rows_reference(y)


# --------------------------------------------------------------------------------------------------- public API


def _dispatch(norm: str, x, weight, bias, eps: float):
    if use_triton(x):
        return norm_quantize_kernel(x, weight, bias, eps, norm=norm)
    code = {"none": _NONE, "layernorm": _LAYERNORM, "rmsnorm": _RMSNORM}[norm]
    _check(f"{norm}_quantize" if code else "quantize_per_token", x, weight, bias, eps)
    return _reference(x, weight, bias, eps, code)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantization: returns ``q`` int8 shaped like ``x`` and ``scale`` float32
    ``x.shape[:-1]`` with ``x ≈ q * scale[..., None]``, ``q`` in [-127, 127].

    ``x`` is fp16/bf16/fp32 ``[..., K]``, contiguous. Also the per-output-channel weight quantizer: for a Linear
    weight ``[N, K]`` it returns the int8 weight and its ``[N]`` scales.
    """
    return _dispatch("none", x, None, None, 0.0)


def layernorm_quantize(x, weight=None, bias=None, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_per_token(F.layer_norm(x, (K,), weight, bias, eps))`` in one kernel (statistics in fp32)."""
    return _dispatch("layernorm", x, weight, bias, float(eps))


def rmsnorm_quantize(x, weight=None, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_per_token(F.rms_norm(x, (K,), weight, eps))`` in one kernel (statistics in fp32)."""
    return _dispatch("rmsnorm", x, weight, None, float(eps))
