"""The same kernels compiled for a real GPU (skipped without CUDA): every curated config compiles and is correct,
and the autotuned path agrees with the references at bench-like sizes."""

import pytest
import torch
from kernel_helpers import assert_close

from slimgraph.kernels import (
    block_sparse_matmul,
    int8_conv2d,
    int8_matmul,
    layernorm_quantize,
    quantize_per_token,
    to_block_sparse,
    w8a16_matmul,
)
from slimgraph.kernels.block_sparse import CONFIGS as BSR_CONFIGS
from slimgraph.kernels.block_sparse import block_sparse_matmul_kernel, block_sparse_matmul_reference
from slimgraph.kernels.int8_conv import CONFIGS as CONV_CONFIGS
from slimgraph.kernels.int8_conv import int8_conv2d_kernel, int8_conv2d_reference
from slimgraph.kernels.int8_matmul import CONFIGS as MM_CONFIGS
from slimgraph.kernels.int8_matmul import int8_matmul_kernel, int8_matmul_reference
from slimgraph.kernels.quantize import quantize_rows_reference
from slimgraph.kernels.w8a16_matmul import CONFIGS as W8_CONFIGS
from slimgraph.kernels.w8a16_matmul import w8a16_matmul_kernel, w8a16_matmul_reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = "cuda"
# Tensor cores sum in another order than the CPU reference; fp32 outputs get fp32-accumulation slack.
GPU_TOL = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-3, 1e-4), torch.bfloat16: (1.6e-2, 1e-3)}


@pytest.fixture(autouse=True)
def real_gpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _int8(*shape):
    return torch.randint(-127, 128, shape, dtype=torch.int8, device=CUDA)


def _config_id(config):
    return "x".join(str(v) for v in config.kwargs.values()) + f"-w{config.num_warps}s{config.num_stages}"


@pytest.mark.parametrize("config", [c for b in MM_CONFIGS.values() for c in b], ids=_config_id)
def test_int8_matmul_configs(config):
    a, b = _int8(300, 520), _int8(264, 520)
    sa, sb = torch.rand(300, device=CUDA) * 0.01, torch.rand(264, device=CUDA) * 0.01
    bias = torch.randn(264, device=CUDA)
    out = int8_matmul_kernel(a, b, sa, sb, bias, "gelu", torch.float16, config=config)
    assert_close(out, int8_matmul_reference(a, b, sa, sb, bias, "gelu", torch.float16), GPU_TOL[torch.float16])


@pytest.mark.parametrize("config", [c for b in W8_CONFIGS.values() for c in b], ids=_config_id)
def test_w8a16_configs(config):
    x, w = torch.randn(20, 1000, device=CUDA, dtype=torch.bfloat16), _int8(264, 1000)
    s = torch.rand(264, device=CUDA) * 0.01
    for split in (1, 4):
        out = w8a16_matmul_kernel(x, w, s, None, config=config, split_k=split)
        assert_close(out, w8a16_matmul_reference(x, w, s), GPU_TOL[torch.bfloat16])


@pytest.mark.parametrize("config", [c for b in BSR_CONFIGS.values() for c in b], ids=_config_id)
def test_block_sparse_configs(config):
    dense = torch.randn(256, 512, device=CUDA, dtype=torch.float16)
    dense.view(4, 64, 8, 64)[:, :, ::2] = 0
    bsr = to_block_sparse(dense, (64, 64))
    x = torch.randn(200, 512, device=CUDA, dtype=torch.float16)
    out = block_sparse_matmul_kernel(x, bsr, config=config)
    assert_close(out, block_sparse_matmul_reference(x, bsr), GPU_TOL[torch.float16])


@pytest.mark.parametrize("config", [c for b in CONV_CONFIGS.values() for c in b], ids=_config_id)
def test_int8_conv_configs(config):
    x, w = _int8(2, 14, 14, 64), _int8(96, 3, 3, 64)
    xs, ws = torch.tensor([0.02], device=CUDA), torch.rand(96, device=CUDA) * 0.01
    out = int8_conv2d_kernel(x, w, xs, ws, None, 1, 1, 1, 1, "relu", torch.float32, config=config)
    assert_close(out, int8_conv2d_reference(x, w, xs, ws, None, 1, 1, 1, 1, "relu", torch.float32),
                 GPU_TOL[torch.float32])  # fmt: skip


@pytest.mark.parametrize("M", [1, 16, 100, 1024])
def test_autotuned_public_ops(M):
    K, N = 1024, 768
    x = torch.randn(M, K, device=CUDA, dtype=torch.float16)
    q, s = quantize_per_token(x)
    q_ref, s_ref = quantize_rows_reference(x)
    assert (q.int() - q_ref.int()).abs().max() <= 1
    wq, ws = quantize_per_token(torch.randn(N, K, device=CUDA))
    out = int8_matmul(q, wq, s, ws, None, "silu", torch.float16)
    assert_close(out, int8_matmul_reference(q, wq, s, ws, None, "silu", torch.float16), GPU_TOL[torch.float16])
    out = w8a16_matmul(x, wq, ws)
    assert_close(out, w8a16_matmul_reference(x, wq, ws), GPU_TOL[torch.float16])
    lq, _ = layernorm_quantize(x, None, None, 1e-5)
    assert lq.shape == x.shape
    bsr = to_block_sparse(torch.randn(N, K, device=CUDA, dtype=torch.float16), (64, 64))
    assert_close(block_sparse_matmul(x, bsr), block_sparse_matmul_reference(x, bsr), GPU_TOL[torch.float16])


def test_autotuned_conv():
    x, w = _int8(4, 28, 28, 128), _int8(128, 3, 3, 128)
    xs, ws = torch.tensor([0.02], device=CUDA), torch.rand(128, device=CUDA) * 0.01
    out = int8_conv2d(x, w, xs, ws, None, stride=1, padding=1, activation="relu")
    assert_close(out, int8_conv2d_reference(x, w, xs, ws, None, 1, 1, 1, 1, "relu"), GPU_TOL[torch.float16])
