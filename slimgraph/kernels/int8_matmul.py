"""W8A8 GEMM: int8 x int8 -> int32 accumulation, with the whole dequantize epilogue fused.

    out = act((a @ b.T) * a_scale[:, None] * b_scale[None, :] + bias)       a int8 [..., K], b int8 [N, K]

``a`` is per-token quantized activations (``a_scale`` one value per row, or one value for the tensor: static
quantization), ``b`` a Linear weight with per-output-channel scales. The int32 tile never leaves registers:
scaling, bias, activation and the cast to fp16/bf16/fp32 happen before the single store, so no int32 or fp32
intermediate goes through device memory (torch._int_mm + separate scaling writes and re-reads 4 B per output).

Kernel design (H100): both operands are K-major ([M, K] and [N, K] row-major), the layout 8-bit wgmma wants; the
1-D grid walks tiles in GROUP_M-tall sweeps so neighbouring programs share A and B tiles in L2; rows/columns past
the edge wrap around (``% M``) instead of being masked so the inner loop carries no M/N masks, and the K tail mask is
compiled out for each config whose BLOCK_K divides K. int32 accumulators are exact for K < 131072.

Functions: :func:`int8_matmul` (dispatch: Triton or the torch reference), :func:`int8_matmul_kernel` (the
launcher), :func:`int8_matmul_reference`. Graphs reach them through ``slimgraph::qlinear_static`` /
``qlinear_dynamic`` (:mod:`slimgraph.ops.int8_linear`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import InputError
from .checks import check_float_dtype, check_gemm_operands, check_same_device, check_tensor, check_vector
from .dispatch import use_triton
from .epilogue import activation_code, apply_activation, apply_activation_tl
from .int8_matmul_wgmma import launch_wgmma, use_wgmma
from .launch import candidate_configs, launch
from .tiles import decode_split_k, k_major_tiles, launch_gemm, load_k_step, m_bucket, tile_config, tile_table

__all__ = ["CONFIGS", "INTERPRETER_CONFIG", "int8_matmul", "int8_matmul_reference"]

OP = "int8_matmul"
MAX_K = 131071  # 128 * 128 * K must stay below 2**31 in the int32 accumulator


# Curated per M bucket, rows of (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages); the first row of each list is the default
# when autotuning is off. UNTUNED GUESSES: chosen from the shapes that run well for int8 wgmma in public Triton GEMMs
# (K-steps of 128-256 bytes, 128x128-128x256 tiles at large M, 4 warps = one warpgroup for small tiles), never
# measured on our H100.
CONFIGS: dict[str, list[triton.Config]] = tile_table({
    # Decode: the weight is read once and dominates; 16-row tiles (the minimum tl.dot), narrow N tiles so that
    # N / BLOCK_N programs cover the 132 SMs, deep K steps and pipelines to keep enough bytes in flight.
    # 16x128x128 with 4 warps spilled 8 B on sm_90a in the AOT check (K-tail case): 16x128x256 takes 8 warps.
    "m16": [(16, 64, 256, 4, 4), (16, 32, 256, 4, 5), (16, 64, 512, 4, 3), (16, 128, 256, 8, 3)],
    "m64": [(64, 64, 128, 4, 4), (32, 64, 256, 4, 4), (64, 128, 128, 4, 4), (32, 128, 256, 4, 3),
            (64, 128, 256, 8, 3)],
    "m256": [(128, 128, 128, 8, 3), (64, 128, 128, 4, 4), (128, 64, 128, 4, 4), (64, 256, 128, 8, 3)],
    # Compute-bound (on Hopper the Gluon wgmma kernel takes these shapes; this list serves Ampere and triton < 3.9).
    # 128x128 tiles: the 128x256 and 256x128 tiles spilled with an activation epilogue in the AOT check (int32
    # accumulators plus the fp32 epilogue pass 255 registers), 3-4 stages of 32 KiB per stage.
    "large": [(128, 128, 128, 8, 4), (128, 128, 128, 8, 3), (128, 128, 64, 8, 4), (64, 128, 128, 4, 4)],
})  # fmt: skip
# Small tiles under the interpreter: several programs and K steps per test shape, so edge masks and grouping run.
INTERPRETER_CONFIG = tile_config(16, 16, 32, 4, 1, group=2)


@triton.jit
def _epilogue(acc, offs_m, offs_n, rows, cols, a_scale_ptr, b_scale_ptr, bias_ptr, c_ptr, M, N, stride_cm,
              stride_as, stride_bs, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr):  # fmt: skip
    # In registers, the reference's operation order: (acc * a_scale) * b_scale + bias, then the activation.
    a_scale = tl.load(a_scale_ptr + rows * stride_as)
    b_scale = tl.load(b_scale_ptr + cols * stride_bs)
    y = acc.to(tl.float32) * a_scale[:, None] * b_scale[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    y = apply_activation_tl(y, ACTIVATION)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _int8_matmul_kernel(
    a_ptr, b_ptr, a_scale_ptr, b_scale_ptr, bias_ptr, c_ptr,
    M, N, K,
    stride_am, stride_bn, stride_cm,
    stride_as, stride_bs,  # 0 broadcasts a per-tensor scale
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, EVEN_K: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    offs_m, offs_n, rows, cols, a_ptrs, b_ptrs = k_major_tiles(a_ptr, b_ptr, M, N, stride_am, stride_bn,
                                                               BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)  # fmt: skip
    pid_k = tl.program_id(1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K * SPLIT_K)):
        a, b, a_ptrs, b_ptrs = load_k_step(a_ptrs, b_ptrs, k, K, EVEN_K, SPLIT_K, BLOCK_K)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)

    if SPLIT_K == 1:
        _epilogue(acc, offs_m, offs_n, rows, cols, a_scale_ptr, b_scale_ptr, bias_ptr, c_ptr, M, N, stride_cm,
                  stride_as, stride_bs, HAS_BIAS, ACTIVATION)  # fmt: skip
    else:  # exact int32 partial sums to the [SPLIT_K, M, N] scratch (c_ptr); the epilogue kernel adds them up
        part = c_ptr + pid_k.to(tl.int64) * M * N + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
        tl.store(part, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _split_k_epilogue_kernel(
    part_ptr, a_scale_ptr, b_scale_ptr, bias_ptr, c_ptr,
    M, N, stride_split, stride_cm, stride_as, stride_bs,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Sum the int32 partials (exact, deterministic: no atomics), then the same epilogue as the one-pass kernel.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    parts = part_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for _ in tl.static_range(SPLIT_K):
        acc += tl.load(parts, mask=mask, other=0)
        parts += stride_split  # M * N, passed from the host: typed int64 there when it passes 2**31
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    _epilogue(acc, offs_m, offs_n, rows, cols, a_scale_ptr, b_scale_ptr, bias_ptr, c_ptr, M, N, stride_cm,
              stride_as, stride_bs, HAS_BIAS, ACTIVATION)  # fmt: skip


# ------------------------------------------------------------------------------------------------ checks, launch


def _check(a, b, a_scale, b_scale, bias, activation, out_dtype) -> tuple[int, int, int, int]:
    """Validate the op's arguments; returns (M, N, K, activation code)."""
    M, N, K = check_gemm_operands(OP, "a", a, "b", b, x_dtypes=(torch.int8,))
    if K > MAX_K:
        raise InputError(f"{OP}: K={K} exceeds {MAX_K}; the int32 accumulator could overflow, split the GEMM")
    check_tensor(OP, "a_scale", a_scale, dtypes=(torch.float32,))
    per_row = a_scale.numel() == M and (a_scale.dim() == 1 or tuple(a_scale.shape) == tuple(a.shape[:-1]))
    if not (per_row or a_scale.numel() == 1):
        raise InputError(
            f"{OP}: argument 'a_scale' must hold one scale per row of a (shape {tuple(a.shape[:-1])} or ({M},)) "
            f"or a single per-tensor scale, got shape {tuple(a_scale.shape)}"
        )
    check_vector(OP, "b_scale", b_scale, N, dtypes=(torch.float32,), allow_scalar=True)
    if bias is not None:
        check_vector(OP, "bias", bias, N, dtypes=(torch.float16, torch.bfloat16, torch.float32))
    check_same_device(OP, a=a, b=b, a_scale=a_scale, b_scale=b_scale, bias=bias)
    check_float_dtype(OP, "out_dtype", out_dtype)
    return M, N, K, activation_code(OP, activation)


def _launch(a2, b, a_scale, b_scale, bias, act: int, out, config: triton.Config | None = None,
            split_k: int | None = None) -> None:  # fmt: skip
    M, K = a2.shape
    N = b.shape[0]
    bucket = m_bucket(M)
    if config is None and split_k is None and use_wgmma(a2, b):  # Hopper: the main loop that keeps wgmma in flight
        launch_wgmma(a2, b, a_scale, b_scale, bias, act, out, bucket)
        return
    split = decode_split_k(M, N, K, a2.device) if split_k is None else int(split_k)
    if split < 1:
        raise InputError(f"{OP}: split_k must be >= 1, got {split_k}")
    configs = candidate_configs(CONFIGS[bucket], interpreter_config=INTERPRETER_CONFIG, config=config)
    scale_strides = (0 if a_scale.numel() == 1 else 1, 0 if b_scale.numel() == 1 else 1)
    bias_arg = bias if bias is not None else b_scale
    target = out if split == 1 else torch.empty((split, M, N), dtype=torch.int32, device=a2.device)
    launch_gemm(
        _int8_matmul_kernel, M, N, split,
        (a2, b, a_scale, b_scale, bias_arg, target, M, N, K, a2.stride(0), b.stride(0), out.stride(0), *scale_strides),
        configs=configs,
        key=("N", "K", "HAS_BIAS", "ACTIVATION", "SPLIT_K"),
        bucket=bucket,
        HAS_BIAS=bias is not None,
        ACTIVATION=act,
    )  # fmt: skip
    if split > 1:
        tile = (16, 64)
        launch(
            _split_k_epilogue_kernel,
            lambda meta: (triton.cdiv(M, tile[0]), triton.cdiv(N, tile[1])),
            (target, a_scale, b_scale, bias_arg, out, M, N, M * N, out.stride(0), *scale_strides),
            configs=[triton.Config({"BLOCK_M": tile[0], "BLOCK_N": tile[1]}, num_warps=4, num_stages=1)],
            key=(),
            bucket="split_k_epilogue",
            HAS_BIAS=bias is not None,
            ACTIVATION=act,
            SPLIT_K=split,
        )


def int8_matmul_kernel(a, b, a_scale, b_scale, bias=None, activation=None, out_dtype=torch.float16, *, config=None,
                       split_k=None):  # fmt: skip
    """Run the Triton kernel (GPU, or CPU under the interpreter) without the op dispatcher; ``config`` pins one
    tile config and ``split_k`` the K split (tests, tuning; both also skip the Hopper wgmma kernel). Same
    arguments and result as :func:`int8_matmul`."""
    M, N, K, act = _check(a, b, a_scale, b_scale, bias, activation, out_dtype)
    out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M and N:
        if K == 0:  # empty reduction: the epilogue of a zero accumulator
            return int8_matmul_reference(a, b, a_scale, b_scale, bias, activation, out_dtype)
        _launch(a.reshape(M, K), b, a_scale.reshape(-1), b_scale.reshape(-1), bias, act, out, config, split_k)
    return out.reshape(*a.shape[:-1], N)


# ----------------------------------------------------------------------------------------------------- reference


def exact_int8_gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b[N, K].T exactly, as int32, on any device (torch._int_mm has shape limits on CUDA)."""
    if a.device.type == "cpu" and a.shape[0] > 0 and a.shape[1] > 0 and b.shape[0] > 0:
        try:
            return torch._int_mm(a, b.t())
        except RuntimeError:
            pass
    # float64 holds every partial sum exactly (|sum| < 2**31 < 2**53).
    return (a.double() @ b.double().t()).to(torch.int32)


def int8_matmul_reference(a, b, a_scale, b_scale, bias=None, activation=None, out_dtype=torch.float16):
    """Pure-torch W8A8 linear with the same arithmetic as the kernel: exact int32 GEMM, fp32 epilogue."""
    K, N = a.shape[-1], b.shape[0]
    a2 = a.reshape(-1, K)
    acc = exact_int8_gemm(a2, b)
    y = acc.to(torch.float32) * a_scale.reshape(-1, 1) * b_scale.reshape(1, -1)
    if bias is not None:
        y = y + bias.to(torch.float32)
    y = apply_activation(y, activation)
    return y.to(out_dtype).reshape(*a.shape[:-1], N)


# --------------------------------------------------------------------------------------------------- public API


def int8_matmul(a, b, a_scale, b_scale, bias=None, activation=None, out_dtype=torch.float16):
    """``act((a @ b.T) * a_scale[:, None] * b_scale[None, :] + bias)`` with int32 accumulation.

    Args:
        a: int8 ``[..., K]`` activations (leading dims are flattened into M rows).
        b: int8 ``[N, K]`` weight (nn.Linear layout).
        a_scale: float32, one scale per row of ``a`` (shape ``a.shape[:-1]`` or ``[M]``) or a single element.
        b_scale: float32 ``[N]`` per-output-channel scales, or a single element.
        bias: optional ``[N]`` fp16/bf16/fp32, added in fp32.
        activation: None or a name of :data:`slimgraph.kernels.ACTIVATIONS`, applied in fp32.
        out_dtype: torch.float16, torch.bfloat16 or torch.float32.

    Returns ``out_dtype`` ``[..., N]``. Runs the Triton kernel on CUDA (or on CPU with TRITON_INTERPRET=1), the
    torch reference otherwise; bad arguments raise :class:`slimgraph.InputError`.
    """
    if use_triton(a):
        return int8_matmul_kernel(a, b, a_scale, b_scale, bias, activation, out_dtype)
    _check(a, b, a_scale, b_scale, bias, activation, out_dtype)
    return int8_matmul_reference(a, b, a_scale, b_scale, bias, activation, out_dtype)
