"""Hopper int8 GEMM main loop with wgmma kept in flight: a Gluon kernel behind :func:`int8_matmul` on sm_90.

Why a second kernel: Triton (3.9) pipelines a ``tl.dot`` asynchronously only when its accumulator is fp32, so the
plain int8 kernel (int32 accumulator) drains every wgmma before the next K step (``wgmma.wait_group 0``): the tensor
cores idle while each step's operands are fetched. Here the loop is written out in Gluon:

    prologue: TMA loads of K tiles 0 .. STAGES-2 into a ring of STAGES shared-memory slots (one mbarrier each)
    step k:   wait for slot k's TMA -> issue wgmma(k) async -> wgmma_wait(1), i.e. wgmma(k-1) has finished and
              wgmma(k) is still running -> refill the slot wgmma(k-1) read with the TMA load of tile k+STAGES-1
    then:     wgmma_wait(0) and the same fused epilogue as the plain kernel (scales, bias, activation, one store)

so one MMA is always in flight while the TMA engine streams the next tiles. TMA zero-fills rows, columns and K
past the tensor edge, so no masks run in the loop. The AOT table (``python -m bench.aot``) shows the result:
``wgmma.wait_group 1`` in the loop, TMA loads, registers and shared memory per config.

When it runs: CUDA tensors on a capability-9 GPU, a triton whose Gluon API this module was written and checked
against (>= 3.9; the GPU image's triton 3.6 falls back), K a multiple of 16 and 16-byte aligned operands (TMA's
stride and base rules), M above the decode buckets (those are memory-bound: the plain kernel's small tiles are
right there). Everything else takes the plain kernel. Gluon kernels cannot run under the Triton interpreter: the
CPU tests cover the dispatch rule and the fallback; the GPU suite checks numerics on Hopper.
"""

from __future__ import annotations

import functools

import torch
import triton

from .dispatch import interpreter_requested
from .epilogue import apply_activation_tl
from .launch import launch
from .tiles import tune_id

__all__ = ["MIN_TRITON", "WGMMA_CONFIGS", "gluon_available", "launch_wgmma", "use_wgmma"]

MIN_TRITON = (3, 9)

try:  # Gluon is experimental: absent or with another API in older triton releases
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    _IMPORT_ERROR: str | None = None
except ImportError as err:  # pragma: no cover - depends on the installed triton
    gluon = gl = mbarrier = tma = warpgroup_mma = warpgroup_mma_wait = TensorDescriptor = None
    _IMPORT_ERROR = f"{type(err).__name__}: {err}"


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def gluon_available() -> tuple[bool, str]:
    """(usable, why not): Gluon with Hopper TMA + wgmma imported and triton at least :data:`MIN_TRITON`."""
    if _IMPORT_ERROR is not None:
        return False, f"triton.experimental.gluon Hopper API not importable ({_IMPORT_ERROR})"
    if _version(triton.__version__) < MIN_TRITON:
        return False, f"triton {triton.__version__} < {'.'.join(map(str, MIN_TRITON))} (Gluon API not checked there)"
    return True, ""


# One config per bucket; num_stages is the depth of the TMA ring. Shared memory per CTA is
# STAGES * (BLOCK_M + BLOCK_N) * BLOCK_K bytes (+ barriers): both fit two CTAs per SM in shared memory (96 KiB), so
# one CTA's epilogue can overlap the other's main loop. With 8 warps the registers allow that only at <= 128 per
# thread: capping "large" there (maxnreg=128) spilled 48 B with the gelu epilogue in the AOT check, so it is left
# uncapped (one CTA per SM). The AOT table shows registers, spills and CTAs/SM. UNTUNED on a real H100.
WGMMA_CONFIGS = {
    # 8 warps = two warpgroups stacked along M; 3 x 32 KiB = 96 KiB.
    "large": triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8,
                           num_stages=3),
    # 64-row tiles (one warpgroup) give twice the programs for 64 < M <= 256; 4 x 24 KiB = 96 KiB.
    "m256": triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=4, num_stages=4),
}


def use_wgmma(a2: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether :func:`int8_matmul` takes this kernel for ``a2 [M, K] @ b[N, K].T`` (see the module docstring)."""
    if a2.device.type != "cuda" or interpreter_requested() or not gluon_available()[0]:
        return False
    M, K = a2.shape
    if M <= 64 or K % 16 or a2.data_ptr() % 16 or b.data_ptr() % 16:
        return False
    return _capability(a2.device)[0] == 9


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


if gluon is not None:

    @gluon.constexpr_function
    def _instr_n(block_m, block_n, warps):
        # The widest int8 wgmma N that tiles this warp group's share of BLOCK_N: the PTX int8 shapes are N = 8 and
        # the multiples of 16 up to 224 (not 256, unlike fp16).
        reps_n = max(1, warps // max(1, block_m // 16))
        widest = max(block_n // reps_n, 8)
        return next(n for n in (*range(224, 15, -16), 8) if n <= widest and block_n % n == 0)

    @gluon.jit
    def _int8_matmul_wgmma_kernel(
        a_desc, b_desc, a_scale_ptr, b_scale_ptr, bias_ptr, c_ptr,
        M, N, K,
        stride_cm, stride_as, stride_bs,
        HAS_BIAS: gl.constexpr, ACTIVATION: gl.constexpr,
        BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, GROUP_M: gl.constexpr,
        STAGES: gl.constexpr, num_warps: gl.constexpr,
    ):  # fmt: skip
        # Grouped ordering of the 1-D grid (as grouped_tile): programs in flight share A rows and B columns in L2.
        pid = gl.program_id(0)
        num_pid_m = gl.cdiv(M, BLOCK_M)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        group = pid // (GROUP_M * num_pid_n)
        first_m = group * GROUP_M
        rows_in_group = gl.minimum(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % (GROUP_M * num_pid_n)) % rows_in_group
        pid_n = (pid % (GROUP_M * num_pid_n)) // rows_in_group
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N

        layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, _instr_n(BLOCK_M, BLOCK_N, num_warps), 32]
        )
        a_ring = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
        b_ring = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_N, BLOCK_K], b_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for s in gl.static_range(STAGES):
            mbarrier.init(ready.index(s), count=1)
        tile_bytes: gl.constexpr = (BLOCK_M + BLOCK_N) * BLOCK_K
        k_tiles = gl.cdiv(K, BLOCK_K)

        for s in gl.static_range(STAGES - 1):  # prologue: the first STAGES-1 K tiles in flight
            pred = s < k_tiles
            mbarrier.expect(ready.index(s), tile_bytes, pred=pred)
            tma.async_load(a_desc, [off_m, s * BLOCK_K], ready.index(s), a_ring.index(s), pred=pred)
            tma.async_load(b_desc, [off_n, s * BLOCK_K], ready.index(s), b_ring.index(s), pred=pred)

        acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=gl.int32, layout=layout)
        for k in range(k_tiles):
            slot = k % STAGES
            mbarrier.wait(ready.index(slot), (k // STAGES) & 1)
            acc = warpgroup_mma(a_ring.index(slot), b_ring.index(slot).permute((1, 0)), acc, is_async=True)
            # <= 1 outstanding: wgmma(k-1) is done (its slot may be overwritten), wgmma(k) keeps running.
            acc, _, _ = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a_ring.index(slot), b_ring.index(slot)))
            refill = k + STAGES - 1
            rslot = refill % STAGES
            pred = refill < k_tiles
            mbarrier.expect(ready.index(rslot), tile_bytes, pred=pred)
            tma.async_load(a_desc, [off_m, refill * BLOCK_K], ready.index(rslot),
                                            a_ring.index(rslot), pred=pred)  # fmt: skip
            tma.async_load(b_desc, [off_n, refill * BLOCK_K], ready.index(rslot),
                                            b_ring.index(rslot), pred=pred)  # fmt: skip
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        for s in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(s))

        # Epilogue in registers, the plain kernel's arithmetic: (acc * a_scale) * b_scale + bias, activation.
        offs_m = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
        offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
        m_ok = offs_m < M
        n_ok = offs_n < N
        a_scale = gl.load(a_scale_ptr + offs_m.to(gl.int64) * stride_as, mask=m_ok, other=0.0)
        b_scale = gl.load(b_scale_ptr + offs_n.to(gl.int64) * stride_bs, mask=n_ok, other=0.0)
        y = acc.to(gl.float32) * gl.expand_dims(a_scale, 1) * gl.expand_dims(b_scale, 0)
        if HAS_BIAS:
            y += gl.expand_dims(gl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(gl.float32), 0)
        y = apply_activation_tl(y, ACTIVATION)
        c_ptrs = c_ptr + gl.expand_dims(offs_m.to(gl.int64) * stride_cm, 1) + gl.expand_dims(offs_n, 0)
        gl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=gl.expand_dims(m_ok, 1) & gl.expand_dims(n_ok, 0))


def launch_wgmma(a2, b, a_scale, b_scale, bias, act: int, out, bucket: str) -> None:
    """Launch the Gluon kernel (callers check :func:`use_wgmma`; ``bench/aot.py`` calls it on CPU tensors to
    compile it ahead of time). One config per bucket: TMA descriptors carry the tile shape, so each config needs
    its own descriptors and the autotuner's config swap does not apply."""
    ok, why = gluon_available()
    if not ok:
        raise RuntimeError(f"int8_matmul wgmma kernel unavailable: {why}")
    cfg = WGMMA_CONFIGS["large" if bucket == "large" else "m256"]
    bm, bn, bk = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"]
    M, K = a2.shape
    N = b.shape[0]
    a_desc = TensorDescriptor(a2, [M, K], [a2.stride(0), 1], [bm, bk],
                              gl.NVMMASharedLayout.get_default_for([bm, bk], gl.int8))  # fmt: skip
    b_desc = TensorDescriptor(b, [N, K], [b.stride(0), 1], [bn, bk],
                              gl.NVMMASharedLayout.get_default_for([bn, bk], gl.int8))  # fmt: skip
    launch(
        _int8_matmul_wgmma_kernel,
        lambda meta: (triton.cdiv(M, bm) * triton.cdiv(N, bn),),
        (a_desc, b_desc, a_scale, b_scale, bias if bias is not None else b_scale, out,
         M, N, K,
         out.stride(0), 0 if a_scale.numel() == 1 else 1, 0 if b_scale.numel() == 1 else 1),
        configs=[triton.Config({"GROUP_M": cfg.kwargs["GROUP_M"]}, num_warps=cfg.num_warps,
                               num_stages=cfg.num_stages, maxnreg=cfg.maxnreg)],
        key=(),
        bucket=tune_id("wgmma-" + bucket, M),
        HAS_BIAS=bias is not None,
        ACTIVATION=act,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        STAGES=cfg.num_stages,
    )  # fmt: skip
