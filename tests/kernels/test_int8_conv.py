"""int8_conv2d (NHWC implicit GEMM): kernel vs reference vs float64 conv, geometry cases, bad inputs."""

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers import OUT_DTYPES, assert_close, counting, rand_int8, rand_scale, rel_error

from slimgraph import InputError
from slimgraph.kernels import apply_activation, int8_conv2d
from slimgraph.kernels.int8_conv import CONFIGS, int8_conv2d_kernel, int8_conv2d_reference

KERNEL = "_int8_conv2d_kernel"
# (B, H, W, C, OC, KH, KW, stride, padding, dilation, groups): odd channel counts (C not a multiple of the 32
# channel block), strides, padding, dilation, grouped and depthwise, rectangular kernels and inputs.
GEOMETRIES = [
    pytest.param((1, 7, 7, 5, 13, 3, 3, 1, 1, 1, 1), id="3x3-odd-channels"),
    pytest.param((2, 9, 8, 16, 24, 3, 3, 2, 1, 1, 1), id="3x3-stride2"),
    pytest.param((1, 8, 8, 8, 8, 3, 3, 1, 2, 2, 1), id="3x3-dilated"),
    pytest.param((1, 6, 7, 12, 18, 3, 1, (1, 2), (1, 0), 1, 3), id="3x1-grouped"),
    pytest.param((1, 5, 5, 8, 8, 3, 3, 1, 1, 1, 8), id="depthwise"),
    pytest.param((2, 7, 5, 40, 33, 1, 1, 1, 0, 1, 1), id="1x1"),
    pytest.param((1, 9, 9, 3, 16, 5, 5, 2, 2, 1, 1), id="5x5-rgb-stem"),
]


def _inputs(B, H, W, C, OC, KH, KW, groups):
    x = rand_int8(B, H, W, C)
    w = rand_int8(OC, KH, KW, C // groups)
    return x, w, torch.tensor([0.02]), rand_scale(OC), torch.randn(OC)


def _float64(x, w, x_scale, w_scale, bias, stride, padding, dilation, groups, act):
    acc = F.conv2d(x.permute(0, 3, 1, 2).double(), w.permute(0, 3, 1, 2).double(), None, stride, padding, dilation,
                   groups).permute(0, 2, 3, 1)  # fmt: skip
    return apply_activation(acc * x_scale.double() * w_scale.double() + bias.double(), act)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_kernel_matches_reference(geometry):
    B, H, W, C, OC, KH, KW, stride, padding, dilation, groups = geometry
    x, w, xs, ws, bias = _inputs(B, H, W, C, OC, KH, KW, groups)
    conv = (stride, padding, dilation, groups)
    with counting(KERNEL, expected=1):
        out = int8_conv2d_kernel(x, w, xs, ws, bias, *conv, "relu", torch.float32)
    ref = int8_conv2d_reference(x, w, xs, ws, bias, *conv, "relu", torch.float32)
    assert_close(out, ref)
    assert rel_error(ref, _float64(x, w, xs, ws, bias, *conv, "relu")) < 1e-6


@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
@pytest.mark.parametrize("act", ["none", "gelu", "silu", "hardswish"])
def test_activations_and_output_dtypes(act, out_dtype):
    x, w, xs, ws, bias = _inputs(1, 6, 6, 8, 11, 3, 3, 1)
    out = int8_conv2d(x, w, xs, ws, bias, stride=1, padding=1, activation=act, out_dtype=out_dtype)
    assert out.shape == (1, 6, 6, 11) and out.dtype == out_dtype
    assert_close(out, int8_conv2d_reference(x, w, xs, ws, bias, 1, 1, 1, 1, act, out_dtype))


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)])
def test_per_pixel_activation_scale_for_1x1(stride, padding):
    x, w, _, ws, bias = _inputs(2, 7, 5, 16, 20, 1, 1, 1)
    xs = rand_scale(2, 7, 5)
    out = int8_conv2d_kernel(x, w, xs, ws, bias, stride, padding, 1, 1, None, torch.float32)
    assert_close(out, int8_conv2d_reference(x, w, xs, ws, bias, stride, padding, 1, 1, None, torch.float32))
    # Per pixel = per token of the 1x1 conv's GEMM: compare with exact math on the strided, padded pixels.
    xp = F.pad(x.permute(0, 3, 1, 2).double() * xs[:, None].double(), (padding,) * 4)[:, :, ::stride, ::stride]
    exact = torch.einsum("bchw,oc->bhwo", xp, w[:, 0, 0].double()) * ws.double() + bias.double()
    assert rel_error(out, exact) < 1e-6


@pytest.mark.parametrize("bucket", sorted(CONFIGS))
def test_every_curated_config_runs(bucket):
    x, w, xs, ws, bias = _inputs(1, 5, 6, 70, 40, 3, 3, 1)
    expected = int8_conv2d_reference(x, w, xs, ws, bias, 1, 1, 1, 1, "silu", torch.float16)
    for config in CONFIGS[bucket]:
        out = int8_conv2d_kernel(x, w, xs, ws, bias, 1, 1, 1, 1, "silu", torch.float16, config=config)
        assert_close(out, expected, what=str(config))


def test_cpu_without_interpreter_uses_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    x, w, xs, ws, bias = _inputs(1, 5, 5, 8, 8, 3, 3, 1)
    with counting(KERNEL, expected=0):
        out = int8_conv2d(x, w, xs, ws, bias, padding=1)
    assert torch.equal(out, int8_conv2d_reference(x, w, xs, ws, bias, 1, 1, 1, 1))


X, WT = rand_int8(1, 6, 6, 8), rand_int8(4, 3, 3, 8)
GOOD = dict(x=X, w=WT, x_scale=torch.tensor([0.02]), w_scale=rand_scale(4))


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(x=X.float()), "argument 'x' must have dtype int8"),
        (dict(x=X[0]), "argument 'x' must be 4-D"),
        (dict(x=X.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)), "argument 'x' must be contiguous"),
        (dict(w=rand_int8(4, 8, 3, 3)), "mismatched channels"),
        (dict(groups=3), "groups=3 must divide"),
        (dict(stride=0), "argument 'stride' must be an int or a pair of ints >= 1"),
        (dict(padding=(1, 1, 1)), "argument 'padding' must be an int or a pair"),
        (dict(w=rand_int8(4, 9, 9, 8)), "does not fit the 6x6 input"),
        (dict(x_scale=rand_scale(1, 6, 6)), "per-pixel activation scales need a 1x1 kernel"),
        (dict(x_scale=rand_scale(6)), "'x_scale' must be a single per-tensor scale or per-pixel"),
        (dict(w_scale=rand_scale(5)), r"'w_scale' must have shape \(4,\)"),
        (dict(bias=torch.ones(4, dtype=torch.int64)), "'bias' must have dtype"),
        (dict(activation="swish"), "unknown activation"),
        (dict(out_dtype=torch.int8), "'out_dtype' must be torch.float16"),
        (dict(w=WT.to("meta")), "all tensors must be on one device"),
    ],
)
def test_bad_inputs_raise_input_error(change, message):
    with pytest.raises(InputError, match=message):
        int8_conv2d(**{**GOOD, **change})


def test_few_channels_take_the_narrow_configs(monkeypatch):
    # What a GPU launch would pick (recorded, not run): the stem's 3 channels -> the narrow bucket's configs.
    from slimgraph.kernels.dispatch import INTERPRET_ENV
    from slimgraph.kernels.launch import recording_launches

    monkeypatch.delenv(INTERPRET_ENV)
    xs, bias = torch.tensor([0.02]), None
    for channels, bucket in ((3, "narrow"), (64, "large")):
        x, w = rand_int8(2, 32, 32, channels), rand_int8(16, 3, 3, channels)
        with recording_launches() as records:
            int8_conv2d_kernel(x, w, xs, torch.rand(16), bias, 1, 1, 1, 1, None, torch.float16)
        assert [r.config for r in records] == CONFIGS[bucket]
        assert all(r.constexprs["EVEN_C"] == (channels % r.config.kwargs["BLOCK_K"] == 0) for r in records)
