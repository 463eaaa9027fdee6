"""int8_matmul: Triton kernel (interpreted) vs torch reference vs float64 math, configs, bad inputs, dispatch."""

import pytest
import torch
from kernel_helpers import OUT_DTYPES, assert_close, counting, rand_int8, rand_scale, rel_error

from slimgraph import InputError
from slimgraph.kernels import ACTIVATIONS, apply_activation, int8_matmul
from slimgraph.kernels.int8_matmul import CONFIGS, MAX_K, int8_matmul_kernel, int8_matmul_reference

KERNEL = "_int8_matmul_kernel"
# M = 1 (decode), primes, K not a multiple of BLOCK_K (32 under the interpreter) and odd N; (64, 64, 64) is even.
SHAPES = [(1, 17, 33), (7, 13, 64), (13, 31, 100), (31, 7, 45), (64, 64, 64)]


def _inputs(M, N, K, bias_dtype=torch.float32):
    return (rand_int8(M, K), rand_int8(N, K), rand_scale(M), rand_scale(N), torch.randn(N).to(bias_dtype))


def _float64(a, b, a_scale, b_scale, bias, act):
    y = (a.double() @ b.double().T) * a_scale.double().reshape(-1, 1) * b_scale.double().reshape(1, -1)
    if bias is not None:
        y = y + bias.double()
    return apply_activation(y, act)


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_kernel_matches_reference(M, N, K, out_dtype):
    a, b, sa, sb, bias = _inputs(M, N, K)
    with counting(KERNEL, expected=1):
        out = int8_matmul_kernel(a, b, sa, sb, bias, "silu", out_dtype)
    assert_close(out, int8_matmul_reference(a, b, sa, sb, bias, "silu", out_dtype))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_every_activation(act):
    a, b, sa, sb, bias = _inputs(13, 31, 100)
    for out_dtype in (torch.float32, torch.bfloat16):
        out = int8_matmul_kernel(a, b, sa, sb, bias, act, out_dtype)
        assert_close(out, int8_matmul_reference(a, b, sa, sb, bias, act, out_dtype), what=f"{act}/{out_dtype}")


@pytest.mark.parametrize("bias_dtype", [None, torch.float16, torch.bfloat16])
def test_bias_dtypes_and_no_bias(bias_dtype):
    a, b, sa, sb, bias = _inputs(7, 13, 64, bias_dtype or torch.float32)
    bias = None if bias_dtype is None else bias
    out = int8_matmul_kernel(a, b, sa, sb, bias, None, torch.float32)
    assert_close(out, int8_matmul_reference(a, b, sa, sb, bias, None, torch.float32))


def test_per_tensor_scales_and_leading_dims():
    a, b = rand_int8(2, 3, 40), rand_int8(9, 40)
    sa, sb = torch.tensor([0.02]), torch.tensor(0.01)  # single-element scales broadcast
    out = int8_matmul_kernel(a, b, sa, sb, None, "relu", torch.float16)
    assert out.shape == (2, 3, 9)
    assert_close(out, int8_matmul_reference(a, b, sa, sb, None, "relu", torch.float16))
    per_row = rand_scale(2, 3)  # per-token scales shaped like a's leading dims
    out = int8_matmul_kernel(a, b, per_row, rand_scale(9).clone(), None, None, torch.float32)
    assert out.shape == (2, 3, 9)


@pytest.mark.parametrize("act", ["none", "gelu", "tanh"])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_reference_matches_float64(act, out_dtype):
    a, b, sa, sb, bias = _inputs(13, 31, 100)
    ref = int8_matmul_reference(a, b, sa, sb, bias, act, out_dtype)
    exact = _float64(a, b, sa, sb, bias, act)
    assert rel_error(ref, exact) < {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 5e-3}[out_dtype]
    assert_close(ref, exact.to(out_dtype), what="reference vs float64")


def test_int32_accumulation_is_exact_at_extremes():
    # -127 * -127 summed over K = 4096 is 66 M: far beyond fp16/fp32-exact range, exact in int32.
    a = torch.full((2, 4096), -127, dtype=torch.int8)
    b = torch.full((3, 4096), -127, dtype=torch.int8)
    one = torch.ones(1)
    out = int8_matmul_kernel(a, b, one, one, None, None, torch.float32)
    assert torch.equal(out, torch.full((2, 3), 127.0 * 127.0 * 4096))


@pytest.mark.parametrize("bucket", sorted(CONFIGS))
def test_every_curated_config_runs(bucket):
    # Each config's tiles (up to 256 x 256 x 512) against odd sizes: the configs are legal and mask correctly.
    a, b, sa, sb, bias = _inputs(19, 37, 300)
    expected = int8_matmul_reference(a, b, sa, sb, bias, "gelu", torch.float16)
    for config in CONFIGS[bucket]:
        out = int8_matmul_kernel(a, b, sa, sb, bias, "gelu", torch.float16, config=config)
        assert_close(out, expected, what=str(config))


def test_empty_rows():
    out = int8_matmul_kernel(rand_int8(0, 8), rand_int8(5, 8), rand_scale(0), rand_scale(5))
    assert out.shape == (0, 5)


# --------------------------------------------------------------------------------------------------- dispatch


def test_public_function_runs_the_kernel_under_the_interpreter():
    a, b, sa, sb, bias = _inputs(7, 13, 64)
    with counting(KERNEL, expected=1):
        out = int8_matmul(a, b, sa, sb, bias, activation="gelu", out_dtype=torch.bfloat16)
    assert_close(out, int8_matmul_reference(a, b, sa, sb, bias, "gelu", torch.bfloat16))


def test_cpu_without_interpreter_uses_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    a, b, sa, sb, bias = _inputs(7, 13, 64)
    with counting(KERNEL, expected=0):
        out = int8_matmul(a, b, sa, sb, bias)
    assert torch.equal(out, int8_matmul_reference(a, b, sa, sb, bias))


# ------------------------------------------------------------------------------------------------- bad inputs

GOOD = dict(a=rand_int8(4, 32), b=rand_int8(8, 32), a_scale=rand_scale(4), b_scale=rand_scale(8), bias=None)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(a=torch.randn(4, 32)), "argument 'a' must have dtype int8, got float32"),
        (dict(b=rand_int8(8, 32, 1)), "argument 'b' must be 2-D"),
        (dict(b=rand_int8(8, 31)), "mismatched K: a has K=32"),
        (dict(a=rand_int8(32, 4).T), "argument 'a' must be contiguous"),
        (dict(a_scale=rand_scale(5)), "argument 'a_scale' must hold one scale per row"),
        (dict(a_scale=rand_scale(4).half()), "argument 'a_scale' must have dtype float32"),
        (dict(b_scale=rand_scale(7)), "argument 'b_scale' must have shape (8,)"),
        (dict(bias=torch.randn(9)), "argument 'bias' must have shape (8,)"),
        (dict(bias=torch.ones(8, dtype=torch.int32)), "argument 'bias' must have dtype"),
        (dict(b=rand_int8(8, 32).to("meta")), "all tensors must be on one device"),
    ],
)
def test_bad_inputs_raise_input_error(change, message):
    args = {**GOOD, **change}
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        int8_matmul(**args)
    with pytest.raises(InputError):
        int8_matmul_kernel(**args)


def test_bad_activation_and_out_dtype():
    with pytest.raises(InputError, match="unknown activation 'swish'"):
        int8_matmul(**GOOD, activation="swish")
    with pytest.raises(InputError, match="'out_dtype' must be torch.float16"):
        int8_matmul(**GOOD, out_dtype=torch.int32)


def test_k_too_large_for_int32_is_rejected_at_trace_time():
    # Meta tensors run the fake implementation: the check fires without allocating 131072-wide rows.
    meta = dict(device="meta")
    with pytest.raises(InputError, match="int32 accumulator could overflow"):
        int8_matmul(
            torch.empty(2, 131072, dtype=torch.int8, **meta),
            torch.empty(3, 131072, dtype=torch.int8, **meta),
            torch.empty(2, **meta),
            torch.empty(3, **meta),
        )
    assert MAX_K == 131071


@pytest.mark.parametrize("split_k", [2, 3])
@pytest.mark.parametrize("M,N,K", [(1, 17, 100), (16, 31, 200), (5, 40, 64)])
def test_split_k_matches_reference(M, N, K, split_k):
    # Decode GEMMs split the K loop over programs; the int32 partials are summed exactly by a second kernel, which
    # also runs the epilogue (the activation must see the whole sum). K tails and splits with no K block included.
    a, b, sa, sb, bias = _inputs(M, N, K)
    with counting(KERNEL, expected=1), counting("_split_k_epilogue_kernel", expected=1):
        out = int8_matmul_kernel(a, b, sa, sb, bias, "gelu", torch.float32, split_k=split_k)
    assert_close(out, int8_matmul_reference(a, b, sa, sb, bias, "gelu", torch.float32))
    out = int8_matmul_kernel(a, b, torch.tensor([0.02]), sb, None, None, torch.bfloat16, split_k=split_k)
    assert_close(out, int8_matmul_reference(a, b, torch.tensor([0.02]), sb, None, None, torch.bfloat16))


def test_split_k_rule_and_bad_split():
    from slimgraph.kernels.tiles import decode_split_k

    cpu = torch.device("cpu")  # 132 SMs assumed off-GPU
    assert decode_split_k(1, 4096, 4096, cpu) == 2  # 64 tiles of N: two splits cover 128 of 132 SMs
    assert decode_split_k(16, 1024, 4096, cpu) == 8  # 16 tiles: capped at 8 splits (512 K each)
    assert decode_split_k(16, 1024, 1024, cpu) == 2  # each split keeps >= 512 of K
    assert decode_split_k(16, 1024, 512, cpu) == 1
    assert decode_split_k(64, 1024, 4096, cpu) == 1  # not decode
    a, b, sa, sb, _ = _inputs(4, 8, 64)
    with pytest.raises(InputError, match="split_k must be >= 1"):
        int8_matmul_kernel(a, b, sa, sb, None, None, torch.float16, split_k=0)
