"""GEMM tiling shared by the matmul-like kernels: tile configs and their shape buckets, the split-K rule for decode,
and the ``@triton.jit`` pieces of a K-major GEMM main loop (grouped tile order, wrapped edge rows, K-step loads).

Shape buckets (:func:`m_bucket`) split the GEMM row count M into regimes with their own curated config lists:
``m16`` is decode (memory-bound on the weight: tall-skinny tiles, deep K steps), ``m64``/``m256`` small batches,
``large`` the compute-bound regime (big tiles, grouped ordering for L2 reuse). Config tables are written as
``(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)`` rows (:func:`tile_table`); the first row of each bucket is its
default when autotuning is off.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import triton
import triton.language as tl

from .launch import launch

__all__ = [
    "EVEN_K_PER_SPLIT",
    "decode_split_k",
    "gemm_grid",
    "grouped_tile",
    "k_major_tiles",
    "launch_gemm",
    "load_k_step",
    "m_bucket",
    "next_power_of_2",
    "num_sms",
    "tile_config",
    "tile_table",
    "tune_id",
]


def tile_config(bm: int, bn: int, bk: int, warps: int, stages: int, group: int = 8, maxnreg: int | None = None
                ) -> triton.Config:  # fmt: skip
    """A GEMM tile config (BLOCK_M/N/K, GROUP_M swizzle) as the int8, w8a16 and conv kernels take it; ``maxnreg``
    caps registers per thread (a config that ptxas spills at its default ceiling)."""
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group}, num_warps=warps,
                         num_stages=stages, maxnreg=maxnreg)  # fmt: skip


def tile_table(rows: dict[str, Iterable[Sequence[int] | triton.Config]]) -> dict[str, list[triton.Config]]:
    """Bucket -> configs from ``(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)`` rows (a triton.Config passes as is)."""
    return {bucket: [c if isinstance(c, triton.Config) else tile_config(*c) for c in configs]
            for bucket, configs in rows.items()}  # fmt: skip


def m_bucket(m: int) -> str:
    """Shape bucket of the GEMM row count (see the module docstring): each bucket has its own curated configs."""
    if m <= 16:
        return "m16"
    if m <= 64:
        return "m64"
    if m <= 256:
        return "m256"
    return "large"


def tune_id(bucket: str, m: int) -> str:
    """The autotuner identity of a launch: its config bucket and the power of two of M, so that M = 512 and
    M = 8192 (both "large") keep their own best config instead of sharing whichever was tuned first."""
    return f"{bucket}/m{next_power_of_2(m)}"


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def num_sms(device: torch.device) -> int:
    """Multiprocessor count of a CUDA device; an H100 SXM's 132 elsewhere (the interpreter has no SMs)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def decode_split_k(M: int, N: int, K: int, device: torch.device, *, block_n: int = 64, max_split: int = 8,
                   min_k: int = 512) -> int:
    """How many programs share the K loop of a decode GEMM (M <= 16): doubled until the output tiles times the
    splits cover the SMs, each split keeping at least ``min_k`` of K so the partial sums stay a small fraction of
    the weight bytes. ``block_n`` is the N tile of the decode configs. UNTUNED rule."""
    if m_bucket(M) != "m16":
        return 1
    tiles = -(-N // block_n)
    split = 1
    while split < max_split and tiles * split * 2 <= num_sms(device) and K >= split * 2 * min_k:
        split *= 2
    return split


def gemm_grid(M: int, N: int, split: int = 1):
    """The launch grid of a grouped-order GEMM: a 1-D sweep over the output tiles, times the K splits."""
    return lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), split)


# The K tail mask is compiled out for every config whose K step (all splits together) divides K.
EVEN_K_PER_SPLIT = {"EVEN_K": lambda meta: meta["K"] % (meta["BLOCK_K"] * meta["SPLIT_K"]) == 0}


def launch_gemm(kernel, M: int, N: int, split: int, args, *, configs, key, bucket: str, **constexprs) -> None:
    """Launch a K-major GEMM kernel built on :func:`k_major_tiles` over its output tiles x ``split`` K splits:
    autotuned per (``bucket``, power of two of M), with EVEN_K derived per config."""
    launch(kernel, gemm_grid(M, N, split), args, configs=configs, key=key, bucket=tune_id(bucket, M),
           derived=EVEN_K_PER_SPLIT, SPLIT_K=split, **constexprs)  # fmt: skip


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Map a 1-D program id to (pid_m, pid_n) in GROUP_M-tall column sweeps, so the programs in flight share
    A rows and B columns in L2 (the "grouped ordering" of Triton's matmul tutorial)."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def k_major_tiles(
    a_ptr, b_ptr, M, N, stride_am, stride_bn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """This program's output tile of ``a [M, K] @ b[N, K].T`` and its first K-step pointers, on a grid of
    (tiles in grouped order, K splits): split s reads K blocks s, s + SPLIT_K, s + 2 * SPLIT_K, ...

    Rows and columns past the edge wrap around (``% M``) instead of being masked, so the K loop carries no M/N
    masks: edge programs recompute valid rows and the store drops them. Returns (offs_m, offs_n, rows, cols,
    a_ptrs [BLOCK_M, BLOCK_K], b_ptrs [BLOCK_K, BLOCK_N])."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # int64 before any multiply by a stride: M * K and M * N may pass 2**31 elements.
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + cols[None, :] * stride_bn + offs_k[:, None]
    return offs_m, offs_n, rows, cols, a_ptrs, b_ptrs


@triton.jit
def load_k_step(a_ptrs, b_ptrs, k, K, EVEN_K: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_K: tl.constexpr):
    """The ``k``-th K step of this program's split (see :func:`k_major_tiles`): the A and B tiles, zero past K
    unless EVEN_K says no step reaches past it, and the pointers of the split's next step."""
    if EVEN_K:
        a = tl.load(a_ptrs)
        b = tl.load(b_ptrs)
    else:
        k_left = K - (k * SPLIT_K + tl.program_id(1)) * BLOCK_K
        offs_k = tl.arange(0, BLOCK_K)
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0)
    return a, b, a_ptrs + BLOCK_K * SPLIT_K, b_ptrs + BLOCK_K * SPLIT_K
