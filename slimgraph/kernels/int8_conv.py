"""int8 2-D convolution on NHWC tensors as an implicit GEMM, with the int8_matmul epilogue fused.

    out[b, oh, ow, oc] = act(sum_{kh, kw, c} x[b, ih, iw, c] * w[oc, kh, kw, c] * x_scale * w_scale[oc] + bias[oc])

GEMM view: M = B * OH * OW output pixels, N = OC / groups, K = KH * KW * C / groups, one GEMM per group. Nothing
is unfolded in memory: each K step gathers a [BLOCK_M pixels, BLOCK_K channels] tile of x for one filter tap
(contiguous channels of NHWC pixels: coalesced, vectorizable loads; padding is a load mask) and the matching
[BLOCK_K, BLOCK_N] tile of the weight, whose OHWI layout puts the same (tap, channel) order along its rows. All
taps and channel blocks run in one flat loop so Triton's software pipeline keeps loads in flight across taps.

Supported: stride, padding (zeros), dilation, groups (any, including depthwise), per-output-channel weight
scales, a per-tensor activation scale, or a per-pixel activation scale [B, H, W] for 1x1 kernels (there each
output pixel reads one input pixel, so its scale factors out of the sum; a KxK window mixes pixels, so it needs
a per-tensor scale). Not supported: non-zero padding modes, transposed convs.

Performance notes (untuned): convs with few channels per group (the RGB stem, depthwise) fill a BLOCK_K >= 32
tile with mostly masked lanes; they are correct but waste tensor-core work. A dedicated depthwise kernel and
packing (kw, c) into K for small C are the known fixes, not done here.

Weight layout: ``w`` is OHWI ``[OC, KH, KW, C // groups]``: from a torch OIHW weight, ``w.permute(0, 2, 3, 1)``;
per-channel int8 with ``q, s = quantize_per_token(w_ohwi.reshape(OC, -1))``.

Functions: :func:`int8_conv2d` (dispatch: Triton or the torch reference), :func:`int8_conv2d_kernel` (the
launcher), :func:`int8_conv2d_reference`. Graphs reach them through ``slimgraph::qconv_static`` / ``qconv_dynamic``
(:mod:`slimgraph.ops.int8_conv`: NCHW graph tensors, permuted to NHWC around the kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..errors import InputError
from .checks import check_float_dtype, check_same_device, check_tensor, check_vector
from .dispatch import use_triton
from .epilogue import activation_code, apply_activation, apply_activation_tl
from .int8_matmul import MAX_K
from .launch import candidate_configs, launch
from .tiles import gemm_grid, grouped_tile, m_bucket, tile_config, tile_table, tune_id

__all__ = ["CONFIGS", "INTERPRETER_CONFIG", "int8_conv2d", "int8_conv2d_reference"]

OP = "int8_conv2d"


# Keyed by M = output pixels; rows of (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). UNTUNED GUESSES: BLOCK_K = 64
# channels matches most ResNet stages (C per tap of 64..2048), larger K steps only pay off with many channels; the
# first row is the default without autotuning. 128x256 and 256x128 tiles spilled on sm_80 in the AOT check
# (bench/aot.py) and were dropped.
CONFIGS: dict[str, list[triton.Config]] = tile_table({
    "m16": [(16, 64, 64, 4, 4), (16, 128, 64, 4, 4), (16, 64, 128, 4, 4)],
    "m64": [(64, 64, 64, 4, 4), (32, 128, 64, 4, 4), (64, 128, 64, 4, 4)],
    "m256": [(64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (128, 128, 64, 8, 3)],
    "large": [(128, 128, 64, 8, 4), (128, 128, 128, 8, 3), (64, 128, 128, 4, 4)],
    # Few channels per group (the RGB stem, C = 3): every K step is a masked gather of a few channels per pixel,
    # whose per-row addresses and masks are what fills the registers (the large configs spilled 0.2-4 KB per
    # thread on the 7x7 stem). Small tiles, the int8 MMA's minimum K step and a short pipeline; 128x64x32 spilled
    # 84 B on sm_80.
    "narrow": [(64, 64, 32, 4, 2), (32, 64, 32, 4, 3)],
})  # fmt: skip
NARROW_C = 32  # channels per group below which the "narrow" configs are used, whatever M
INTERPRETER_CONFIG = tile_config(16, 16, 32, 4, 1, group=2)


@triton.jit
def _int8_conv2d_kernel(
    x_ptr, w_ptr, x_scale_ptr, w_scale_ptr, bias_ptr, out_ptr,
    H, W, C, OH, OW, OC, M, C_G, OC_G, KW, TAPS,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    stride_ws,  # 0 broadcasts a single weight scale
    X_SCALE_PER_PIXEL: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, EVEN_C: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, OC_G, BLOCK_M, BLOCK_N, GROUP_M)
    group = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    pixels = offs_m % M  # wrapped like int8_matmul; the store drops the duplicates
    cols = offs_n % OC_G
    ow = pixels % OW
    oh = (pixels // OW) % OH
    batch = pixels // (OW * OH)
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    oc = group.to(tl.int64) * OC_G + cols  # int64: indexes the weight rows and, below, the output
    offs_k = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + oc.to(tl.int64) * (TAPS * C_G)
    x_group = x_ptr + group.to(tl.int64) * C_G

    c_steps = tl.cdiv(C_G, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for step in range(0, TAPS * c_steps):  # one flat loop over (tap, channel block): pipelined across taps
        tap = step // c_steps
        c0 = (step % c_steps) * BLOCK_K
        ih = ih0 + (tap // KW) * dil_h
        iw = iw0 + (tap % KW) * dil_w
        inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_pix = x_group + ((batch * H + ih) * W + iw).to(tl.int64) * C  # int64: B*H*W*C may pass 2**31
        offs_c = c0 + offs_k
        tap_offset = tap.to(tl.int64) * C_G
        if EVEN_C:
            a = tl.load(x_pix[:, None] + offs_c[None, :], mask=inside[:, None], other=0)
            b = tl.load(w_rows[None, :] + tap_offset + offs_c[:, None])
        else:
            a = tl.load(x_pix[:, None] + offs_c[None, :], mask=inside[:, None] & (offs_c[None, :] < C_G), other=0)
            b = tl.load(w_rows[None, :] + tap_offset + offs_c[:, None], mask=offs_c[:, None] < C_G, other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)

    w_scale = tl.load(w_scale_ptr + oc * stride_ws)[None, :]
    if X_SCALE_PER_PIXEL:  # 1x1 kernels: the one input pixel each output pixel reads (0 under padding, acc is 0)
        inside0 = (ih0 >= 0) & (ih0 < H) & (iw0 >= 0) & (iw0 < W)
        x_scale = tl.load(x_scale_ptr + ((batch * H + ih0) * W + iw0).to(tl.int64), mask=inside0, other=0.0)
        y = acc.to(tl.float32) * x_scale[:, None] * w_scale
    else:
        y = acc.to(tl.float32) * tl.load(x_scale_ptr) * w_scale
    if HAS_BIAS:
        y += tl.load(bias_ptr + oc).to(tl.float32)[None, :]
    y = apply_activation_tl(y, ACTIVATION)
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * OC + (group.to(tl.int64) * OC_G + offs_n)[None, :]
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < OC_G))


# ------------------------------------------------------------------------------------------------ checks, launch


def _pair(name: str, value, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= minimum for v in pair):
        raise InputError(f"{OP}: argument '{name}' must be an int or a pair of ints >= {minimum}, got {value!r}")
    return pair


def _check(x, w, x_scale, w_scale, bias, stride, padding, dilation, groups, activation, out_dtype):
    """Validate the op's arguments; returns the geometry dict, the activation code and the output shape."""
    check_tensor(OP, "x", x, dtypes=(torch.int8,), dim=4)
    check_tensor(OP, "w", w, dtypes=(torch.int8,), dim=4)
    stride, padding, dilation = _pair("stride", stride, 1), _pair("padding", padding, 0), _pair("dilation", dilation, 1)
    if not isinstance(groups, int) or groups < 1:
        raise InputError(f"{OP}: argument 'groups' must be an int >= 1, got {groups!r}")
    B, H, W, C = x.shape
    OC, KH, KW, C_G = w.shape
    if C % groups or OC % groups:
        raise InputError(f"{OP}: groups={groups} must divide the input channels ({C}) and output channels ({OC})")
    if C_G != C // groups:
        raise InputError(
            f"{OP}: mismatched channels: x is NHWC {tuple(x.shape)} with {C} channels, so with groups={groups} the "
            f"OHWI weight needs {C // groups} input channels in its last dim, got w {tuple(w.shape)} "
            "(a torch OIHW weight must be permuted with w.permute(0, 2, 3, 1))"
        )
    if KH * KW * C_G > MAX_K:
        raise InputError(
            f"{OP}: KH*KW*C/groups = {KH * KW * C_G} exceeds {MAX_K}; the int32 accumulator could overflow"
        )
    OH = (H + 2 * padding[0] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    OW = (W + 2 * padding[1] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    if OH <= 0 or OW <= 0:
        raise InputError(
            f"{OP}: the {KH}x{KW} kernel (dilation {dilation}, padding {padding}) does not fit the {H}x{W} input"
        )
    check_tensor(OP, "x_scale", x_scale, dtypes=(torch.float32,))
    if x_scale.numel() != 1:
        if tuple(x_scale.shape) != (B, H, W):
            raise InputError(
                f"{OP}: 'x_scale' must be a single per-tensor scale or per-pixel [B, H, W] = {(B, H, W)}, "
                f"got shape {tuple(x_scale.shape)}"
            )
        if (KH, KW) != (1, 1):
            raise InputError(
                f"{OP}: per-pixel activation scales need a 1x1 kernel (a {KH}x{KW} window sums pixels with different "
                "scales); quantize x per tensor instead"
            )
    check_vector(OP, "w_scale", w_scale, OC, dtypes=(torch.float32,), allow_scalar=True)
    if bias is not None:
        check_vector(OP, "bias", bias, OC, dtypes=(torch.float16, torch.bfloat16, torch.float32))
    check_same_device(OP, x=x, w=w, x_scale=x_scale, w_scale=w_scale, bias=bias)
    check_float_dtype(OP, "out_dtype", out_dtype)
    geometry = dict(B=B, H=H, W=W, C=C, OC=OC, KH=KH, KW=KW, C_G=C_G, OH=OH, OW=OW, stride=stride, padding=padding,
                    dilation=dilation, groups=groups)  # fmt: skip
    return geometry, activation_code(OP, activation), (B, OH, OW, OC)


def int8_conv2d_kernel(x, w, x_scale, w_scale, bias=None, stride=1, padding=0, dilation=1, groups=1,
                       activation=None, out_dtype=torch.float16, *, config=None):  # fmt: skip
    """Run the Triton kernel directly (GPU, or CPU under the interpreter); ``config`` pins a tile config."""
    g, act, out_shape = _check(x, w, x_scale, w_scale, bias, stride, padding, dilation, groups, activation, out_dtype)
    out = torch.empty(out_shape, dtype=out_dtype, device=x.device)
    M = g["B"] * g["OH"] * g["OW"]
    OC_G = g["OC"] // g["groups"]
    if out.numel() == 0:
        return out
    if g["C_G"] == 0:
        return int8_conv2d_reference(x, w, x_scale, w_scale, bias, stride, padding, dilation, groups, activation,
                                     out_dtype)  # fmt: skip
    bucket = "narrow" if g["C_G"] < NARROW_C else m_bucket(M)
    configs = candidate_configs(CONFIGS[bucket], interpreter_config=INTERPRETER_CONFIG, config=config)
    launch(
        _int8_conv2d_kernel,
        gemm_grid(M, OC_G, g["groups"]),  # one GEMM per group along the grid's second axis
        (x, w, x_scale, w_scale, bias if bias is not None else w_scale, out,
         g["H"], g["W"], g["C"], g["OH"], g["OW"], g["OC"], M, g["C_G"], OC_G, g["KW"], g["KH"] * g["KW"],
         *g["stride"], *g["padding"], *g["dilation"],
         0 if w_scale.numel() == 1 else 1),
        configs=configs,
        key=("C", "OC", "TAPS", "stride_h", "HAS_BIAS", "ACTIVATION"),
        bucket=tune_id(bucket, M),
        derived={"EVEN_C": lambda meta: meta["C_G"] % meta["BLOCK_K"] == 0},
        X_SCALE_PER_PIXEL=x_scale.numel() != 1,
        HAS_BIAS=bias is not None,
        ACTIVATION=act,
    )  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------------- reference


def int8_conv2d_reference(x, w, x_scale, w_scale, bias=None, stride=1, padding=0, dilation=1, groups=1,
                          activation=None, out_dtype=torch.float16):  # fmt: skip
    """Pure torch with the kernel's arithmetic: exact integer conv, then (acc * x_scale) * w_scale + bias in fp32."""
    stride, padding, dilation = _pair("stride", stride, 1), _pair("padding", padding, 0), _pair("dilation", dilation, 1)
    # fp32 sums are exact while every partial sum stays below 2**24; beyond that use fp64 (always exact here).
    exact = torch.float32 if w[0].numel() * 128 * 128 < 2**24 else torch.float64
    acc = F.conv2d(x.permute(0, 3, 1, 2).to(exact), w.permute(0, 3, 1, 2).to(exact), None, stride, padding, dilation,
                   groups).permute(0, 2, 3, 1).to(torch.float32)  # fmt: skip
    if x_scale.numel() == 1:
        scale = x_scale.reshape(1, 1, 1, 1)
    else:  # 1x1 kernel: output pixel (oh, ow) reads input pixel (oh * s - p, ow * s - p); 0 where that is padding
        OH, OW = acc.shape[1:3]
        padded = F.pad(x_scale, (padding[1], padding[1], padding[0], padding[0]))
        scale = padded[:, :: stride[0], :: stride[1]][:, :OH, :OW].unsqueeze(-1)
    y = acc * scale * w_scale.reshape(1, 1, 1, -1)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return apply_activation(y, activation).to(out_dtype).contiguous()


# --------------------------------------------------------------------------------------------------- public API


def int8_conv2d(x, w, x_scale, w_scale, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
                out_dtype=torch.float16):  # fmt: skip
    """int8 conv2d on NHWC: ``act(conv(x, w) * x_scale * w_scale[oc] + bias)``, int32 accumulation.

    Args:
        x: int8 NHWC ``[B, H, W, C]``, contiguous.
        w: int8 OHWI ``[OC, KH, KW, C // groups]``, contiguous (torch OIHW weight ``.permute(0, 2, 3, 1)``).
        x_scale: float32 single element (per tensor), or ``[B, H, W]`` per pixel for 1x1 kernels.
        w_scale: float32 ``[OC]`` per output channel (or a single element).
        bias: optional ``[OC]`` fp16/bf16/fp32.
        stride, padding, dilation: int or pair; zero padding. groups: any divisor of C and OC.
        activation: None or a name of :data:`slimgraph.kernels.ACTIVATIONS`. out_dtype: fp16/bf16/fp32.

    Returns NHWC ``[B, OH, OW, OC]`` in ``out_dtype``.
    """
    args = (x, w, x_scale, w_scale, bias, stride, padding, dilation, groups, activation, out_dtype)
    if use_triton(x):
        return int8_conv2d_kernel(*args)
    _check(*args)
    return int8_conv2d_reference(*args)
