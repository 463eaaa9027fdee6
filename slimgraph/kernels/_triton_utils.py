"""Plumbing shared by the Triton kernels: where an op runs, input checks, config buckets, activation code.

Dispatch rule (one place, used by every op and its torch-op implementation):

* CUDA tensors                                  -> the Triton kernel (autotuned over the op's bucket configs);
* CPU tensors and ``TRITON_INTERPRET=1`` set     -> the same Triton kernel under Triton's interpreter (CI);
* CPU tensors otherwise (or any other device)    -> the op's pure-torch reference, so graphs run anywhere.

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` runs, i.e. when ``triton`` (its own tl.sum, tl.max, ...)
and this package are imported. We read it at *call* time instead: when a kernel was built for the GPU but the
interpreter is asked for now, the launch uses an interpreter twin of it (and of every ``@triton.jit`` function it
reaches, triton.language's included). So setting the variable after ``import triton`` works too, which lets the
kernel tests switch the interpreter on per test, in any test order, without leaking it into other test files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import types
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from ..errors import InputError
from .epilogue import ACTIVATIONS
from .epilogue import check_activation as _check_activation_name

__all__ = [
    "ACTIVATION_CODES",
    "AUTOTUNE_ENV",
    "INTERPRET_ENV",
    "LAUNCHES",
    "LaunchRecord",
    "activation_code",
    "apply_activation_tl",
    "candidate_configs",
    "check_float_dtype",
    "check_same_device",
    "check_tensor",
    "check_vector",
    "decode_split_k",
    "grouped_tile",
    "interpreter_requested",
    "launch",
    "m_bucket",
    "next_power_of_2",
    "num_sms",
    "recording_launches",
    "tune_id",
    "tile_config",
    "use_triton",
]

INTERPRET_ENV = "TRITON_INTERPRET"
# SLIMGRAPH_AUTOTUNE=0 skips autotuning on the GPU and runs each bucket's first (default) config: quick start-up
# for tests and short scripts; benchmarks and serving should keep autotuning on.
AUTOTUNE_ENV = "SLIMGRAPH_AUTOTUNE"

# Kernel launches per kernel name. Tests read it to prove that the Triton path (not the reference) ran.
LAUNCHES: Counter[str] = Counter()

_TRUE = {"1", "true", "yes", "on"}


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in _TRUE


def interpreter_requested() -> bool:
    """``TRITON_INTERPRET`` is set now (parsed like Triton parses it)."""
    return _env_flag(INTERPRET_ENV, False)


def tile_config(bm: int, bn: int, bk: int, warps: int, stages: int, group: int = 8) -> triton.Config:
    """A GEMM tile config (BLOCK_M/N/K, GROUP_M swizzle) as the int8, w8a16 and conv kernels take it."""
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group}, num_warps=warps,
                         num_stages=stages)


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """The dispatch rule above, for the device of the first tensor given (callers check devices agree)."""
    device = next(t.device for t in tensors if t is not None)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreter_requested()


# --------------------------------------------------------------------------------------------------- launching

_TWINS: dict[object, object] = {}
_AUTOTUNERS: dict[tuple[object, str], object] = {}


def _interpreter_twin(kernel):
    """An interpreter version of a ``@triton.jit`` function that was compiled for the GPU at import time.

    The interpreter executes the kernel as Python, so the ``@triton.jit`` helpers it calls must be interpreter
    functions too: the twin runs with a copy of the module globals where each JITFunction is replaced by its twin.
    """
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(kernel, InterpretedFunction):
        return kernel
    if kernel in _TWINS:
        return _TWINS[kernel]
    fn = kernel.fn
    scope = dict(fn.__globals__)
    twin_fn = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    twin_fn.__kwdefaults__ = fn.__kwdefaults__
    twin_fn.__annotations__ = dict(fn.__annotations__)
    twin_fn.__qualname__ = fn.__qualname__
    twin_fn.__module__ = fn.__module__
    twin = InterpretedFunction(twin_fn)
    _TWINS[kernel] = twin  # before recursing: kernels may reach themselves through their module's globals
    for name, value in fn.__globals__.items():
        if isinstance(value, JITFunction):
            scope[name] = _interpreter_twin(value)
    return twin


@contextlib.contextmanager
def _interpreted_language():
    """Make triton.language's own ``@triton.jit`` functions (tl.sum, tl.max, tl.cdiv, ...) interpretable.

    They were built as GPU JITFunctions if ``triton`` was imported before TRITON_INTERPRET was set; kernels reach
    them as attributes (``tl.sum``), so for the duration of an interpreted launch those attributes point to twins.
    """
    owners = [m for n, m in list(sys.modules.items()) if n == "triton.language" or n.startswith("triton.language.")]
    owners.append(tl.tensor)  # tensor methods such as x.sum()
    patched = []
    try:
        for owner in owners:
            for name, value in list(vars(owner).items()):
                if isinstance(value, JITFunction):
                    patched.append((owner, name, value))
                    setattr(owner, name, _interpreter_twin(value))
        yield
    finally:
        for owner, name, value in reversed(patched):
            setattr(owner, name, value)


def _autotuned(kernel, tuner_id: str, configs: Sequence[triton.Config], key: Sequence[str],
               derived: dict[str, Callable[[dict], object]]):
    """One autotuner per (kernel, tuner id): each shape class tunes over its own curated list only. ``derived``
    constexprs are computed per config (Triton heuristics see the config's meta-parameters)."""
    tuner = _AUTOTUNERS.get((kernel, tuner_id))
    if tuner is None:
        fn = triton.heuristics(dict(derived))(kernel) if derived else kernel
        tuner = triton.autotune(configs=list(configs), key=list(key))(fn)
        _AUTOTUNERS[(kernel, tuner_id)] = tuner
    return tuner


def candidate_configs(
    configs: Sequence[triton.Config], *, interpreter_config: triton.Config, config: triton.Config | None = None
) -> list[triton.Config]:
    """The configs a launch may use: an explicit one (tests pin each curated config this way), the small
    interpreter config under ``TRITON_INTERPRET`` (numpy cost grows with the tile count, masks need small tiles to
    be exercised), the bucket's default with SLIMGRAPH_AUTOTUNE=0, else the whole bucket list for autotuning."""
    if config is not None:
        return [config]
    if interpreter_requested():
        return [interpreter_config]
    if not _env_flag(AUTOTUNE_ENV, True):
        return [configs[0]]
    return list(configs)


@dataclasses.dataclass(frozen=True)
class LaunchRecord:
    """What one :func:`launch` would run, one entry per candidate config: for ahead-of-time compilation
    (``bench/aot.py``) of exactly what the host code would compile on a GPU, without one."""

    kernel: object  # the @triton.jit (or Gluon) function
    args: tuple
    constexprs: dict  # including the derived ones, evaluated for ``config``
    config: triton.Config
    bucket: str


_RECORDING: list[list[LaunchRecord]] = []


@contextlib.contextmanager
def recording_launches():
    """Within this block :func:`launch` records what it would compile instead of running anything."""
    records: list[LaunchRecord] = []
    _RECORDING.append(records)
    try:
        yield records
    finally:
        _RECORDING.pop()


def _meta(kernel, args, constexprs, config: triton.Config) -> dict:
    return {**dict(zip(kernel.arg_names, args)), **constexprs, **config.all_kwargs()}


def launch(
    kernel,
    grid: Callable[[dict], tuple[int, ...]],
    args: Sequence,
    *,
    configs: Sequence[triton.Config],
    key: Sequence[str],
    bucket: str,
    derived: dict[str, Callable[[dict], object]] | None = None,
    **constexprs,
) -> None:
    """Launch ``kernel`` over ``grid`` (a function of the config's meta-parameters).

    One candidate config is launched directly (under the interpreter through the kernel's interpreter twin);
    several are autotuned on the GPU, keyed by the argument names in ``key`` plus the tensors' dtypes, with one
    autotuner per ``bucket`` string (callers put the shape class there, e.g. the power of two of M).
    ``derived`` constexprs are functions of all arguments and the config (e.g. ``EVEN_K = K % BLOCK_K == 0``),
    evaluated per config so that each config gets its own specialization.
    """
    derived = derived or {}
    if _RECORDING:
        for cfg in configs:
            extra = {name: fn(_meta(kernel, args, constexprs, cfg)) for name, fn in derived.items()}
            _RECORDING[-1].append(LaunchRecord(kernel, tuple(args), {**constexprs, **extra}, cfg, bucket))
        return
    LAUNCHES[kernel.fn.__name__] += 1
    if interpreter_requested() or len(configs) == 1:
        extra = {name: fn(_meta(kernel, args, constexprs, configs[0])) for name, fn in derived.items()}
        if interpreter_requested():
            with _interpreted_language():  # a no-op when triton itself was imported with TRITON_INTERPRET set
                _interpreter_twin(kernel)[grid](*args, **constexprs, **extra, **configs[0].all_kwargs())
        else:
            kernel[grid](*args, **constexprs, **extra, **configs[0].all_kwargs())
    else:
        _autotuned(kernel, bucket, configs, key, derived)[grid](*args, **constexprs)


def m_bucket(m: int) -> str:
    """Shape bucket of the GEMM row count: each bucket has its own curated tile configs.

    ``m16`` is decode (memory-bound on the weight: tall-skinny tiles, deep K steps), ``m64``/``m256`` small
    batches, ``large`` the compute-bound regime (big tiles, grouped ordering for L2 reuse).
    """
    if m <= 16:
        return "m16"
    if m <= 64:
        return "m64"
    if m <= 256:
        return "m256"
    return "large"


def tune_id(bucket: str, m: int) -> str:
    """The autotuner identity of a launch: its config bucket and the power of two of M, so that M = 512 and
    M = 8192 (both "large") keep their own best config instead of sharing whichever was tuned first."""
    return f"{bucket}/m{next_power_of_2(m)}"


def decode_split_k(M: int, N: int, K: int, device: torch.device, *, block_n: int = 64, max_split: int = 8,
                   min_k: int = 512) -> int:
    """How many programs share the K loop of a decode GEMM (M <= 16): doubled until the output tiles times the
    splits cover the SMs, each split keeping at least ``min_k`` of K so the partial sums stay a small fraction of
    the weight bytes. ``block_n`` is the N tile of the decode configs. UNTUNED rule."""
    if m_bucket(M) != "m16":
        return 1
    tiles = -(-N // block_n)
    split = 1
    while split < max_split and tiles * split * 2 <= num_sms(device) and K >= split * 2 * min_k:
        split *= 2
    return split


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def num_sms(device: torch.device) -> int:
    """Multiprocessor count of a CUDA device; an H100 SXM's 132 elsewhere (the interpreter has no SMs)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


# ------------------------------------------------------------------------------------------------ input checks


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


# --------------------------------------------------------------------------------------------------- activation

ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}


def activation_code(op: str, act: str | None) -> int:
    """Validate an activation name (None means "none") and return its compile-time code for the kernels."""
    try:
        return ACTIVATION_CODES[_check_activation_name(act)]
    except ValueError as err:
        raise InputError(f"{op}: {err}") from None


_RELU, _RELU6, _GELU, _GELU_TANH, _SILU, _SIGMOID, _TANH, _HARDSWISH = (
    ACTIVATION_CODES[n] for n in ("relu", "relu6", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "hardswish")
)


@triton.jit
def _tanh(x):
    # tl.math has no tanh in every Triton we support; this form never overflows (exp of a non-positive number).
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def apply_activation_tl(y, ACT: tl.constexpr):
    """Triton twin of :func:`epilogue.apply_activation` on an fp32 tile; ``ACT`` is an ACTIVATION_CODES value."""
    if ACT == 1:  # relu
        y = tl.maximum(y, 0.0)
    elif ACT == 2:  # relu6
        y = tl.minimum(tl.maximum(y, 0.0), 6.0)
    elif ACT == 3:  # gelu (erf form, as F.gelu)
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    elif ACT == 4:  # gelu_tanh
        y = 0.5 * y * (1.0 + _tanh(0.7978845608028654 * (y + 0.044715 * y * y * y)))
    elif ACT == 5:  # silu
        y = y * tl.sigmoid(y)
    elif ACT == 6:  # sigmoid
        y = tl.sigmoid(y)
    elif ACT == 7:  # tanh
        y = _tanh(y)
    elif ACT == 8:  # hardswish
        y = y * tl.minimum(tl.maximum(y + 3.0, 0.0), 6.0) / 6.0
    return y


# The jit body above spells the codes as literals (constexpr comparisons must fold at compile time); this keeps the
# literals honest if ACTIVATIONS is ever reordered.
assert (_RELU, _RELU6, _GELU, _GELU_TANH, _SILU, _SIGMOID, _TANH, _HARDSWISH) == (1, 2, 3, 4, 5, 6, 7, 8), (
    "epilogue.ACTIVATIONS changed order: update apply_activation_tl"
)


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Map a 1-D program id to (pid_m, pid_n) in GROUP_M-tall column sweeps, so the programs in flight share
    A rows and B columns in L2 (the "grouped ordering" of Triton's matmul tutorial)."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n
