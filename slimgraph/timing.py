"""Latency figures you can trust on a shared, noisy machine: interleaved timing with spread and load.

    run = time_interleaved({"original": lambda: a(x), "pruned": lambda: b(x)})
    run["original"].median_ms, run["original"].iqr_ms
    speedup(run["original"], run["pruned"]).label()      # "1.42x (1.31-1.55)" or "no change (0.96-1.07)"

Why interleaved: timing variant A for ten seconds and then variant B for ten seconds attributes every change
of machine load in between (another process, thermal state, a neighbour's job) to the model. Here every round
times each variant once, in an order that rotates from round to round (ABC, BCA, CAB, ...), so load changes
hit all variants alike, and nobody always runs first after the others have warmed the caches. Every variant
is warmed up before any is timed (lazy initialisation, allocator growth, one-time kernel selection).

A ratio is reported with the spread it can honestly claim: from the interquartile ranges of both variants
(conservative: the worst pairing of quartiles). When that range contains 1.0, the change is indistinguishable
from noise and is shown as "no change".
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

from . import defaults
from .errors import InputError


@dataclass(frozen=True)
class Timing:
    """Per-call wall times of one variant, in milliseconds."""

    name: str
    samples_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def q1_ms(self) -> float:
        return _quantile(self.samples_ms, 0.25)

    @property
    def q3_ms(self) -> float:
        return _quantile(self.samples_ms, 0.75)

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def max_ms(self) -> float:
        return max(self.samples_ms)

    def label(self) -> str:
        """``12.3 ms (IQR 11.9-12.8)``."""
        return f"{_ms(self.median_ms)} ms (IQR {_ms(self.q1_ms)}-{_ms(self.q3_ms)})"

    def as_dict(self) -> dict:
        return {"name": self.name, "median_ms": self.median_ms, "q1_ms": self.q1_ms, "q3_ms": self.q3_ms,
                "min_ms": self.min_ms, "max_ms": self.max_ms, "samples": len(self.samples_ms)}


@dataclass(frozen=True)
class Ratio:
    """``before / after`` latency: > 1 means ``after`` is faster."""

    median: float
    low: float  # before.q1 / after.q3: the least favourable pairing of quartiles
    high: float  # before.q3 / after.q1: the most favourable

    @property
    def verdict(self) -> str:
        if self.low <= 1.0 <= self.high:
            return "no change"
        return "faster" if self.low > 1.0 else "slower"

    def label(self) -> str:
        spread = f"({self.low:.2f}-{self.high:.2f})"
        if self.verdict == "no change":
            return f"no change {spread}"
        return f"{self.median:.2f}x {spread}"

    def as_dict(self) -> dict:
        return {"median": self.median, "low": self.low, "high": self.high, "verdict": self.verdict}


@dataclass
class TimingRun:
    """One interleaved measurement of several variants, with the conditions it ran under."""

    timings: dict[str, Timing]
    rounds: int
    warmup: int
    order: str = "rotating"
    threads: int = 0
    load_before: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    load_after: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    cpus: int = field(default_factory=lambda: os.cpu_count() or 0)
    seconds: float = 0.0

    def __getitem__(self, name: str) -> Timing:
        return self.timings[name]

    def conditions(self) -> str:
        """One line on how the figures were taken, for reports."""
        return (f"{self.rounds} interleaved rounds ({self.order} order) after {self.warmup} warm-up calls per "
                f"variant; median and interquartile range per variant; {self.threads} torch threads on "
                f"{self.cpus} CPUs; load average (1 min) {self.load_before[0]:.2f} before, "
                f"{self.load_after[0]:.2f} after; {self.seconds:.1f} s")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["timings"] = {k: t.as_dict() for k, t in self.timings.items()}
        return d


def speedup(before: Timing, after: Timing) -> Ratio:
    """How much faster ``after`` is than ``before``, with a conservative spread from both IQRs."""
    return Ratio(before.median_ms / after.median_ms, before.q1_ms / after.q3_ms, before.q3_ms / after.q1_ms)


def time_interleaved(
    variants: Mapping[str, Callable[[], object]],
    *,
    warmup: int = defaults.TIMING_WARMUP,
    rounds: int = defaults.TIMING_ROUNDS,
    min_rounds: int = defaults.TIMING_MIN_ROUNDS,
    max_seconds: float = defaults.TIMING_MAX_SECONDS,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> TimingRun:
    """Time every callable in ``variants`` once per round, rotating the order each round.

    Runs ``rounds`` rounds, or fewer (never under ``min_rounds``) when ``max_seconds`` of timed rounds have
    passed. ``sync`` runs after each call inside the timed region (``torch.cuda.synchronize`` on GPU).
    """
    if not variants:
        raise InputError("time_interleaved needs at least one variant to time")
    if rounds < 1 or min_rounds < 1 or warmup < 0:
        raise InputError(f"time_interleaved: rounds and min_rounds must be >= 1 and warmup >= 0, got "
                         f"rounds={rounds}, min_rounds={min_rounds}, warmup={warmup}")
    import torch

    names = list(variants)
    load_before = _load()
    start = clock()
    for _ in range(warmup):
        for name in names:
            variants[name]()
    if sync:
        sync()
    samples: dict[str, list[float]] = {n: [] for n in names}
    timed_start = clock()
    done = 0
    for r in range(max(rounds, min_rounds)):
        if done >= min_rounds and clock() - timed_start > max_seconds:
            break
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            t0 = clock()
            variants[name]()
            if sync:
                sync()
            samples[name].append((clock() - t0) * 1e3)
        done += 1
    return TimingRun({n: Timing(n, tuple(s)) for n, s in samples.items()}, rounds=done, warmup=warmup,
                     threads=torch.get_num_threads(), load_before=load_before, load_after=_load(),
                     seconds=clock() - start)


def time_models(models: Mapping[str, object], args: tuple, kwargs: dict | None = None, **options) -> TimingRun:
    """:func:`time_interleaved` over modules called on the same inputs, without autograd."""
    import torch

    kwargs = kwargs or {}
    cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in (*args, *kwargs.values()))

    def call(model):
        def run():
            with torch.no_grad():
                return model(*args, **kwargs)
        return run

    options.setdefault("sync", torch.cuda.synchronize if cuda else None)
    return time_interleaved({name: call(m) for name, m in models.items()}, **options)


def _quantile(values, q: float) -> float:
    """Linear-interpolation quantile (numpy's default), without needing numpy."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _load() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # not available on this platform
        return (math.nan, math.nan, math.nan)


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"
