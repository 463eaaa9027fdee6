"""to_block_sparse + block_sparse_matmul: the BSR format, the float and int8 kernels, zero blocks skipped."""

import pytest
import torch
from kernel_helpers import assert_close, counting, rand_scale, rel_error

from slimgraph import InputError
from slimgraph.kernels import ACTIVATIONS, BlockSparseWeight, apply_activation, block_sparse_matmul, to_block_sparse
from slimgraph.kernels.block_sparse import CONFIGS, block_sparse_matmul_kernel, block_sparse_matmul_reference
from slimgraph.kernels.quantize import quantize_rows_reference

KERNEL = "_bsr_matmul_kernel"
FLOATS = (torch.float16, torch.bfloat16, torch.float32)
# (M, N, K, block): M = 1 and primes, N and K not multiples of the block (edge blocks are padded).
CASES = [(1, 40, 50, (16, 16)), (13, 31, 100, (16, 32)), (37, 64, 64, (32, 32)), (5, 70, 45, (32, 16))]


def block_pruned(n, k, block, density, dtype=torch.float32):
    """A dense weight with roughly ``density`` of its (bn, bk) blocks non-zero."""
    bn, bk = block
    keep = torch.rand(-(-n // bn), -(-k // bk)) < density
    mask = keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)[:n, :k]
    return (torch.randn(n, k) * mask).to(dtype)


# ------------------------------------------------------------------------------------------------------ format


@pytest.mark.parametrize("dtype", (*FLOATS, torch.int8))
def test_to_block_sparse_round_trips_and_stores_only_nonzero_blocks(dtype):
    w = block_pruned(70, 45, (32, 32), 0.5)
    scale = None
    if dtype == torch.int8:
        w, scale = quantize_rows_reference(w)
    else:
        w = w.to(dtype)
    bsr = to_block_sparse(w, (32, 32), scale=scale)
    assert isinstance(bsr, BlockSparseWeight) and bsr.shape == (70, 45) and bsr.block == (32, 32)
    assert torch.equal(bsr.to_dense(), w)
    padded = torch.nn.functional.pad(w, (0, 19, 0, 26))  # to 96 x 64
    nonzero_blocks = padded.reshape(3, 32, 2, 32).ne(0).any(3).any(1).sum().item()
    assert bsr.nnz_blocks == nonzero_blocks
    assert bsr.values.shape == (nonzero_blocks, 32, 32)
    assert bsr.row_ptr.tolist()[0] == 0 and bsr.row_ptr.tolist()[-1] == nonzero_blocks
    assert bsr.density == pytest.approx(nonzero_blocks / 6)
    assert bsr.col_indices.dtype == torch.int32 and bsr.row_ptr.dtype == torch.int32


def test_all_zero_weight_stores_nothing_and_gives_bias():
    bsr = to_block_sparse(torch.zeros(20, 30), (16, 16))
    assert bsr.nnz_blocks == 0 and bsr.density == 0.0
    bias = torch.randn(20)
    out = block_sparse_matmul_kernel(torch.randn(3, 30), bsr, bias)
    assert_close(out, bias.expand(3, 20).contiguous())


# ------------------------------------------------------------------------------------------------------- float


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("M,N,K,block", CASES)
def test_float_kernel_matches_reference(M, N, K, block, dtype):
    bsr = to_block_sparse(block_pruned(N, K, block, 0.5, dtype), block)
    x, bias = torch.randn(M, K).to(dtype), torch.randn(N).to(dtype)
    with counting(KERNEL, expected=1):
        out = block_sparse_matmul_kernel(x, bsr, bias, activation="gelu")
    assert_close(out, block_sparse_matmul_reference(x, bsr, bias, activation="gelu"))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation(act):
    bsr = to_block_sparse(block_pruned(31, 100, (16, 32), 0.6), (16, 32))
    x = torch.randn(13, 100)
    expected = block_sparse_matmul_reference(x, bsr, activation=act)
    assert_close(block_sparse_matmul_kernel(x, bsr, activation=act), expected)


@pytest.mark.parametrize("dtype", FLOATS)
def test_reference_matches_float64(dtype):
    w = block_pruned(31, 100, (16, 32), 0.5, dtype)
    x, bias = torch.randn(13, 100).to(dtype), torch.randn(31).to(dtype)
    exact = apply_activation(x.double() @ w.double().T + bias.double(), "relu")
    ref = block_sparse_matmul_reference(x, to_block_sparse(w, (16, 32)), bias, activation="relu")
    assert rel_error(ref, exact) < {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 5e-3}[dtype]
    assert_close(ref, exact.to(dtype))


def test_zero_blocks_are_never_visited():
    # x is NaN exactly on the features whose weight blocks are all zero: visiting any zero block would give
    # 0 * NaN = NaN. The dense product is NaN there, the block-sparse one is not.
    w = torch.randn(32, 64)
    w[:, 16:48] = 0  # block columns 1 and 2 of (16, 16) blocks are zero in every block row
    bsr = to_block_sparse(w, (16, 16))
    assert bsr.nnz_blocks == 4
    x = torch.randn(3, 64)
    x[:, 16:48] = float("nan")
    out = block_sparse_matmul_kernel(x, bsr)
    assert torch.isfinite(out).all()
    finite_x = x.nan_to_num(0.0)
    assert_close(out, finite_x @ w.T)


@pytest.mark.parametrize("bucket", sorted(CONFIGS))
def test_every_curated_config_runs(bucket):
    bsr = to_block_sparse(block_pruned(70, 100, (32, 32), 0.5, torch.float16), (32, 32))
    x = torch.randn(19, 100).half()
    expected = block_sparse_matmul_reference(x, bsr, activation="silu")
    for config in CONFIGS[bucket]:
        assert_close(block_sparse_matmul_kernel(x, bsr, activation="silu", config=config), expected, what=str(config))


# -------------------------------------------------------------------------------------------------------- int8


def _int8_weight(n, k, block):
    q, scale = quantize_rows_reference(block_pruned(n, k, block, 0.5))
    return to_block_sparse(q, block, scale=scale)


@pytest.mark.parametrize("out_dtype", FLOATS)
@pytest.mark.parametrize("M,N,K,block", [(1, 40, 70, (16, 32)), (13, 31, 100, (32, 32)), (37, 64, 64, (16, 64))])
def test_int8_kernel_with_int8_x(M, N, K, block, out_dtype):
    bsr = _int8_weight(N, K, block)
    xq, xs = quantize_rows_reference(torch.randn(M, K))
    bias = torch.randn(N)
    out = block_sparse_matmul_kernel(xq, bsr, bias, x_scale=xs, activation="relu", out_dtype=out_dtype)
    ref = block_sparse_matmul_reference(xq, bsr, bias, x_scale=xs, activation="relu", out_dtype=out_dtype)
    assert out.dtype == out_dtype
    assert_close(out, ref)


@pytest.mark.parametrize("dtype", FLOATS)
def test_int8_kernel_quantizes_float_x_on_the_fly(dtype):
    bsr = _int8_weight(31, 100, (32, 32))
    x = torch.randn(2, 7, 100).to(dtype)
    with counting(KERNEL, expected=1), counting("_norm_quant_kernel", expected=1):
        out = block_sparse_matmul(x, bsr, activation="silu")
    assert out.shape == (2, 7, 31) and out.dtype == dtype
    assert_close(out, block_sparse_matmul_reference(x, bsr, activation="silu"))
    # ...and stays close to the float product of the dequantized weight (int8 activation error ~ 1%).
    dense = bsr.to_dense().float() * bsr.scale[:, None]
    exact = apply_activation(x.double() @ dense.double().T, "silu")
    assert rel_error(out, exact) < 0.02


def test_int8_per_tensor_x_scale():
    bsr = _int8_weight(31, 64, (32, 32))
    xq = torch.randint(-127, 128, (5, 64), dtype=torch.int8)
    out = block_sparse_matmul_kernel(xq, bsr, x_scale=torch.tensor([0.03]))
    assert out.dtype == torch.float16
    assert_close(out, block_sparse_matmul_reference(xq, bsr, x_scale=torch.tensor([0.03])))


def test_cpu_without_interpreter_uses_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    bsr = to_block_sparse(block_pruned(31, 100, (16, 32), 0.5), (16, 32))
    x = torch.randn(4, 100)
    with counting(KERNEL, expected=0):
        assert torch.equal(block_sparse_matmul(x, bsr), block_sparse_matmul_reference(x, bsr))


# -------------------------------------------------------------------------------------------------- bad inputs

W = block_pruned(32, 64, (16, 16), 0.5)
BSR = to_block_sparse(W, (16, 16))
BSR8 = _int8_weight(32, 64, (32, 32))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: to_block_sparse(W, (16, 24)), r"block sizes must be in \(16, 32, 64, 128\)"),
        (lambda: to_block_sparse(W, 16), "must be a pair of ints"),
        (lambda: to_block_sparse(W.to(torch.int8), (32, 32)), "int8 weights need 'scale'"),
        (lambda: to_block_sparse(W.to(torch.int8), (32, 16), scale=rand_scale(32)), "int8 weights need bk >= 32"),
        (lambda: to_block_sparse(W, (16, 16), scale=rand_scale(32)), "'scale' is only for int8 weights"),
        (lambda: to_block_sparse(W[0], (16, 16)), "argument 'w' must be 2-D"),
        (lambda: block_sparse_matmul(torch.randn(4, 63), BSR), "mismatched K: x has K=63"),
        (lambda: block_sparse_matmul(torch.randn(4, 64).half(), BSR), "argument 'x' must have dtype float32"),
        (lambda: block_sparse_matmul(torch.randn(64, 4).T, BSR), "argument 'x' must be contiguous"),
        (lambda: block_sparse_matmul(torch.randn(4, 64), BSR, torch.randn(31)), r"'bias' must have shape \(32,\)"),
        (lambda: block_sparse_matmul(torch.randn(4, 64), W), "'w_bsr' must be a BlockSparseWeight"),
        (lambda: block_sparse_matmul(torch.randn(4, 64), BSR.to("meta")), "all tensors must be on one device"),
        (lambda: block_sparse_matmul(torch.ones(4, 64, dtype=torch.int8), BSR8), "int8 'x' needs 'x_scale'"),
        (lambda: block_sparse_matmul(torch.randn(4, 64), BSR, x_scale=torch.ones(4)), "'x_scale' is only for int8"),
        (lambda: block_sparse_matmul(torch.randn(4, 64), BSR, activation="swish"), "unknown activation"),
        (
            lambda: block_sparse_matmul(torch.ones(4, 64, dtype=torch.int8), BSR8, x_scale=torch.ones(3)),
            "'x_scale' must hold one scale per row",
        ),
    ],
)
def test_bad_inputs_raise_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call()
