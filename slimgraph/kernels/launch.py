"""Launching a Triton kernel: which configs a launch may use, Triton autotuning per shape bucket, launch counts, and
a recording mode that lists what would be compiled instead of running it (``bench/aot.py``).

Every kernel function of this package goes through :func:`launch`, so these rules hold for all of them:

* one candidate config (a pinned one, the interpreter's, or SLIMGRAPH_AUTOTUNE=0) is launched directly, under the
  interpreter through the kernel's interpreter twin (:mod:`.interpreter`);
* several are autotuned by Triton on the GPU, with one autotuner per (kernel, bucket) so each shape class tunes over
  its own curated list only;
* :data:`LAUNCHES` counts launches per kernel name: tests read it to prove that the Triton path, not the torch
  reference, ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence

import triton

from .dispatch import autotune_enabled, interpreter_requested
from .interpreter import interpreted_language, interpreter_twin

__all__ = ["LAUNCHES", "LaunchRecord", "candidate_configs", "launch", "recording_launches"]

LAUNCHES: Counter[str] = Counter()

_AUTOTUNERS: dict[tuple[object, str], object] = {}


def _autotuned(kernel, tuner_id: str, configs: Sequence[triton.Config], key: Sequence[str],
               derived: dict[str, Callable[[dict], object]]):
    """One Triton autotuner per (kernel, tuner id). ``derived`` constexprs are computed per config (Triton
    heuristics see the config's meta-parameters)."""
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
    if not autotune_enabled():
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


def _derived_values(kernel, args, constexprs, config: triton.Config, derived) -> dict:
    meta = {**dict(zip(kernel.arg_names, args)), **constexprs, **config.all_kwargs()}
    return {name: fn(meta) for name, fn in derived.items()}


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
            extra = _derived_values(kernel, args, constexprs, cfg, derived)
            _RECORDING[-1].append(LaunchRecord(kernel, tuple(args), {**constexprs, **extra}, cfg, bucket))
        return
    LAUNCHES[kernel.fn.__name__] += 1
    if interpreter_requested() or len(configs) == 1:
        extra = _derived_values(kernel, args, constexprs, configs[0], derived)
        if interpreter_requested():
            with interpreted_language():  # a no-op when triton itself was imported with TRITON_INTERPRET set
                interpreter_twin(kernel)[grid](*args, **constexprs, **extra, **configs[0].all_kwargs())
        else:
            kernel[grid](*args, **constexprs, **extra, **configs[0].all_kwargs())
    else:
        _autotuned(kernel, bucket, configs, key, derived)[grid](*args, **constexprs)
