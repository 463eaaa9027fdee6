"""Latency and size measurements shared by the demo, the reports and the CPU benchmarks."""

from __future__ import annotations

import statistics
import time

import torch


def latency_ms(model, args: tuple, kwargs: dict | None = None, *, warmup: int = 3, iters: int = 20,
               max_seconds: float = 10.0) -> float:
    """Median wall time of one forward call in milliseconds (CUDA-synchronized on GPU).

    Stops early after ``max_seconds`` so slow models on small CPUs keep reports quick.
    """
    kwargs = kwargs or {}
    cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in (*args, *kwargs.values()))
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            model(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        budget_end = time.perf_counter() + max_seconds
        for _ in range(iters):
            start = time.perf_counter()
            model(*args, **kwargs)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
            if time.perf_counter() > budget_end and len(times) >= 3:
                break
    return statistics.median(times)


def file_size(path) -> int:
    import os

    return os.path.getsize(path)
