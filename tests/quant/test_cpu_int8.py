"""The oneDNN int8 CPU path of the int8 ops against their torch reference (same op, SLIMGRAPH_ONEDNN=0): odd
shapes, batch 1, bias or not, every activation, per-channel scales, int8 (requantized) outputs, conv geometry;
weight prepacking once per weight; the fallback where oneDNN is off or unavailable."""

import gc

import pytest
import torch

from slimgraph.kernels import ACTIVATIONS
from slimgraph.quant import cpu_int8
from slimgraph.quant.ops import quantize_tensor_reference, quantize_weight

sg = torch.ops.slimgraph
pytestmark = pytest.mark.skipif(not cpu_int8.available(), reason="oneDNN int8 ops need an x86 CPU build of torch")


@pytest.fixture
def reference(monkeypatch):
    """Runs a callable with the oneDNN path off: the ops' torch reference."""

    def run(fn):
        monkeypatch.setenv("SLIMGRAPH_ONEDNN", "0")
        try:
            return fn()
        finally:
            monkeypatch.delenv("SLIMGRAPH_ONEDNN")

    return run


def _close(y, ref):
    """Same numbers up to float32 rounding of the epilogue (the int32 sums are exact on both paths)."""
    assert y.shape == ref.shape and y.dtype == ref.dtype
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()) + 1e-6)


def _int8_close(y, ref):
    """Requantized int8 outputs: a value on a rounding tie may land one step apart, nothing more."""
    assert y.dtype == torch.int8 and y.shape == ref.shape
    diff = (y.int() - ref.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01


def _static_input(shape):
    x = torch.randn(*shape)
    s = (x.abs().max() / 100).reshape(())  # some values saturate at -128/127
    return quantize_tensor_reference(x, s), s


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_qlinear_static_matches_reference_for_every_activation(act, reference):
    q, s = _static_input((5, 37))
    wq, ws = quantize_weight(torch.randn(11, 37) * torch.logspace(-2, 0, 11)[:, None])
    b = torch.randn(11)
    op = lambda: sg.qlinear_static(q, s, wq, ws, b, act, None, torch.float32)  # noqa: E731
    _close(op(), reference(op))


@pytest.mark.parametrize("shape,n,bias", [((1, 16), 8, True), ((1, 1, 97), 13, False), ((3, 7, 64), 31, True)],
                         ids=["m1", "batch1-prime-k", "3d"])
@pytest.mark.parametrize("act", ["none", "relu", "sigmoid"])  # sigmoid is not a oneDNN post-op: applied after
def test_qlinear_static_and_dynamic_odd_shapes(shape, n, bias, act, reference):
    q, s = _static_input(shape)
    wq, ws = quantize_weight(torch.randn(n, shape[-1]))
    b = torch.randn(n) if bias else None
    xq, rows = sg.dynamic_quantize_per_token(torch.randn(*shape) * 3)
    static = lambda: sg.qlinear_static(q, s, wq, ws, b, act, None, torch.float32)  # noqa: E731
    dynamic = lambda: sg.qlinear_dynamic(xq, rows, wq, ws, b, act, torch.float32)  # noqa: E731
    _close(static(), reference(static))
    _close(dynamic(), reference(dynamic))


@pytest.mark.parametrize("act", ["none", "relu", "gelu"])
def test_qlinear_requantized_output(act, reference):
    q, s = _static_input((64, 48))
    wq, ws = quantize_weight(torch.randn(24, 48))
    out_scale, b = torch.tensor(0.04), torch.randn(24)
    op = lambda: sg.qlinear_static(q, s, wq, ws, b, act, out_scale, torch.float32)  # noqa: E731
    _int8_close(op(), reference(op))


def test_qlinear_bf16_output(reference):
    q, s = _static_input((4, 32))
    wq, ws = quantize_weight(torch.randn(8, 32))
    op = lambda: sg.qlinear_static(q, s, wq, ws, None, "none", None, torch.bfloat16)  # noqa: E731
    _close(op(), reference(op))


CONVS = [  # (batch, cin, cout, kernel, stride, padding, dilation, groups, hw)
    (1, 3, 8, 3, 1, 1, 1, 1, (9, 7)),
    (2, 8, 8, 3, 2, 1, 1, 8, (11, 11)),  # depthwise, strided
    (1, 4, 6, 1, 1, 0, 1, 2, (5, 13)),  # grouped 1x1
    (2, 5, 7, 3, 1, 2, 2, 1, (10, 9)),  # dilated, prime channels
]


@pytest.mark.parametrize("case", CONVS, ids=["dense-b1", "depthwise", "grouped-1x1", "dilated"])
@pytest.mark.parametrize("act,bias", [("none", True), ("relu", False), ("silu", True)])
def test_qconv_static_and_dynamic_match_reference(case, act, bias, reference):
    batch, cin, cout, k, stride, pad, dil, groups, hw = case
    q, s = _static_input((batch, cin, *hw))
    w = torch.randn(cout, cin // groups, k, k) * torch.logspace(-1, 0, cout).view(-1, 1, 1, 1)
    wq, ws = quantize_weight(w)
    b = torch.randn(cout) if bias else None
    geometry = ([stride] * 2, [pad] * 2, [dil] * 2, groups)
    dq, ds = sg.dynamic_quantize_per_tensor(torch.randn(batch, cin, *hw))
    static = lambda: sg.qconv_static(q, s, wq, ws, b, *geometry, act, None, torch.float32)  # noqa: E731
    dynamic = lambda: sg.qconv_dynamic(dq, ds, wq, ws, b, *geometry, act, torch.float32)  # noqa: E731
    requant = lambda: sg.qconv_static(q, s, wq, ws, b, *geometry, act, torch.tensor(0.05), torch.float32)  # noqa: E731
    _close(static(), reference(static))
    _close(dynamic(), reference(dynamic))
    _int8_close(requant(), reference(requant))
    assert static().is_contiguous()  # NCHW like the reference, whatever layout oneDNN picked


def test_qconv1d(reference):
    q, s = _static_input((2, 4, 17))
    wq, ws = quantize_weight(torch.randn(6, 4, 3))
    b = torch.randn(6)
    op = lambda: sg.qconv_static(q, s, wq, ws, b, [2], [1], [1], 1, "relu", None, torch.float32)  # noqa: E731
    _close(op(), reference(op))


def test_weights_are_packed_once_and_repacked_after_an_in_place_change(reference):
    cpu_int8.clear_cache()
    q, s = _static_input((4, 32))
    w = torch.randn(16, 32)
    wq, ws = quantize_weight(w)
    first = sg.qlinear_static(q, s, wq, ws, None, "none", None, torch.float32)
    for _ in range(3):
        assert torch.equal(sg.qlinear_static(q, s, wq, ws, None, "none", None, torch.float32), first)
    assert cpu_int8.cache_info() == {"packs": 1, "hits": 3, "weights": 1}
    wq.mul_(-1)  # an in-place update must not run on the stale packed copy
    flipped = sg.qlinear_static(q, s, wq, ws, None, "none", None, torch.float32)
    assert cpu_int8.cache_info()["packs"] == 2
    _close(flipped, -first)
    del wq
    gc.collect()
    assert cpu_int8.cache_info()["weights"] == 0  # the cache does not keep dead weights alive


def test_weights_made_in_inference_mode(reference):
    with torch.inference_mode():
        q, s = _static_input((3, 16))
        wq, ws = quantize_weight(torch.randn(8, 16))
        op = lambda: sg.qlinear_static(q, s, wq, ws, None, "relu", None, torch.float32)  # noqa: E731
        _close(op(), reference(op))
        _close(op(), reference(op))  # second call: from the cache


def test_conv_geometries_are_packed_separately():
    cpu_int8.clear_cache()
    q, s = _static_input((1, 4, 8, 8))
    wq, ws = quantize_weight(torch.randn(4, 4, 3, 3))
    a = sg.qconv_static(q, s, wq, ws, None, [1, 1], [1, 1], [1, 1], 1, "none", None, torch.float32)
    b = sg.qconv_static(q, s, wq, ws, None, [2, 2], [1, 1], [1, 1], 1, "none", None, torch.float32)
    assert a.shape == (1, 4, 8, 8) and b.shape == (1, 4, 4, 4)
    assert cpu_int8.cache_info()["packs"] == 2


def test_fallback_when_disabled(monkeypatch):
    monkeypatch.setenv("SLIMGRAPH_ONEDNN", "off")
    assert not cpu_int8.available()
    q, s = _static_input((2, 8))
    wq, ws = quantize_weight(torch.randn(4, 8))
    assert cpu_int8.qlinear(q, s, wq, ws, None, "none", None, torch.float32) is None
    y = sg.qlinear_static(q, s, wq, ws, None, "none", None, torch.float32)  # the reference runs
    expected = (q.float() @ wq.float().t()) * s * ws
    _close(y, expected)


def test_cases_onednn_does_not_take_fall_back():
    q, s = _static_input((2, 8))
    wq, ws = quantize_weight(torch.randn(4, 8))
    rows = torch.rand(2)
    # per-row scales with an int8 output: no such oneDNN call, the reference handles it
    assert cpu_int8.qlinear(q, rows, wq, ws, None, "none", torch.tensor(0.1), torch.float32, per_row=True) is None
    assert cpu_int8.qlinear(q.float(), s, wq, ws, None, "none", None, torch.float32) is None  # not int8
    per_pixel = torch.rand(1, 8, 8)
    xq, _ = _static_input((1, 4, 8, 8))
    cw, cs = quantize_weight(torch.randn(4, 4, 1, 1))
    assert cpu_int8.qconv(xq, per_pixel, cw, cs, None, [1, 1], [0, 0], [1, 1], 1, "none", None,
                          torch.float32) is None


def test_quantized_model_output_unchanged_by_the_onednn_path(reference):
    import slimgraph as sg_api
    from slimgraph.testing.models import make

    model, args, _ = make("residual_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = sg_api.quantize(model, args, scheme="w8a8")
    with torch.no_grad():
        fast, slow = q(*args), reference(lambda: q(*args))
    torch.testing.assert_close(fast, slow, rtol=1e-3, atol=1e-3 * float(slow.abs().max()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("sign", ["non-negative", "signed"])
def test_extreme_values_sum_exactly(sign, reference):
    """Activations and weights at the int8 extremes: on x86 without VNNI oneDNN's uint8 x int8 kernels add pairs of
    products in int16 with saturation, which gave 255 for 127 * 127 * 2 before inputs were kept in [0, 128]."""
    k = 64
    q = torch.full((3, k), 127, dtype=torch.int8)
    if sign == "signed":
        q[1] = -128  # the static quantizer's bottom value
        q[2, ::2] = -127
    wq = torch.full((5, k), 127, dtype=torch.int8)
    wq[1] = -127
    ws, one, bias = torch.rand(5) + 0.5, torch.tensor(1.0), torch.randn(5)
    static = lambda: sg.qlinear_static(q, one, wq, ws, bias, "relu", None, torch.float32)  # noqa: E731
    dynamic = lambda: sg.qlinear_dynamic(q, torch.ones(3), wq, ws, bias, "none", torch.float32)  # noqa: E731
    expected = (q.double() @ wq.double().t() * ws.double() + bias.double()).float()
    _close(static(), torch.relu(expected))
    _close(dynamic(), expected)
    _close(static(), reference(static))
    x = q.reshape(1, 3, 8, 8)
    cw = torch.full((2, 3, 3, 3), 127, dtype=torch.int8)
    conv = lambda: sg.qconv_static(x, one, cw, torch.ones(2), None, [1, 1], [1, 1], [1, 1], 1, "none", None,  # noqa: E731
                                   torch.float32)
    want = torch.nn.functional.conv2d(x.double(), cw.double(), padding=1).float()
    _close(conv(), want)
    _close(conv(), reference(conv))



@pytest.mark.skipif(not cpu_int8.int_mm_exact(), reason="torch._int_mm does not sum exactly on this CPU")
def test_dynamic_linear_runs_int_mm_where_it_is_exact(monkeypatch, reference):
    """Per-row scales gain nothing from oneDNN's epilogue: the dynamic Linear takes torch._int_mm (signed, no shift)."""
    calls = []
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(a.shape) or int_mm(a, b))
    xq, rows = sg.dynamic_quantize_per_token(torch.randn(2, 5, 48) * 3)
    wq, ws = quantize_weight(torch.randn(24, 48))
    b = torch.randn(24)
    op = lambda: sg.qlinear_dynamic(xq, rows, wq, ws, b, "gelu", torch.bfloat16)  # noqa: E731
    y = op()
    assert calls == [(10, 48)]
    _close(y.float(), reference(op).float())


def test_dynamic_linear_without_int_mm_keeps_onednn(monkeypatch, reference):
    """Where torch._int_mm is not exact (or missing) the oneDNN uint8 path runs, with the same numbers."""
    monkeypatch.setattr(cpu_int8, "int_mm_exact", lambda: False)
    calls = []
    int_mm = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(a.shape) or int_mm(a, b))
    xq, rows = sg.dynamic_quantize_per_token(torch.randn(7, 40) * 3)
    wq, ws = quantize_weight(torch.randn(9, 40))
    op = lambda: sg.qlinear_dynamic(xq, rows, wq, ws, None, "relu", torch.float32)  # noqa: E731
    y = op()
    assert calls == []  # the oneDNN path ran (the torch reference below may use _int_mm itself)
    _close(y, reference(op))
