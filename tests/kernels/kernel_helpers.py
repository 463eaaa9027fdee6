"""Tolerances and inputs shared by the kernel tests."""

from __future__ import annotations

import contextlib

import torch

from slimgraph.kernels.launch import LAUNCHES

OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Per output dtype: a relative tolerance of about one unit in the last place, plus an absolute floor relative to the
# output's largest magnitude for values near zero (fp32 transcendentals cancel there: the erf form of gelu computes
# 1 + erf(y) ~ 1e-5 for y ~ -4 with an absolute, not relative, error of 1e-7). bf16 gets a full ulp (2**-7) because
# the interpreter converts fp32 -> bf16 by truncation where the GPU and torch round to nearest even.
TOLERANCES = {torch.float32: (2e-6, 1e-6), torch.float16: (1e-3, 1e-4), torch.bfloat16: (8e-3, 1e-3)}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: tuple[float, float] | None = None, what: str = ""):
    """Elementwise ``|a - e| <= rtol * |e| + atol * max|e|``; NaN (poisoned, unwritten outputs) never passes.
    Any indexing or masking bug gives O(1) relative errors and fails."""
    assert actual.shape == expected.shape, f"{what} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what} dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.double(), expected.double()
    assert not a.isnan().any(), f"{what} has NaN (unwritten outputs are poisoned with NaN)"
    rtol, atol = TOLERANCES[expected.dtype] if tol is None else tol
    scale = e.abs().max().item() if e.numel() else 0.0
    bad = (a - e).abs() > rtol * e.abs() + atol * scale
    if bad.any():
        idx = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(
            f"{what} {int(bad.sum())}/{bad.numel()} elements off (rtol {rtol}, atol {atol} x {scale:.3g}); "
            f"first at {idx}: {a[idx].item()} vs {e[idx].item()}"
        )


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||a - e|| / ||e|| in float64: the relative error the kernel tests and bench/kernels.py report."""
    e = expected.double()
    return ((actual.double() - e).norm() / e.norm().clamp_min(1e-30)).item()


def rand_int8(*shape: int) -> torch.Tensor:
    return torch.randint(-127, 128, shape, dtype=torch.int8)


def rand_scale(*shape: int) -> torch.Tensor:
    """Positive float32 scales of the size int8 quantization produces (|x| ~ 1 -> absmax / 127)."""
    return torch.rand(shape, dtype=torch.float32) * 0.02 + 0.005


@contextlib.contextmanager
def counting(kernel_name: str, expected: int | None = None, at_least: int = 1):
    """Assert that the block launched the Triton kernel ``kernel_name`` (proof the interpreter ran, not the
    reference): exactly ``expected`` times, or at least ``at_least`` times."""
    before = LAUNCHES[kernel_name]
    yield
    launched = LAUNCHES[kernel_name] - before
    if expected is not None:
        assert launched == expected, f"{kernel_name} launched {launched} times, expected {expected}"
    else:
        assert launched >= at_least, f"{kernel_name} launched {launched} times, expected at least {at_least}"
