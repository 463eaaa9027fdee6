"""The one benchmark harness: run metadata, interleaved timing, and JSON + markdown + PNG result files.

A bench script is ``main(argv) -> int`` whose parser comes from :func:`script_parser`; it builds its variants,
times them with :func:`time_variants` (the same interleaved timing, median + IQR, load recording and "no change"
verdict as ``sg.compress`` reports: :mod:`slimgraph.timing`) and writes its results with :func:`write_results`
(JSON + markdown, headed by :func:`meta_lines`) and a plot: :func:`bar_chart` / :func:`scatter_chart`, or
:func:`figure` + the script's own drawing + :func:`finish_figure` (labels, legend, ``save_figure``).

    def main(argv=None) -> int:
        parser = script_parser(__doc__, "my-suite")
        args = parser.parse_args(argv)
        start, meta = time.perf_counter(), run_metadata("bench.my_suite", argv)
        run = time_variants({"before": lambda: a(x), "after": lambda: b(x)})
        finish_metadata(meta, start)
        write_results(args.out, "my-suite", {"meta": meta, "timing": run}, [*meta_lines(meta), ...])
        bar_chart(args.out, "my-suite", {"median ms": {k: t.median_ms for k, t in run.timings.items()}}, ...)
        return 0

Results go to a scratch directory unless ``--out`` is given (:func:`add_out_argument`), so re-running a bench
never overwrites the committed files under ``bench/results`` by accident. Every result records the exact
command that produced it, the commit, versions, the device and the machine load before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from slimgraph.timing import Ratio, Timing, TimingRun, speedup, time_interleaved

__all__ = ["Ratio", "Timing", "TimingRun", "add_out_argument", "bar_chart", "describe_commit", "figure",
           "finish_figure", "finish_metadata", "human", "load_average", "md_table", "meta_lines", "run_metadata",
           "save_figure", "scatter_chart", "scratch_dir", "script_parser", "settle_threads", "speedup",
           "target_line", "time_variants", "time_variants_quietly", "version", "write_results"]

# environment variables that change what a bench measures; a result records those that are set
RECORDED_ENV = ("TRITON_INTERPRET", "SLIMGRAPH_AUTOTUNE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
# versions a result records when the run used the tool (run_metadata(..., torch_pruning=...)); meta_lines shows them
OPTIONAL_VERSIONS = ("torch_pruning", "torchao", "onnx", "onnxruntime")


ROOT = Path(__file__).resolve().parent.parent


def scratch_dir(suite: str) -> Path:
    """Where a bench writes when no ``--out`` is given: outside the repository, per suite."""
    return Path(tempfile.gettempdir()) / "slimgraph-bench" / suite


def add_out_argument(parser: argparse.ArgumentParser, suite: str) -> None:
    parser.add_argument("--out", default=str(scratch_dir(suite)), help="results directory (default: the scratch "
                        f"directory {scratch_dir(suite)}; pass --out bench/results to replace the committed results)")


def script_parser(doc: str | None, suite: str, *, quick: str | None = None,
                  rounds: int | None = None) -> argparse.ArgumentParser:
    """The argument parser every bench script starts from: its docstring as help, ``--out`` defaulting to the
    suite's scratch directory (committed results are replaced only with an explicit ``--out bench/results``).

    ``quick`` (its help text) adds the smoke-run flag ``--quick``; ``rounds`` (its default) adds ``--rounds``, the
    number of interleaved timing rounds.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out_argument(parser, suite)
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick}")
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds,
                            help=f"interleaved timing rounds (default {rounds})")
    return parser


def load_average() -> list[float]:
    """1/5/15-minute load averages, rounded; the machine is shared, so every result records them."""
    return [round(v, 2) for v in os.getloadavg()]


def version(module: str) -> str | None:
    """``module.__version__``, or None when it is not installed (or broken): the result says so."""
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - not installed or broken: the result says so instead of failing
        return None


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.machine()} ({platform.processor() or 'unknown'}), {os.cpu_count()} cores"


def git_state() -> tuple[str | None, bool | None]:
    """(short commit hash, tracked files under slimgraph/ or bench/ differ from it); Nones outside a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "slimgraph", "bench"],
                                cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return commit or None, bool(status)
    except (OSError, subprocess.SubprocessError):
        return None, None


def describe_commit() -> str:
    """``abc1234``, ``abc1234 (+ uncommitted changes)`` or ``unknown``: where a result came from."""
    commit, dirty = git_state()
    if commit is None:
        return "unknown"
    return commit + (" (+ uncommitted changes)" if dirty else "")


def run_metadata(module: str, argv: list[str] | None, **extra: Any) -> dict[str, Any]:
    """Where and how a result was produced: the exact command, commit, versions, device, threads, load."""
    argv = sys.argv[1:] if argv is None else argv
    meta = {
        "command": " ".join(["python -m", module, *argv]),
        "env": {name: os.environ[name] for name in RECORDED_ENV if name in os.environ},
        "commit": describe_commit(),
        "device": device_name(),
        "torch": torch.__version__,
        "triton": version("triton"),
        "transformers": version("transformers"),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "load_at_start": load_average(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    meta.update(extra)
    return meta


def finish_metadata(meta: dict[str, Any], start: float) -> dict[str, Any]:
    meta["load_at_end"] = load_average()
    meta["wall_s"] = round(time.perf_counter() - start, 1)
    if _SETTLED:  # how long the thread pool took to answer promptly before the first timing (settle_threads)
        meta["thread_pool"] = dict(_SETTLED)
    return meta


def meta_lines(meta: dict[str, Any]) -> list[str]:
    """Markdown bullet lines for a result's header."""
    optional = "".join(f", {name.replace('_', '-')} {meta[name]}" for name in OPTIONAL_VERSIONS if name in meta)
    return [
        f"- command: `{''.join(f'{k}={v} ' for k, v in meta.get('env', {}).items())}{meta['command']}`",
        f"- commit {meta['commit']}; torch {meta['torch']}, triton {meta['triton']}, transformers "
        f"{meta['transformers']}{optional}, python {meta['python']}",
        f"- device: {meta['device']}, {meta['torch_threads']} torch threads; load average (1/5/15 min) at start "
        f"{meta['load_at_start']}, at end {meta.get('load_at_end')} (a shared machine: timings are noisy when the "
        "load exceeds the cores)",
        f"- wall time of the whole run: {float(meta.get('wall_s', float('nan'))):.1f} s",
        *_thread_pool_line(meta.get("thread_pool")),
    ]


def _thread_pool_line(pool: dict[str, Any] | None) -> list[str]:
    if not pool or not pool.get("calls"):
        return []
    if pool["settled"]:
        return [f"- before timing, the CPU thread pool took {pool['seconds']:.2f} s ({pool['calls']} probe GEMMs) to "
                f"answer within {pool['quiet_ms']} ms (bench.harness.settle_threads)"]
    return [f"- the CPU thread pool did NOT settle in {pool['seconds']:.1f} s (probe GEMM median "
            f"{pool['median_ms_last']} ms > {pool['quiet_ms']} ms): timings include scheduler waits"]


def target_line(name: str, measured: str, target: str, met: bool | None) -> str:
    """One markdown bullet: a target, what was measured and the verdict (met / MISSED / n/a)."""
    verdict = "met" if met else ("n/a" if met is None else "MISSED")
    return f"- target {name}: measured {measured} vs target {target} -> {verdict}"


def human(n: float) -> str:
    """12.3M, 4.56G: parameter and MAC counts for tables."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}"
    return f"{n:.0f}"


_SETTLED: dict[str, Any] = {}
PROBE = "thread-pool probe"  # the extra variant of time_variants_quietly


def _probe_gemm() -> Callable[[], object]:
    """A small GEMM: a parallel region of known cost (~0.05 ms on our 2-core CPU) whose time shows pool waits."""
    a, b = torch.randn(64, 256), torch.randn(256, 256)
    return lambda: torch.mm(a, b)


def _cpu_pool_idle() -> bool:
    return torch.cuda.is_available() or torch.get_num_threads() == 1


def settle_threads(*, quiet_ms: float = 1.0, calls: int = 50, max_seconds: float = 10.0,
                   again: bool = False) -> dict[str, Any]:
    """Wait until torch's intra-op thread pool answers promptly (once per process unless ``again``).

    Why: when other processes keep the cores busy (a shared machine; often in a process's first seconds), every
    parallel region waits whole scheduler ticks (4 or 8 ms) for the pool's worker thread, whatever it computes:
    GEMMs that take 0.05 ms read 8, 16, 24 ms, in steps of the tick (the first rows of an earlier
    bench/results/kernels-cpu.md). A probe GEMM is repeated until the median of the last ``calls`` is under
    ``quiet_ms`` or ``max_seconds`` have passed (``settled`` False: the result's metadata says so).
    """
    if _SETTLED and not again:
        return _SETTLED
    if _cpu_pool_idle():
        _SETTLED.update(settled=True, seconds=0.0, calls=0, note="no CPU worker threads to wait for")
        return _SETTLED
    import statistics
    from collections import deque

    probe = _probe_gemm()
    recent: deque[float] = deque(maxlen=calls)
    start = time.perf_counter()
    settled, n = False, 0
    while time.perf_counter() - start < max_seconds:
        t0 = time.perf_counter()
        probe()
        recent.append((time.perf_counter() - t0) * 1e3)
        n += 1
        if len(recent) == calls and statistics.median(recent) < quiet_ms:
            settled = True
            break
    if not _SETTLED:  # the first settle is the one the metadata reports
        _SETTLED.update(settled=settled, seconds=round(time.perf_counter() - start, 2), calls=n,
                        median_ms_last=round(statistics.median(recent), 4), quiet_ms=quiet_ms)
    return {"settled": settled, "seconds": round(time.perf_counter() - start, 2), "calls": n}


def time_variants_quietly(variants: Mapping[str, Callable[[], object]], *, attempts: int = 3,
                          quiet_ms: float = 1.0, **options) -> tuple[TimingRun, dict[str, Any]]:
    """:func:`time_variants` with a probe GEMM timed in the same interleaved rounds; while the probe's median
    says the thread pool kept the variants waiting (> ``quiet_ms``: see :func:`settle_threads`), wait for it to
    settle and time again, at most ``attempts`` times. Returns the run (without the probe) and
    ``{"attempts", "probe_ms", "quiet"}``: ``quiet`` False means every attempt was disturbed (say so)."""
    if _cpu_pool_idle():
        return time_variants(variants, **options), {"attempts": 1, "probe_ms": None, "quiet": True}
    probe = _probe_gemm()
    for attempt in range(1, attempts + 1):
        settle_threads(quiet_ms=quiet_ms, again=attempt > 1)
        run = time_variants({**variants, PROBE: probe}, **options)
        probe_ms = run.timings.pop(PROBE).median_ms
        if probe_ms <= quiet_ms:
            break
    return run, {"attempts": attempt, "probe_ms": round(probe_ms, 4), "quiet": probe_ms <= quiet_ms}


def time_variants(variants: Mapping[str, Callable[[], object]], **options) -> TimingRun:
    """:func:`slimgraph.timing.time_interleaved` with the device's synchronisation, autograd off, after
    :func:`settle_threads`."""
    settle_threads()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else None

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    options.setdefault("sync", sync)
    return time_interleaved({k: no_grad(f) for k, f in variants.items()}, **options)


def write_results(out: str | Path, stem: str, payload: dict[str, Any], markdown: list[str]) -> list[Path]:
    """``out/stem.json`` and ``out/stem.md``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    md_path.write_text("\n".join(markdown).rstrip() + "\n")
    return [json_path, md_path]


def figure(*args, **kwargs):
    """``matplotlib.pyplot.subplots(*args, **kwargs)`` on the file-only Agg backend: (fig, axes) for a result plot
    that :func:`save_figure` writes and closes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def finish_figure(fig, ax, out: str | Path, stem: str, *, title: str, ylabel: str, xlabel: str | None = None,
                  logy: bool = False, legend: dict[str, Any] | None = None, title_size: float = 10) -> Path:
    """Label a result plot (units belong in the labels), log-scale its y axis if asked, add a legend with the
    ``legend`` keyword arguments (None: no legend), and write it with :func:`save_figure`."""
    if logy:
        ax.set_yscale("log")
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    if legend is not None:
        ax.legend(**legend)
    return save_figure(fig, out, stem)


def save_figure(fig, out: str | Path, stem: str) -> Path:
    """Lay out, write ``out/stem.png`` and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(out) / f"{stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bar_chart(out: str | Path, stem: str, series: Mapping[str, Mapping[str, float]], *, ylabel: str, title: str,
              reference: tuple[float, str] | None = None, log: bool = False) -> Path:
    """A grouped bar chart written as ``out/stem.png``: one colour per series, one group per category.

    ``series`` maps a legend label to {category: value}; categories missing from a series (or NaN) leave a gap.
    ``reference`` = (value, label) draws a dashed horizontal line (a target, or the baseline's figure).
    """
    categories = list(dict.fromkeys(c for values in series.values() for c in values))
    width = 0.8 / max(1, len(series))
    fig, ax = figure(figsize=(min(14.0, max(6.0, 2.0 + 0.5 * len(categories) * len(series) ** 0.5)), 4.5))
    for i, (label, values) in enumerate(series.items()):
        xs = [j + i * width for j, c in enumerate(categories) if c in values]
        ax.bar(xs, [values[c] for c in categories if c in values], width=width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(categories))])
    ax.set_xticklabels(categories, rotation=25, ha="right", fontsize=8)
    if reference is not None:
        ax.axhline(reference[0], color="k", ls="--", lw=1, label=reference[1])
    return finish_figure(fig, ax, out, stem, title=title, ylabel=ylabel, logy=log,
                         legend={"fontsize": 7} if len(series) > 1 or reference is not None else None)


def scatter_chart(out: str | Path, stem: str, points: Mapping[str, tuple[float, float]], *, xlabel: str,
                  ylabel: str, title: str, logy: bool = False) -> Path:
    """A labelled scatter plot (a trade-off: e.g. latency against accuracy lost) written as ``out/stem.png``."""
    fig, ax = figure(figsize=(7.0, 4.5))
    for i, (label, (x, y)) in enumerate(points.items()):
        ax.scatter([x], [y], color=f"C{i % 10}", label=label, zorder=3)
    ax.grid(alpha=0.3)
    return finish_figure(fig, ax, out, stem, title=title, ylabel=ylabel, xlabel=xlabel, logy=logy,
                         legend={"fontsize": 7})


def md_table(headers: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _json_default(obj):
    if isinstance(obj, torch.Size):
        return list(obj)
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    return str(obj)
