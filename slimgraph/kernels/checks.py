"""Argument checks of the kernel functions: each failure is an :class:`InputError` naming the function and the
argument, with what was expected and what came, before any kernel is launched."""

from __future__ import annotations

from collections.abc import Iterable
from math import prod

import torch

from ..errors import InputError

__all__ = ["check_float_dtype", "check_gemm_operands", "check_same_device", "check_tensor", "check_vector"]


def check_tensor(
    op: str,
    name: str,
    t,
    *,
    dtypes: Iterable[torch.dtype] | None = None,
    dim: int | tuple[int, ...] | None = None,
    min_dim: int | None = None,
    contiguous: bool = True,
) -> torch.Tensor:
    """Raise :class:`InputError` naming the op and argument unless ``t`` is a tensor of the expected kind."""
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{op}: argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            want = " or ".join(str(d).removeprefix("torch.") for d in dtypes)
            got = str(t.dtype).removeprefix("torch.")
            raise InputError(f"{op}: argument '{name}' must have dtype {want}, got {got}")
    if dim is not None:
        dims = (dim,) if isinstance(dim, int) else dim
        if t.dim() not in dims:
            want = " or ".join(f"{d}-D" for d in dims)
            raise InputError(f"{op}: argument '{name}' must be {want}, got shape {tuple(t.shape)}")
    if min_dim is not None and t.dim() < min_dim:
        raise InputError(f"{op}: argument '{name}' must have at least {min_dim} dims, got shape {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise InputError(
            f"{op}: argument '{name}' must be contiguous, got shape {tuple(t.shape)} with strides {t.stride()}; "
            "call .contiguous() on it first"
        )
    return t


def check_same_device(op: str, **tensors: torch.Tensor | None) -> torch.device:
    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        raise InputError(f"{op}: all tensors must be on one device, got {listing}")
    return next(iter(devices))


def check_float_dtype(op: str, name: str, dtype) -> torch.dtype:
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise InputError(f"{op}: argument '{name}' must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}")
    return dtype


def check_vector(op: str, name: str, t, length: int, *, dtypes=None, allow_scalar: bool = False) -> torch.Tensor:
    """A 1-D tensor of ``length`` entries (or, with ``allow_scalar``, one entry broadcast to all of them)."""
    check_tensor(op, name, t, dtypes=dtypes)
    if allow_scalar and t.numel() == 1:
        return t
    if t.dim() != 1 or t.shape[0] != length:
        also = " (or a single element)" if allow_scalar else ""
        raise InputError(f"{op}: argument '{name}' must have shape ({length},){also}, got {tuple(t.shape)}")
    return t


def check_gemm_operands(op: str, x_name: str, x, w_name: str, w, *, x_dtypes: Iterable[torch.dtype],
                        ) -> tuple[int, int, int]:
    """Activations ``[..., K]`` and an int8 ``[N, K]`` weight (nn.Linear layout) of a GEMM; returns (M, N, K)
    with the leading dims of ``x`` flattened into M."""
    check_tensor(op, x_name, x, dtypes=x_dtypes, min_dim=1)
    check_tensor(op, w_name, w, dtypes=(torch.int8,), dim=2)
    K, N = x.shape[-1], w.shape[0]
    if w.shape[1] != K:
        raise InputError(
            f"{op}: mismatched K: {x_name} has K={K} (shape {tuple(x.shape)}) but {w_name} has K={w.shape[1]} "
            f"(shape {tuple(w.shape)}); {w_name} must be the [N, K] Linear weight layout"
        )
    return prod(x.shape[:-1]), N, K
