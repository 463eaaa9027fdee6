"""Latency and size measurements shared by the demo, the reports and the CPU benchmarks.

Comparisons between models belong in :func:`slimgraph.timing.time_models` (interleaved, with spread); this
single-model helper is for figures that are not compared with anything.
"""

from __future__ import annotations

import os


def latency_ms(model, args: tuple, kwargs: dict | None = None, *, warmup: int = 3, iters: int = 20,
               max_seconds: float = 10.0) -> float:
    """Median wall time of one forward call in milliseconds (CUDA-synchronized on GPU).

    Stops early after ``max_seconds`` (at least 3 calls) so slow models on small CPUs keep reports quick.
    """
    from .timing import time_models

    run = time_models({"model": model}, args, kwargs, warmup=warmup, rounds=iters, min_rounds=min(3, iters),
                      max_seconds=max_seconds)
    return run["model"].median_ms


def file_size(path) -> int:
    return os.path.getsize(path)
