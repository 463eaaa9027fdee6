"""Calibration observers: each watches one activation over the calibration batches and picks the clipping
threshold ``t`` of a symmetric int8 quantizer (``scale = t / 127``).

* ``minmax``: ``t = max |x|`` seen. Never clips; one outlier widens the step for every other value.
* ``percentile``: ``t`` = the given percentile of ``|x|`` (e.g. 99.99): ignores the rarest outliers.
* ``mse``: ``t`` minimizing the expected squared quantization error (rounding noise inside ``[-t, t]``,
  clipping error outside), searched over the histogram.

Percentile and MSE keep a histogram of ``|x|`` over ``[0, hi]`` rather than the values themselves, so memory
stays constant however much calibration data flows through. When a batch exceeds ``hi`` the range doubles
(as often as needed) and neighbouring bins merge, so the counts stay exact at the coarser resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import InputError

OBSERVERS = ("minmax", "percentile", "mse")
QMAX = 127.0


@dataclass
class MinMaxObserver:
    absmax: float = 0.0
    batches: int = 0

    def update(self, x: torch.Tensor) -> None:
        self.absmax = max(self.absmax, float(x.detach().abs().max())) if x.numel() else self.absmax
        self.batches += 1

    def threshold(self) -> float:
        return self.absmax


@dataclass
class HistogramObserver(MinMaxObserver):
    bins: int = 2048
    hi: float = 0.0
    hist: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))

    def update(self, x: torch.Tensor) -> None:
        mags = x.detach().abs().reshape(-1).to(torch.float32)
        if mags.numel() == 0:
            return
        super().update(mags)
        if self.hist.numel() == 0:
            self.hi = self.absmax if self.absmax > 0 else 1e-8
            self.hist = torch.zeros(self.bins, dtype=torch.float64)
        if self.absmax > self.hi:
            self._widen(self.absmax)
        self.hist += torch.histc(mags, self.bins, 0.0, self.hi).to(torch.float64)

    def _widen(self, new_max: float) -> None:
        factor = 2 ** math.ceil(math.log2(new_max / self.hi))
        merged = torch.zeros(self.bins, dtype=torch.float64)
        if factor >= self.bins:
            merged[0] = self.hist.sum()
        else:  # bin edges of the wider range coincide with every factor-th old edge: merging stays exact
            merged[: self.bins // factor] = self.hist.reshape(self.bins // factor, factor).sum(1)
        self.hist = merged
        self.hi *= factor

    @property
    def width(self) -> float:
        return self.hi / self.bins

    def threshold(self) -> float:
        if self.hist.numel() == 0 or self.hist.sum() == 0:  # nothing observed: fall back to min-max
            return self.absmax
        return self._fit_threshold()

    def _fit_threshold(self) -> float:
        raise NotImplementedError


@dataclass
class PercentileObserver(HistogramObserver):
    percentile: float = 99.99

    def _fit_threshold(self) -> float:
        cumulative = self.hist.cumsum(0)
        index = int(torch.searchsorted(cumulative, cumulative[-1] * self.percentile / 100.0))
        return min(self.absmax, (index + 1) * self.width)


@dataclass
class MSEObserver(HistogramObserver):
    candidates: int = 256

    def _fit_threshold(self) -> float:
        centers = (torch.arange(self.bins, dtype=torch.float64) + 0.5) * self.width
        # Candidate thresholds from 1/16 of the range up to the observed maximum.
        top = min(self.absmax, self.hi)
        ts = torch.linspace(top / 16, top, self.candidates, dtype=torch.float64)
        step = ts / QMAX
        inside = centers[None, :] <= ts[:, None]
        rounding = (step[:, None] ** 2 / 12.0).expand(-1, self.bins)  # uniform rounding noise of one step
        clipping = (centers[None, :] - ts[:, None]) ** 2
        error = (torch.where(inside, rounding, clipping) * self.hist[None, :]).sum(1)
        return float(ts[int(error.argmin())])


@dataclass
class ChannelAbsMax:
    """Per-channel (last dim) absmax over all tokens: the activation statistic SmoothQuant needs."""

    absmax: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        m = x.detach().abs().reshape(-1, x.shape[-1]).amax(0).to(torch.float32)
        self.absmax = m if self.absmax is None else torch.maximum(self.absmax, m)


def make_observer(kind: str, percentile: float = 99.99) -> MinMaxObserver:
    if kind == "minmax":
        return MinMaxObserver()
    if kind == "percentile":
        if not 0.0 < percentile <= 100.0:
            raise InputError(f"percentile must be in (0, 100], got {percentile}")
        return PercentileObserver(percentile=percentile)
    if kind == "mse":
        return MSEObserver()
    raise InputError(f"unknown observer {kind!r}; expected one of {', '.join(OBSERVERS)}")
