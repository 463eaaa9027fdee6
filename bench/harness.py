"""The one benchmark harness: run metadata, interleaved timing, and JSON + markdown + PNG result files.

A bench script is ``main(argv) -> int``; it builds its variants, times them with :func:`time_variants` (the
same interleaved timing, median + IQR, load recording and "no change" verdict as ``sg.compress`` reports:
:mod:`slimgraph.timing`) and writes its results with :func:`write_results` / :func:`save_figure`.

Results go to a scratch directory unless ``--out`` is given (:func:`add_out_argument`), so re-running a bench
never overwrites the committed files under ``bench/results`` by accident. Every result records the exact
command that produced it, the commit, versions, the device and the machine load before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from bench.run_meta import describe_commit
from slimgraph.timing import Ratio, Timing, TimingRun, speedup, time_interleaved

__all__ = ["Ratio", "Timing", "TimingRun", "add_out_argument", "md_table", "run_metadata", "save_figure",
           "scratch_dir", "speedup", "time_variants", "write_results"]


def scratch_dir(suite: str) -> Path:
    """Where a bench writes when no ``--out`` is given: outside the repository, per suite."""
    return Path(tempfile.gettempdir()) / "slimgraph-bench" / suite


def add_out_argument(parser: argparse.ArgumentParser, suite: str) -> None:
    parser.add_argument("--out", default=str(scratch_dir(suite)), help="results directory (default: the scratch "
                        f"directory {scratch_dir(suite)}; pass --out bench/results to replace the committed results)")


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - not installed or broken: the result says so instead of failing
        return None


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.machine()} ({platform.processor() or 'unknown'}), {os.cpu_count()} cores"


def run_metadata(module: str, argv: list[str] | None, **extra: Any) -> dict[str, Any]:
    """Where and how a result was produced: the exact command, commit, versions, device, threads, load."""
    argv = sys.argv[1:] if argv is None else argv
    meta = {
        "command": " ".join(["python -m", module, *argv]),
        "commit": describe_commit(),
        "device": device_name(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "load_at_start": [round(v, 2) for v in os.getloadavg()],
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    meta.update(extra)
    return meta


def finish_metadata(meta: dict[str, Any], start: float) -> dict[str, Any]:
    meta["load_at_end"] = [round(v, 2) for v in os.getloadavg()]
    meta["wall_s"] = round(time.perf_counter() - start, 1)
    return meta


def meta_lines(meta: dict[str, Any]) -> list[str]:
    """Markdown bullet lines for a result's header."""
    return [
        f"- command: `{meta['command']}`",
        f"- commit {meta['commit']}; torch {meta['torch']}, triton {meta['triton']}, transformers "
        f"{meta['transformers']}, python {meta['python']}",
        f"- device: {meta['device']}, {meta['torch_threads']} torch threads; load average (1/5/15 min) at start "
        f"{meta['load_at_start']}, at end {meta.get('load_at_end')}",
        f"- wall time of the whole run: {meta.get('wall_s', float('nan'))} s",
    ]


def time_variants(variants: Mapping[str, Callable[[], object]], **options) -> TimingRun:
    """:func:`slimgraph.timing.time_interleaved` with the device's synchronisation, autograd off."""
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


def save_figure(fig, out: str | Path, stem: str) -> Path:
    """Lay out, write ``out/stem.png`` and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(out) / f"{stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
