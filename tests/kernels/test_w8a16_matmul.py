"""w8a16_matmul: kernel (with and without split-K) vs reference vs float64, configs, split rule, bad inputs."""

import pytest
import torch
import triton
import triton.language as tl
from kernel_helpers import OUT_DTYPES, assert_close, counting, rand_int8, rand_scale, rel_error

from slimgraph import InputError
from slimgraph.kernels import w8a16_matmul
from slimgraph.kernels.launch import launch
from slimgraph.kernels.w8a16_matmul import (
    CONFIGS,
    GEMV_CONFIGS,
    _dequant_int8,
    choose_split_k,
    w8a16_matmul_kernel,
    w8a16_matmul_reference,
)

KERNEL = "_w8a16_kernel"
GEMV = "_w8a16_gemv_kernel"  # M = 1
SHAPES = [(1, 17, 33), (7, 13, 64), (13, 31, 100), (31, 7, 45)]


def _inputs(M, N, K, dtype):
    return torch.randn(M, K).to(dtype), rand_int8(N, K), rand_scale(N), torch.randn(N).to(dtype)


@pytest.mark.parametrize("split_k", [1, 3])
@pytest.mark.parametrize("dtype", OUT_DTYPES)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_kernel_matches_reference(M, N, K, dtype, split_k):
    x, w, s, bias = _inputs(M, N, K, dtype)
    with counting(KERNEL if M > 1 else GEMV, expected=1), counting("_split_k_sum_kernel", expected=int(split_k > 1)):
        out = w8a16_matmul_kernel(x, w, s, bias, split_k=split_k)
    assert_close(out, w8a16_matmul_reference(x, w, s, bias))


def test_no_bias_single_scale_and_leading_dims():
    x, w = torch.randn(2, 3, 40, dtype=torch.float16), rand_int8(9, 40)
    out = w8a16_matmul_kernel(x, w, torch.tensor([0.01]), None, split_k=2)
    assert out.shape == (2, 3, 9) and out.dtype == torch.float16
    assert_close(out, w8a16_matmul_reference(x, w, torch.tensor([0.01])))


@pytest.mark.parametrize("dtype", OUT_DTYPES)
def test_reference_matches_float64(dtype):
    x, w, s, bias = _inputs(13, 31, 100, dtype)
    exact = (x.double() @ w.double().T) * s.double() + bias.double()
    ref = w8a16_matmul_reference(x, w, s, bias)
    assert rel_error(ref, exact) < {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 5e-3}[dtype]
    assert_close(ref, exact.to(dtype))


@pytest.mark.parametrize("bucket", sorted(CONFIGS))
def test_every_curated_config_runs(bucket):
    x, w, s, bias = _inputs(19, 37, 300, torch.float16)
    expected = w8a16_matmul_reference(x, w, s, bias)
    for config in CONFIGS[bucket]:
        assert_close(w8a16_matmul_kernel(x, w, s, bias, config=config, split_k=1), expected, what=str(config))
    if bucket == "m16":  # decode configs are the ones that run split
        for config in CONFIGS[bucket]:
            assert_close(w8a16_matmul_kernel(x, w, s, bias, config=config, split_k=2), expected, what=str(config))


def test_split_k_rule():
    cpu = torch.device("cpu")  # stands for an H100's 132 SMs
    assert choose_split_k(1, 4096, 4096, cpu) == 2  # 64 N tiles -> 128 programs
    assert choose_split_k(1, 1024, 4096, cpu) == 8  # 16 N tiles: split until the SMs are covered
    assert choose_split_k(16, 14336, 4096, cpu) == 1  # enough N tiles already
    assert choose_split_k(1, 1024, 512, cpu) == 1  # K too short to split
    assert choose_split_k(64, 1024, 4096, cpu) == 1  # not decode


def test_public_function_runs_the_kernel_under_the_interpreter():
    x, w, s, bias = _inputs(3, 13, 64, torch.bfloat16)
    with counting(KERNEL, expected=1):
        out = w8a16_matmul(x, w, s, bias)
    assert_close(out, w8a16_matmul_reference(x, w, s, bias))


def test_cpu_without_interpreter_uses_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    x, w, s, bias = _inputs(3, 13, 64, torch.float32)
    with counting(KERNEL, expected=0):
        assert torch.equal(w8a16_matmul(x, w, s, bias), w8a16_matmul_reference(x, w, s, bias))


GOOD = dict(x=torch.randn(4, 32, dtype=torch.float16), w=rand_int8(8, 32), w_scale=rand_scale(8), bias=None)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(x=rand_int8(4, 32)), "argument 'x' must have dtype float16 or bfloat16 or float32, got int8"),
        (dict(w=torch.randn(8, 32)), "argument 'w' must have dtype int8"),
        (dict(w=rand_int8(8, 33)), "mismatched K: x has K=32"),
        (dict(x=torch.randn(32, 4, dtype=torch.float16).T), "argument 'x' must be contiguous"),
        (dict(w_scale=rand_scale(7)), r"argument 'w_scale' must have shape \(8,\)"),
        (dict(w_scale=rand_scale(8).double()), "argument 'w_scale' must have dtype float32"),
        (dict(bias=torch.randn(3)), r"argument 'bias' must have shape \(8,\)"),
        (dict(w=rand_int8(8, 32).to("meta")), "all tensors must be on one device"),
    ],
)
def test_bad_inputs_raise_input_error(change, message):
    args = {**GOOD, **change}
    with pytest.raises(InputError, match=message):
        w8a16_matmul(**args)
    with pytest.raises(InputError, match=message):
        w8a16_matmul_kernel(**args)


@pytest.mark.parametrize("dtype", OUT_DTYPES)
def test_gemv_configs_and_splits(dtype):
    # M = 1 reads its x row once per K step (no 16-row tile of wrapped copies); every curated GEMV config, with and
    # without split-K, K not a multiple of the K step.
    x, w, s, bias = _inputs(1, 37, 300, dtype)
    expected = w8a16_matmul_reference(x, w, s, bias)
    for config in GEMV_CONFIGS:
        for split in (1, 2):
            with counting(GEMV, expected=1):
                out = w8a16_matmul_kernel(x, w, s, bias, config=config, split_k=split)
            assert_close(out, expected, what=f"{config} split {split}")
    x3 = torch.randn(1, 1, 300).to(dtype)  # leading dims that flatten to one row take the same path
    with counting(GEMV, expected=1):
        assert_close(w8a16_matmul_kernel(x3, w, s, None, split_k=1), w8a16_matmul_reference(x3, w, s))


@triton.jit
def _dequant_all_kernel(w_ptr, out_ptr, DTYPE: tl.constexpr):
    offs = tl.arange(0, 256)
    tl.store(out_ptr + offs, _dequant_int8(tl.load(w_ptr + offs), DTYPE))


@pytest.mark.parametrize("dtype,tl_dtype", [(torch.float16, tl.float16), (torch.float32, tl.float32)])
def test_dequant_is_bit_exact_for_every_int8(dtype, tl_dtype):
    # The magic-number conversion (fp16: 0x6400 | (v ^ 0x80) - 1152; fp32: 2**23) against torch's int -> float cast,
    # bit for bit (+0.0 for 0, never -0.0), for all 256 values. bf16 keeps Triton's own cast, which the interpreter
    # cannot run (it stores the integers' bits): under the interpreter the bf16 GEMM takes the fp32 form (DOT_FP32).
    w = torch.arange(-128, 128, dtype=torch.int32).to(torch.int8)
    out = torch.empty(256, dtype=dtype)
    one = triton.Config({}, num_warps=1, num_stages=1)
    launch(_dequant_all_kernel, lambda meta: (1,), (w, out), configs=[one], key=(), bucket="test", DTYPE=tl_dtype)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(out.view(bits), w.to(dtype).view(bits))
