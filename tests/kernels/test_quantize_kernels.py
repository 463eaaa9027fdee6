"""quantize_per_token / layernorm_quantize / rmsnorm_quantize: kernel vs reference vs float64, edge cases."""

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import counting

from slimgraph import InputError
from slimgraph.kernels import layernorm_quantize, quantize_per_token, rmsnorm_quantize
from slimgraph.kernels.quantize import MIN_ABSMAX, norm_quantize_kernel, quantize_rows_reference

KERNEL = "_norm_quant_kernel"
SHAPES = [(1, 7), (13, 100), (3, 5, 33), (2, 1000)]
FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _reference(x, norm, weight=None, bias=None, eps=1e-5):
    x32 = x.float()
    w32 = None if weight is None else weight.float()
    if norm == "layernorm":
        x32 = F.layer_norm(x32, (x.shape[-1],), w32, None if bias is None else bias.float(), eps)
    elif norm == "rmsnorm":
        x32 = F.rms_norm(x32, (x.shape[-1],), w32, eps)
    return quantize_rows_reference(x32)


def _assert_quantized_close(q, scale, q_ref, scale_ref, exact: bool):
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert q.shape == q_ref.shape and scale.shape == scale_ref.shape
    torch.testing.assert_close(scale, scale_ref, rtol=1e-6, atol=0)
    diff = (q.int() - q_ref.int()).abs()
    if exact:
        assert torch.equal(q, q_ref), f"{int((diff > 0).sum())} elements differ"
    else:  # fp32 statistics summed in another order can move a value across a rounding boundary
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_per_token_matches_reference_exactly(shape, dtype):
    x = (torch.randn(shape) * 3 + 0.5).to(dtype)
    with counting(KERNEL, expected=1):
        q, scale = quantize_per_token(x)
    _assert_quantized_close(q, scale, *_reference(x, "none"), exact=True)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_norm_matches_reference(shape, dtype, norm, affine):
    K = shape[-1]
    x = (torch.randn(shape) * 2 + 1.0).to(dtype)
    weight = (torch.rand(K) + 0.5).to(dtype) if affine else None
    bias = torch.randn(K).to(dtype) if affine and norm == "layernorm" else None
    if norm == "layernorm":
        q, scale = layernorm_quantize(x, weight, bias, 1e-5)
    else:
        q, scale = rmsnorm_quantize(x, weight, 1e-5)
    _assert_quantized_close(q, scale, *_reference(x, norm, weight, bias), exact=False)


@pytest.mark.parametrize("norm", ["none", "layernorm", "rmsnorm"])
def test_chunked_path_for_long_rows(norm):
    # block_k=16 < K forces the multi-sweep path used for rows longer than MAX_ONE_PASS.
    x = torch.randn(3, 100) * 2 + 1
    w, b = torch.rand(100) + 0.5, torch.randn(100)
    q, scale = norm_quantize_kernel(x, w if norm != "none" else None, b if norm == "layernorm" else None, 1e-5,
                                    norm=norm, block_k=16)  # fmt: skip
    ref = _reference(x, norm, w if norm != "none" else None, b if norm == "layernorm" else None)
    _assert_quantized_close(q, scale, *ref, exact=norm == "none")


def test_ties_round_half_to_even_like_torch_round():
    # absmax 127 makes the multiplier exactly 1, so y * inv hits exact .5 ties.
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997]])
    q, scale = quantize_per_token(x)
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 0]]
    assert scale.item() == 1.0


def test_all_zero_rows_get_a_positive_scale_and_zero_codes():
    x = torch.zeros(3, 16)
    x[1] = torch.randn(16)
    for fn in (quantize_per_token, lambda t: layernorm_quantize(t, None, None, 1e-5), rmsnorm_quantize):
        q, scale = fn(x)
        assert torch.isfinite(scale).all() and (scale > 0).all()
        assert (q[0] == 0).all() and (q[2] == 0).all()
    assert quantize_per_token(x)[1][0].item() == pytest.approx(MIN_ABSMAX / 127)


@pytest.mark.parametrize("norm", ["none", "layernorm", "rmsnorm"])
def test_reference_matches_float64(norm):
    # The quantization error bound against exact math: |q * scale - y| <= scale / 2 (plus fp32 slack), and each
    # row uses the full code range.
    x = torch.randn(13, 100) * 3 + 0.5
    q, scale = _reference(x, norm)
    y = x.double()
    if norm == "layernorm":
        y = (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + 1e-5)
    elif norm == "rmsnorm":
        y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5)
    s = scale.double().unsqueeze(-1)
    assert ((q.double() * s - y).abs() <= s * (0.5 + 1e-4)).all()
    assert (q.abs().amax(-1) == 127).all()
    torch.testing.assert_close(scale.double(), y.abs().amax(-1) / 127, rtol=1e-5, atol=0)


def test_cpu_without_interpreter_uses_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    x = torch.randn(4, 32)
    with counting(KERNEL, expected=0):
        q, scale = quantize_per_token(x)
    assert torch.equal(q, quantize_rows_reference(x)[0])


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: quantize_per_token(torch.ones(4, 8, dtype=torch.int8)), "argument 'x' must have dtype float16"),
        (lambda: quantize_per_token(torch.randn(8, 4).T), "argument 'x' must be contiguous"),
        (lambda: quantize_per_token(torch.randn(4, 0)), "non-empty last dim"),
        (lambda: layernorm_quantize(torch.randn(4, 8), torch.ones(7), None), "argument 'weight' must have shape"),
        (lambda: layernorm_quantize(torch.randn(4, 8), None, torch.ones(8, dtype=torch.int32)), "'bias' must have"),
        (lambda: rmsnorm_quantize(torch.randn(4, 8), torch.ones(8, device="meta")), "on one device"),
        (lambda: rmsnorm_quantize(torch.randn(4, 8), None, -1.0), "'eps' must be >= 0"),
    ],
)
def test_bad_inputs_raise_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call()
