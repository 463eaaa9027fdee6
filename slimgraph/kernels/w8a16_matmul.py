"""Weight-only int8 GEMM (W8A16): ``out = (x @ w.T) * w_scale + bias`` with int8 weights dequantized in registers.

For decode (M <= 16) a Linear layer is memory-bound on its weight: int8 halves the bytes of fp16, so the floor
time halves. The kernel loads int8 weight tiles, converts them to the activation dtype in registers (exact:
|q| <= 127 fits the fp16 and bf16 mantissas), accumulates in fp32 on the tensor cores, and applies the
per-output-channel scale once per output in the epilogue rather than once per weight element.

Decode configs use 16-row tiles (the smallest tl.dot) and narrow N tiles; when N / BLOCK_N programs still leave
SMs idle (N <= ~4096 at 132 SMs), the K loop is split over ``SPLIT_K`` programs that write fp32 partial sums,
summed and cast by a small second kernel (deterministic, unlike atomics; no zero-fill needed).

fp32 activations use an IEEE fp32 dot (exact but slow): the fast paths are fp16 and bf16.

Functions: :func:`w8a16_matmul` (dispatch: Triton or the torch reference), :func:`w8a16_matmul_kernel` (the
launcher), :func:`w8a16_matmul_reference`. Graphs reach them through ``slimgraph::qlinear_w8a16``
(:mod:`slimgraph.ops.weight_only`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import InputError
from .checks import check_gemm_operands, check_same_device, check_vector
from .dispatch import interpreter_requested, use_triton
from .launch import candidate_configs, launch
from .tiles import (
    EVEN_K_PER_SPLIT,
    decode_split_k,
    k_major_tiles,
    launch_gemm,
    load_k_step,
    m_bucket,
    tile_config,
    tile_table,
)

__all__ = ["CONFIGS", "GEMV_CONFIGS", "INTERPRETER_CONFIG", "w8a16_matmul", "w8a16_matmul_reference"]

OP = "w8a16_matmul"
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


# Rows of (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). UNTUNED GUESSES (never measured on our H100); first row =
# default when autotuning is off.
CONFIGS: dict[str, list[triton.Config]] = tile_table({
    # Decode: stream the weight. 64-wide N tiles keep 64 programs per 4096 columns (split-K fills the rest),
    # K steps of 128-256 elements = 8-16 KiB of weight per stage, 4-5 stages in flight per program.
    # 16x64x128 s5: ptxas capped it at 80 registers and spilled 12 B on sm_90a (fp16 x, packed int8 -> fp16
    # conversion); a 128-register ceiling lets it take 97, spill-free (bench/aot.py).
    "m16": [(16, 64, 256, 4, 4), (16, 32, 256, 4, 5), tile_config(16, 64, 128, 4, 5, maxnreg=128),
            (16, 128, 128, 4, 4), (16, 128, 256, 8, 3)],
    # 64x128x64 with 4 warps spilled on sm_80 in the AOT check (bench/aot.py): 8 warps for that tile.
    "m64": [(64, 64, 128, 4, 4), (32, 64, 128, 4, 4), (64, 128, 64, 8, 4), (32, 128, 128, 4, 4)],
    "m256": [(128, 128, 64, 8, 3), (64, 128, 64, 8, 4), (128, 64, 64, 4, 4), (64, 256, 64, 8, 3)],
    # Compute-bound: fp16 GEMM tiles; the int8 -> fp16 conversion hides under the MMAs. 128x256 and 256x128 spilled
    # on sm_80 in the AOT check.
    "large": [(128, 128, 64, 8, 4), (128, 128, 64, 8, 3), (128, 128, 32, 4, 4)],
})  # fmt: skip
INTERPRETER_CONFIG = tile_config(16, 16, 32, 4, 1, group=2)


def _gemv_cfg(bn, bk, warps, stages):
    return triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


# M = 1: no tensor-core tile (a 16-row dot would spend 15 of its 16 rows, and their x loads, on wrapped copies of the
# one row). UNTUNED: 16-byte weight loads per thread along K, 64-wide N tiles as the split-K rule assumes.
GEMV_CONFIGS = [_gemv_cfg(64, 256, 4, 4), _gemv_cfg(32, 512, 4, 4), _gemv_cfg(128, 128, 4, 4)]
GEMV_INTERPRETER_CONFIG = _gemv_cfg(16, 32, 4, 1)
_DECODE_BLOCK_N = 64  # what the split-K rule assumes of the decode configs' N tile
MAX_SPLIT_K = 8


@triton.jit
def _dequant_int8(w, DTYPE: tl.constexpr):
    """int8 tile -> ``DTYPE``, exact for every int8, without an int -> float ``cvt`` per element for fp16 / fp32.

    Magic-number trick: with the sign bit flipped the byte is ``v + 128`` in [0, 255]; in the low mantissa bits of
    fp16 1024.0 (0x6400: spacing 1 on [1024, 2048)) it reads as ``1024 + v + 128``, and subtracting 1152 leaves
    ``v`` exactly. Flipping bit 7 and setting 0x6400 is one xor with 0x6480 on the zero-extended byte: on sm_90a a
    pair of weights costs a ``xor.b32`` and an ``add.f16x2`` (bytes unpacked by ``prmt``) instead of a
    ``cvt.rn.f16.s16`` each plus sign-extension cvts (sm_80: 16-bit xors, still no int -> float cvt). fp32 does
    the same on 2**23 (0x4B000000). bf16 keeps Triton's own conversion: its 7 mantissa bits cannot hold the byte,
    and on sm_90 Triton already lowers int8 -> bf16 to packed ``prmt`` / ``and`` / ``sub.bf16x2`` (the
    interpreter cannot run that cast: there the bf16 GEMM takes the fp32 form, DOT_FP32).
    """
    if DTYPE == tl.float16:
        return (w.to(tl.uint8, bitcast=True).to(tl.uint16) ^ 0x6480).to(tl.float16, bitcast=True) - 1152.0
    elif DTYPE == tl.float32:
        return (w.to(tl.uint8, bitcast=True).to(tl.uint32) ^ 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
    else:
        return w.to(DTYPE)


@triton.jit
def _w8a16_kernel(
    x_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_wn, stride_om, stride_split, stride_ws,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    offs_m, offs_n, rows, cols, x_ptrs, w_ptrs = k_major_tiles(x_ptr, w_ptr, M, N, stride_xm, stride_wn,
                                                               BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)  # fmt: skip
    pid_k = tl.program_id(1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K * SPLIT_K)):
        x, w, x_ptrs, w_ptrs = load_k_step(x_ptrs, w_ptrs, k, K, EVEN_K, SPLIT_K, BLOCK_K)
        if DOT_FP32:  # the interpreter cannot multiply bf16 tiles; same products, fp32 sums
            acc = tl.dot(x.to(tl.float32), _dequant_int8(w, tl.float32), acc, input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(x, _dequant_int8(w, x.dtype), acc, input_precision=DOT_PRECISION)

    y = acc * tl.load(w_scale_ptr + cols * stride_ws)[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols).to(tl.float32)
        y += tl.where(pid_k == 0, bias, 0.0)[None, :]  # added by one split only
    out_ptrs = out_ptr + pid_k.to(tl.int64) * stride_split + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _w8a16_gemv_kernel(
    x_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr,
    N, K,
    stride_wn, stride_split, stride_ws,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # One row of x: each K step loads its x slice once and the [BLOCK_N, BLOCK_K] weight tile (K-contiguous rows,
    # coalesced), converts each int8 weight once (straight to fp32, _dequant_int8) and reduces along K with fp32 FMAs.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = (offs_n % N).to(tl.int64)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + offs_k
    w_ptrs = w_ptr + cols[:, None] * stride_wn + offs_k[None, :]
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K * SPLIT_K)):
        if EVEN_K:
            x = tl.load(x_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_left = K - (k * SPLIT_K + pid_k) * BLOCK_K
            x = tl.load(x_ptrs, mask=offs_k - pid_k * BLOCK_K < k_left, other=0.0)
            w = tl.load(w_ptrs, mask=(offs_k - pid_k * BLOCK_K)[None, :] < k_left, other=0)
        acc += tl.sum(_dequant_int8(w, tl.float32) * x.to(tl.float32)[None, :], axis=1)
        x_ptrs += BLOCK_K * SPLIT_K
        w_ptrs += BLOCK_K * SPLIT_K
    y = acc * tl.load(w_scale_ptr + cols * stride_ws)
    if HAS_BIAS:
        y += tl.where(pid_k == 0, tl.load(bias_ptr + cols).to(tl.float32), 0.0)  # added by one split only
    tl.store(out_ptr + pid_k.to(tl.int64) * stride_split + offs_n, y.to(out_ptr.dtype.element_ty), mask=offs_n < N)


@triton.jit
def _split_k_sum_kernel(part_ptr, out_ptr, numel, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    parts = part_ptr + offs
    for _ in tl.static_range(SPLIT_K):
        acc += tl.load(parts, mask=mask, other=0.0)
        parts += numel  # pointer steps, not split * numel: that product may pass 2**31
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------ checks, launch


def _check(x, w, w_scale, bias) -> tuple[int, int, int]:
    M, N, K = check_gemm_operands(OP, "x", x, "w", w, x_dtypes=_FLOATS)
    check_vector(OP, "w_scale", w_scale, N, dtypes=(torch.float32,), allow_scalar=True)
    if bias is not None:
        check_vector(OP, "bias", bias, N, dtypes=_FLOATS)
    check_same_device(OP, x=x, w=w, w_scale=w_scale, bias=bias)
    return M, N, K


def choose_split_k(M: int, N: int, K: int, device: torch.device) -> int:
    """Split the K loop of decode GEMMs until the programs cover the SMs (the shared untuned rule)."""
    return decode_split_k(M, N, K, device, block_n=_DECODE_BLOCK_N, max_split=MAX_SPLIT_K)


def w8a16_matmul_kernel(x, w, w_scale, bias=None, *, config=None, split_k: int | None = None):
    """Run the Triton kernel directly (GPU, or CPU under the interpreter); ``config`` pins a tile config (a GEMM
    config, or at M = 1 a :data:`GEMV_CONFIGS` entry) and ``split_k`` the K split (tests, tuning). Same arguments
    and result as :func:`w8a16_matmul`."""
    M, N, K = _check(x, w, w_scale, bias)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out.reshape(*x.shape[:-1], N)
    if K == 0:
        return w8a16_matmul_reference(x, w, w_scale, bias)
    split = choose_split_k(M, N, K, x.device) if split_k is None else int(split_k)
    if split < 1:
        raise InputError(f"{OP}: split_k must be >= 1, got {split_k}")
    x2 = x.reshape(M, K)
    target = out if split == 1 else torch.empty((split, M, N), dtype=torch.float32, device=x.device)
    if M == 1 and (config is None or "BLOCK_M" not in config.kwargs):
        _launch_gemv(x2, w, w_scale, bias, target, split, config)
    else:
        _launch_gemm(x2, w, w_scale, bias, target, split, config)
    if split > 1:
        block = 1024
        sum_config = triton.Config({"BLOCK": block}, num_warps=4, num_stages=1)
        launch(
            _split_k_sum_kernel,
            lambda meta: (triton.cdiv(M * N, block),),
            (target, out, M * N),
            configs=[sum_config],
            key=(),
            bucket="split_k_sum",
            SPLIT_K=split,
        )
    return out.reshape(*x.shape[:-1], N)


def _launch_gemv(x2, w, w_scale, bias, target, split: int, config) -> None:
    N, K = w.shape
    configs = candidate_configs(GEMV_CONFIGS, interpreter_config=GEMV_INTERPRETER_CONFIG, config=config)
    launch(
        _w8a16_gemv_kernel,
        lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), split),
        (x2, w, w_scale, bias if bias is not None else w_scale, target, N, K, w.stride(0), N,
         0 if w_scale.numel() == 1 else 1),
        configs=configs,
        key=("N", "K", "SPLIT_K", "HAS_BIAS"),
        bucket="gemv",
        derived=EVEN_K_PER_SPLIT,
        HAS_BIAS=bias is not None,
        SPLIT_K=split,
    )  # fmt: skip


def _launch_gemm(x2, w, w_scale, bias, target, split: int, config) -> None:
    M, K = x2.shape
    N = w.shape[0]
    bucket = m_bucket(M)
    configs = candidate_configs(CONFIGS[bucket], interpreter_config=INTERPRETER_CONFIG, config=config)
    launch_gemm(
        _w8a16_kernel, M, N, split,
        (x2, w, w_scale, bias if bias is not None else w_scale, target,
         M, N, K,
         x2.stride(0), w.stride(0), N, M * N, 0 if w_scale.numel() == 1 else 1),
        configs=configs,
        key=("N", "K", "SPLIT_K", "HAS_BIAS"),
        bucket=bucket,
        HAS_BIAS=bias is not None,
        DOT_FP32=interpreter_requested() and x2.dtype == torch.bfloat16,
        DOT_PRECISION="ieee" if x2.dtype == torch.float32 else "tf32",
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------- reference


def w8a16_matmul_reference(x, w, w_scale, bias=None):
    """Pure torch, fp32 math as the kernel: (x @ w.T) * w_scale + bias, cast to x.dtype."""
    y = (x.to(torch.float32) @ w.to(torch.float32).t()) * w_scale.reshape(-1).to(torch.float32)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


# --------------------------------------------------------------------------------------------------- public API


def w8a16_matmul(x, w, w_scale, bias=None):
    """``(x @ w.T) * w_scale + bias`` with int8 weights, in ``x.dtype``.

    Args:
        x: fp16/bf16/fp32 ``[..., K]`` activations (leading dims flattened), contiguous.
        w: int8 ``[N, K]`` weight (nn.Linear layout), e.g. from :func:`quantize_per_token` applied to the weight.
        w_scale: float32 ``[N]`` per-output-channel scales, or a single element.
        bias: optional ``[N]`` fp16/bf16/fp32.

    Returns ``x.dtype`` ``[..., N]``. Triton on CUDA (or CPU with TRITON_INTERPRET=1), torch reference otherwise.
    """
    if use_triton(x):
        return w8a16_matmul_kernel(x, w, w_scale, bias)
    _check(x, w, w_scale, bias)
    return w8a16_matmul_reference(x, w, w_scale, bias)
