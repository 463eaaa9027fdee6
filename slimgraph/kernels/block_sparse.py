"""Block-sparse Linear: ``x @ w.T`` with ``w`` in BSR form, visiting only the stored (non-zero) blocks.

    w [N, K] --to_block_sparse(block=(bn, bk))-->  values [nnz, bn, bk], col_indices [nnz], row_ptr [N/bn + 1]

Block row ``r`` (output columns ``r*bn .. r*bn+bn``) owns ``values[row_ptr[r]:row_ptr[r+1]]``; each stored block
multiplies the ``bk`` input features starting at ``col_indices[i] * bk``. All-zero blocks are neither stored nor
loaded nor multiplied, so time and weight bytes scale with the density of stored blocks. Edge blocks of a weight
whose N or K is not a multiple of the block are zero-padded inside ``values``.

Two paths, one kernel:

* float: ``values`` fp16/bf16/fp32 and ``x`` of the same dtype; fp32 accumulation; result in ``x.dtype``.
* int8: ``values`` int8 with per-output-channel ``scale`` (e.g. from ``quantize_per_token(w)``) and int32
  accumulation. ``x`` is either float (quantized per token on the fly with :func:`quantize_per_token`; result in
  ``x.dtype``) or already int8 with its ``x_scale`` (per row, or one per-tensor value; result in ``out_dtype``,
  default fp16).

Both fuse bias and an activation into the epilogue. Kernel design (H100): one program per (block row, M tile);
block rows vary fastest in the launch order, so the programs in flight read the same ``x`` rows from L2 while
each weight block is read once per M tile. Block sizes are the tensor-core tile along N and K: powers of two
from 16 to 128 (int8: bk >= 32); (64, 64) is the default, (128, 64) the likely fastest for big GEMMs, (32, 32)
the finest granularity for pruning accuracy.

Functions: :func:`block_sparse_matmul` (a :class:`BlockSparseWeight`; dispatch: Triton or the torch reference),
:func:`bsr_matmul` (the same on the weight's tensors: what the graph op ``slimgraph::block_sparse_matmul`` of
:mod:`slimgraph.ops.block_sparse` runs), :func:`block_sparse_matmul_kernel` (the launcher),
:func:`block_sparse_matmul_reference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..errors import InputError
from .checks import check_float_dtype, check_same_device, check_tensor, check_vector
from .dispatch import interpreter_requested, use_triton
from .epilogue import activation_code, apply_activation, apply_activation_tl
from .int8_matmul import int8_matmul_reference
from .launch import candidate_configs, launch
from .quantize import norm_quantize_kernel, quantize_rows_reference
from .tiles import m_bucket, tune_id

__all__ = ["BlockSparseWeight", "block_sparse_matmul", "block_sparse_matmul_reference", "bsr_matmul",
           "bsr_result_dtype", "to_block_sparse"]

OP = "block_sparse_matmul"
BLOCK_SIZES = (16, 32, 64, 128)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class BlockSparseWeight:
    """A [N, K] weight in block-CSR form (see the module docstring); build it with :func:`to_block_sparse`."""

    values: torch.Tensor  # [nnz_blocks, bn, bk], each block row-major
    col_indices: torch.Tensor  # int32 [nnz_blocks], increasing within a block row
    row_ptr: torch.Tensor  # int32 [ceil(N / bn) + 1]
    shape: tuple[int, int]  # (N, K) of the dense weight
    block: tuple[int, int]  # (bn, bk)
    scale: torch.Tensor | None = None  # float32 [N] per-output-channel scales of int8 values

    @property
    def nnz_blocks(self) -> int:
        return self.values.shape[0]

    @property
    def density(self) -> float:
        """Fraction of the weight's blocks that are stored (and computed)."""
        total = (self.row_ptr.numel() - 1) * -(-self.shape[1] // self.block[1])
        return self.nnz_blocks / total if total else 0.0

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def to(self, device) -> BlockSparseWeight:
        move = lambda t: None if t is None else t.to(device)
        return BlockSparseWeight(
            move(self.values), move(self.col_indices), move(self.row_ptr), self.shape, self.block, move(self.scale)
        )

    def to_dense(self) -> torch.Tensor:
        """The [N, K] weight in ``values.dtype`` (int8 stays int8: multiply rows by ``scale`` to dequantize)."""
        return _densify(self.values, self.col_indices, self.row_ptr, *self.shape)


def _densify(values, col_indices, row_ptr, n: int, k: int) -> torch.Tensor:
    nnz, bn, bk = values.shape
    rows, cols = row_ptr.numel() - 1, -(-k // bk)
    counts = (row_ptr[1:] - row_ptr[:-1]).long()
    block_row = torch.repeat_interleave(torch.arange(rows, device=values.device), counts, output_size=nnz)
    blocks = values.new_zeros((rows, cols, bn, bk))
    blocks[block_row, col_indices.long()] = values
    return blocks.permute(0, 2, 1, 3).reshape(rows * bn, cols * bk)[:n, :k]


def _check_block(op: str, block, dtype: torch.dtype) -> tuple[int, int]:
    if not (isinstance(block, (tuple, list)) and len(block) == 2 and all(isinstance(b, int) for b in block)):
        raise InputError(f"{op}: argument 'block' must be a pair of ints (bn, bk), got {block!r}")
    bn, bk = block
    if bn not in BLOCK_SIZES or bk not in BLOCK_SIZES:
        raise InputError(f"{op}: block sizes must be in {BLOCK_SIZES} (tensor-core tiles), got block={tuple(block)}")
    if dtype == torch.int8 and bk < 32:
        raise InputError(f"{op}: int8 weights need bk >= 32 (the int8 MMA's K step), got block={tuple(block)}")
    return bn, bk


def to_block_sparse(w: torch.Tensor, block=(64, 64), scale: torch.Tensor | None = None) -> BlockSparseWeight:
    """Convert a dense ``[N, K]`` weight to BSR, dropping every all-zero ``block`` (= (bn, bk)).

    ``w`` is fp16/bf16/fp32, or int8 together with its float32 ``[N]`` per-output-channel ``scale``.
    """
    op = "to_block_sparse"
    check_tensor(op, "w", w, dtypes=(*_FLOATS, torch.int8), dim=2, contiguous=False)
    if w.dtype == torch.int8:
        if scale is None:
            raise InputError(f"{op}: int8 weights need 'scale' (float32 [N] per-output-channel scales)")
        check_vector(op, "scale", scale, w.shape[0], dtypes=(torch.float32,))
        check_same_device(op, w=w, scale=scale)
        scale = scale.contiguous()
    elif scale is not None:
        raise InputError(f"{op}: 'scale' is only for int8 weights, got a {w.dtype} weight with a scale")
    bn, bk = _check_block(op, block, w.dtype)
    n, k = w.shape
    rows, cols = -(-n // bn), -(-k // bk)
    padded = F.pad(w, (0, cols * bk - k, 0, rows * bn - n))
    blocks = padded.reshape(rows, bn, cols, bk).permute(0, 2, 1, 3)  # [rows, cols, bn, bk]
    keep = blocks.ne(0).any(dim=3).any(dim=2)  # [rows, cols]
    values = blocks[keep].contiguous()  # boolean indexing is row-major: grouped by block row, columns increasing
    col_indices = keep.nonzero()[:, 1].to(torch.int32)
    row_ptr = F.pad(keep.sum(dim=1).cumsum(0), (1, 0)).to(torch.int32)
    return BlockSparseWeight(values, col_indices, row_ptr, (n, k), (bn, bk), scale)


# ------------------------------------------------------------------------------------------------------- kernel


def _cfg(bm, warps, stages):
    return triton.Config({"BLOCK_M": bm}, num_warps=warps, num_stages=stages)


# The N and K tiles are the BSR block; only the M tile is tuned. UNTUNED GUESSES for H100.
CONFIGS: dict[str, list[triton.Config]] = {
    "m16": [_cfg(16, 4, 4), _cfg(16, 4, 6)],
    "m64": [_cfg(64, 4, 4), _cfg(32, 4, 4)],
    "m256": [_cfg(128, 8, 3), _cfg(64, 4, 4)],
    "large": [_cfg(128, 8, 3), _cfg(128, 4, 4)],  # BLOCK_M = 256 spilled with 128x128 blocks on sm_80 (AOT check)
}
INTERPRETER_CONFIG = _cfg(16, 4, 1)


@triton.jit
def _bsr_matmul_kernel(
    x_ptr, values_ptr, col_ptr, row_ptr_ptr, w_scale_ptr, x_scale_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_om, stride_xs, stride_ws,
    IS_INT8: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, EVEN_K: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)  # block row: fastest-varying, so concurrent programs share x rows in L2
    pid_m = tl.program_id(1)
    first = tl.load(row_ptr_ptr + pid_n).to(tl.int64)  # int64: nnz * BN * BK may pass 2**31
    last = tl.load(row_ptr_ptr + pid_n + 1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = (offs_m % M).to(tl.int64)  # int64 before any stride multiply: M * K may pass 2**31
    offs_bn = tl.arange(0, BN)
    offs_bk = tl.arange(0, BK)
    x_rows = x_ptr + rows[:, None] * stride_xm
    block_tile = values_ptr + offs_bn[None, :] * BK + offs_bk[:, None]  # [BK, BN] view of a row-major block

    if IS_INT8:
        acc = tl.zeros((BLOCK_M, BN), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BN), dtype=tl.float32)
    for i in range(first, last):  # the stored blocks of this block row, nothing else
        offs_k = tl.load(col_ptr + i).to(tl.int64) * BK + offs_bk
        if EVEN_K:
            x = tl.load(x_rows + offs_k[None, :])
        else:
            x = tl.load(x_rows + offs_k[None, :], mask=offs_k[None, :] < K, other=0)
        w = tl.load(block_tile + i * (BN * BK))
        if IS_INT8:
            acc = tl.dot(x, w, acc, out_dtype=tl.int32)
        elif DOT_FP32:  # the interpreter cannot multiply bf16 tiles; same products, fp32 sums
            acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision=DOT_PRECISION)
        else:
            acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)

    offs_n = pid_n * BN + offs_bn
    cols = offs_n % N
    y = acc.to(tl.float32)
    if IS_INT8:  # same order as int8_matmul: (acc * x_scale) * w_scale
        y = y * tl.load(x_scale_ptr + rows * stride_xs)[:, None] * tl.load(w_scale_ptr + cols * stride_ws)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    y = apply_activation_tl(y, ACTIVATION)
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# ------------------------------------------------------------------------------------------------ checks, launch


def _check(x, values, col_indices, row_ptr, n, k, w_scale, x_scale, bias, activation, out_dtype):
    """Validate the op's arguments; returns (M, activation code, output dtype)."""
    check_tensor(OP, "values", values, dtypes=(*_FLOATS, torch.int8), dim=3)
    _check_block(OP, tuple(values.shape[1:]), values.dtype)
    check_tensor(OP, "col_indices", col_indices, dtypes=(torch.int32,), dim=1)
    check_tensor(OP, "row_ptr", row_ptr, dtypes=(torch.int32,), dim=1)
    bn = values.shape[1]
    if col_indices.shape[0] != values.shape[0]:
        raise InputError(
            f"{OP}: col_indices has {col_indices.shape[0]} entries but values holds {values.shape[0]} blocks"
        )
    if row_ptr.shape[0] != -(-n // bn) + 1:
        raise InputError(
            f"{OP}: row_ptr must have ceil(n / bn) + 1 = {-(-n // bn) + 1} entries for n={n}, bn={bn}, "
            f"got {row_ptr.shape[0]}"
        )
    is_int8 = values.dtype == torch.int8
    check_tensor(OP, "x", x, dtypes=(*_FLOATS, torch.int8) if is_int8 else (values.dtype,), min_dim=1)
    if x.shape[-1] != k:
        raise InputError(
            f"{OP}: mismatched K: x has K={x.shape[-1]} (shape {tuple(x.shape)}) but the weight is [{n}, {k}]"
        )
    if is_int8:
        if w_scale is None:
            raise InputError(f"{OP}: int8 block-sparse weights need 'w_scale' (float32 [N]); build them with a scale")
        check_vector(OP, "w_scale", w_scale, n, dtypes=(torch.float32,), allow_scalar=True)
    elif w_scale is not None:
        raise InputError(f"{OP}: 'w_scale' is only for int8 weights, got {values.dtype} values")
    M = prod(x.shape[:-1])
    if x.dtype == torch.int8:
        if x_scale is None:
            raise InputError(f"{OP}: int8 'x' needs 'x_scale' (float32, one per row or one per tensor)")
        check_tensor(OP, "x_scale", x_scale, dtypes=(torch.float32,))
        if x_scale.numel() not in (1, M):
            raise InputError(
                f"{OP}: 'x_scale' must hold one scale per row of x ({M}) or one, got shape {tuple(x_scale.shape)}"
            )
    elif x_scale is not None:
        raise InputError(f"{OP}: 'x_scale' is only for int8 x, got {x.dtype} x")
    if bias is not None:
        check_vector(OP, "bias", bias, n, dtypes=_FLOATS)
    check_same_device(OP, x=x, values=values, col_indices=col_indices, row_ptr=row_ptr, w_scale=w_scale,
                      x_scale=x_scale, bias=bias)  # fmt: skip
    if x.dtype == torch.int8:
        out = torch.float16 if out_dtype is None else check_float_dtype(OP, "out_dtype", out_dtype)
    else:
        if out_dtype is not None and out_dtype != x.dtype:
            raise InputError(f"{OP}: float x gives a {x.dtype} result; out_dtype={out_dtype} is only for int8 x")
        out = x.dtype
    return M, activation_code(OP, activation), out


def _launch(x2, values, col_indices, row_ptr, n, w_scale, x_scale, bias, act, out, config=None):
    M, K = x2.shape
    _, bn, bk = values.shape
    bucket = m_bucket(M)
    configs = candidate_configs(CONFIGS[bucket], interpreter_config=INTERPRETER_CONFIG, config=config)
    is_int8 = values.dtype == torch.int8
    dummy = row_ptr  # never read: the flags that would read it are compile-time False
    launch(
        _bsr_matmul_kernel,
        lambda meta: (row_ptr.numel() - 1, triton.cdiv(M, meta["BLOCK_M"])),
        (x2, values, col_indices, row_ptr,
         w_scale if is_int8 else dummy, x_scale if is_int8 else dummy, bias if bias is not None else dummy, out,
         M, n, K,
         x2.stride(0), out.stride(0),
         0 if not is_int8 or x_scale.numel() == 1 else 1, 0 if not is_int8 or w_scale.numel() == 1 else 1),
        configs=configs,
        key=("N", "K", "HAS_BIAS", "ACTIVATION", "BN", "BK"),
        bucket=tune_id(bucket, M),
        IS_INT8=is_int8,
        HAS_BIAS=bias is not None,
        ACTIVATION=act,
        EVEN_K=K % bk == 0,
        DOT_FP32=interpreter_requested() and x2.dtype == torch.bfloat16,
        DOT_PRECISION="ieee" if x2.dtype == torch.float32 else "tf32",
        BN=bn,
        BK=bk,
    )  # fmt: skip


def _run(x, values, col_indices, row_ptr, n, k, w_scale, x_scale, bias, activation, out_dtype, *, triton_path: bool,
         config=None):  # fmt: skip
    M, act, result_dtype = _check(x, values, col_indices, row_ptr, n, k, w_scale, x_scale, bias, activation, out_dtype)
    if values.dtype == torch.int8 and x.dtype != torch.int8:  # dynamic activation quantization
        x, x_scale = norm_quantize_kernel(x) if triton_path else quantize_rows_reference(x)
    if not triton_path or M == 0 or n == 0 or k == 0:
        return _reference(x, values, col_indices, row_ptr, n, k, w_scale, x_scale, bias, activation, result_dtype)
    out = torch.empty((M, n), dtype=result_dtype, device=x.device)
    x_scale = None if x_scale is None else x_scale.reshape(-1)
    w_scale = None if w_scale is None else w_scale.reshape(-1)
    _launch(x.reshape(M, k), values, col_indices, row_ptr, n, w_scale, x_scale, bias, act, out, config)
    return out.reshape(*x.shape[:-1], n)


# ----------------------------------------------------------------------------------------------------- reference


def _reference(x, values, col_indices, row_ptr, n, k, w_scale, x_scale, bias, activation, out_dtype):
    dense = _densify(values, col_indices, row_ptr, n, k)
    if values.dtype == torch.int8:
        return int8_matmul_reference(x, dense, x_scale.reshape(-1), w_scale, bias, activation, out_dtype)
    y = F.linear(x.to(torch.float32), dense.to(torch.float32), None if bias is None else bias.to(torch.float32))
    return apply_activation(y, activation).to(out_dtype)


def block_sparse_matmul_reference(x, w_bsr: BlockSparseWeight, bias=None, *, x_scale=None, activation=None,
                                  out_dtype=None):  # fmt: skip
    """Pure torch: densify the weight and run the dense equivalent with the kernel's arithmetic."""
    return _run(x, w_bsr.values, w_bsr.col_indices, w_bsr.row_ptr, *w_bsr.shape, w_bsr.scale, x_scale, bias,
                activation, out_dtype, triton_path=False)  # fmt: skip


def block_sparse_matmul_kernel(x, w_bsr: BlockSparseWeight, bias=None, *, x_scale=None, activation=None,
                               out_dtype=None, config=None):  # fmt: skip
    """Run the Triton kernel directly (GPU, or CPU under the interpreter); ``config`` pins the M tile (tests)."""
    return _run(x, w_bsr.values, w_bsr.col_indices, w_bsr.row_ptr, *w_bsr.shape, w_bsr.scale, x_scale, bias,
                activation, out_dtype, triton_path=True, config=config)  # fmt: skip


# --------------------------------------------------------------------------------------------------- public API


def bsr_result_dtype(x, values, col_indices, row_ptr, n, k, w_scale, x_scale, bias, activation, out_dtype):
    """Validate :func:`bsr_matmul`'s arguments (InputError otherwise) and return the result dtype."""
    return _check(x, values, col_indices, row_ptr, n, k, w_scale, x_scale, bias, activation, out_dtype)[2]


def bsr_matmul(x, values, col_indices, row_ptr, n: int, k: int, w_scale=None, x_scale=None, bias=None,
               activation=None, out_dtype=None):  # fmt: skip
    """:func:`block_sparse_matmul` on the tensors of a :class:`BlockSparseWeight` (``values``, ``col_indices``,
    ``row_ptr``, dense shape ``(n, k)``, ``w_scale`` its ``scale``): the form a graph holds as attributes."""
    return _run(x, values, col_indices, row_ptr, n, k, w_scale, x_scale, bias, activation, out_dtype,
                triton_path=use_triton(x))  # fmt: skip


def block_sparse_matmul(x, w_bsr: BlockSparseWeight, bias=None, *, x_scale=None, activation=None, out_dtype=None):
    """``act(x @ w.T + bias)`` for a :class:`BlockSparseWeight` ``w_bsr``, computing only its stored blocks.

    Args:
        x: ``[..., K]``, contiguous. Float weights: ``x`` has the weights' dtype and the result is ``x.dtype``.
            int8 weights: ``x`` float (quantized per token inside the op, result ``x.dtype``) or int8 with
            ``x_scale`` (result ``out_dtype``, default float16).
        w_bsr: from :func:`to_block_sparse`.
        bias: optional ``[N]`` fp16/bf16/fp32.
        x_scale: float32 per-row (``x.shape[:-1]`` / ``[M]``) or single-element scale of an int8 ``x``.
        activation: None or a name of :data:`slimgraph.kernels.ACTIVATIONS`, fused in the epilogue.
        out_dtype: result dtype for int8 ``x`` (fp16/bf16/fp32).
    """
    if not isinstance(w_bsr, BlockSparseWeight):
        raise InputError(f"{OP}: 'w_bsr' must be a BlockSparseWeight (see to_block_sparse), got {type(w_bsr).__name__}")
    return bsr_matmul(x, w_bsr.values, w_bsr.col_indices, w_bsr.row_ptr, *w_bsr.shape, w_bsr.scale, x_scale, bias,
                      activation, out_dtype)  # fmt: skip
