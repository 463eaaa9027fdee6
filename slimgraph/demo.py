"""The main job, end to end on a built-in model: what ``slimgraph demo`` runs.

Stages: load the real model -> capture -> lossless pipeline (fold constants, fold BN, fuse epilogues,
DCE) with a numeric check after every pass -> save -> reload and check the outputs match exactly. Each
stage is measured (parameters, bytes, MACs, CPU latency, task metric) and the run writes ``report.md``
and ``report.json`` to the output directory, plus the saved model.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass
class StageResult:
    stage: str
    params: int
    bytes: int
    macs: int
    latency_ms: float
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # time the stage itself took


def _measure(stage: str, model, demo, macs_source, seconds: float) -> StageResult:
    from .measure import latency_ms
    from .report import totals

    t = totals(macs_source)
    metrics = demo.evaluate(model) if demo.evaluate is not None else {}
    return StageResult(stage, t.params, t.bytes, t.macs, latency_ms(model, demo.args, demo.kwargs), metrics,
                       seconds)


def _progress(msg: str) -> None:
    print(f"[slimgraph] {msg}", file=sys.stderr, flush=True)


def run_demo(model: str = "minilm", out_dir: Path = Path("slimgraph-demo"), seed: int = 0) -> int:
    from .api import DEFAULT_PIPELINE
    from .demos import load_model
    from .ir.capture import capture
    from .numerics import compare_outputs, run_module
    from .passes.manager import PassManager
    from .report import format_table, human, inspect_table
    from .serialize import load, save

    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    _progress(f"loading {model} ...")
    demo = load_model(model)
    _progress(demo.description)

    start = time.perf_counter()
    gm = capture(demo.model, demo.args, demo.kwargs)
    capture_s = time.perf_counter() - start
    _progress(f"captured in {capture_s:.2f} s; measuring the original model ...")
    stages = [_measure("original (eager)", demo.model, demo, gm, capture_s)]

    _progress(f"running {DEFAULT_PIPELINE} with numeric checks after every pass ...")
    start = time.perf_counter()
    result = PassManager(DEFAULT_PIPELINE, check_numerics=True).run(gm)
    opt = result.gm
    stages.append(_measure("optimized (lossless)", opt, demo, opt, time.perf_counter() - start))

    _progress("saving and reloading ...")
    path = save(opt, out_dir / "model.slimgraph")
    reloaded = load(path)
    reload_exact = compare_outputs(run_module(reloaded, demo.args, demo.kwargs),
                                   run_module(opt, demo.args, demo.kwargs)).exact
    fidelity = compare_outputs(run_module(opt, demo.args, demo.kwargs),
                               run_module(demo.model, demo.args, demo.kwargs))

    report = {
        "model": model,
        "description": demo.description,
        "seed": seed,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available()},
        "pipeline": DEFAULT_PIPELINE,
        "passes": [{"name": r.name, "ms": round(r.seconds * 1e3, 2), "changed": r.modified, "stats": r.stats,
                    "error_vs_input": str(r.error_vs_input) if r.error_vs_input else None, "notes": r.notes}
                   for r in result.records],
        "stages": [asdict(s) for s in stages],
        "optimized_vs_original": str(fidelity),
        "reload_exact": reload_exact,
        "saved_model": str(path),
        "saved_bytes": path.stat().st_size,
        "wall_seconds": round(time.perf_counter() - wall, 2),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    metric_names = sorted({k for s in stages for k in s.metrics})
    rows = [[s.stage, human(s.params), human(s.bytes, "B"), human(s.macs), f"{s.latency_ms:.1f}",
             *(f"{s.metrics.get(k, float('nan')):.4f}" for k in metric_names)] for s in stages]
    summary = format_table(["stage", "params", "size", "MACs", "CPU ms", *metric_names], rows,
                           align_right=set(range(1, 5 + len(metric_names))))
    md = [
        f"# slimgraph demo: {model}", "", demo.description, "",
        f"torch {torch.__version__}, {report['machine']['threads']} CPU threads, seed {seed}; "
        "all numbers below come from this run.", "",
        "## Stages", "", "```", summary, "```", "",
        "## Passes", "", "```", result.table(), "```", "",
        f"Optimized vs original outputs on the example inputs: {fidelity}.  ",
        f"Saved to `{path.name}` ({human(path.stat().st_size, 'B')}); reloaded outputs identical: {reload_exact}.",
        "", "## Layers (optimized)", "", "```", inspect_table(opt, limit=40), "```", "",
    ]
    (out_dir / "report.md").write_text("\n".join(md))
    print(summary)
    print(f"\npasses:\n{result.table()}")
    print(f"\noptimized vs original: {fidelity}; reload identical: {reload_exact}")
    print(f"report: {out_dir / 'report.md'}  (took {report['wall_seconds']:.1f} s)")
    return 0 if reload_exact else 1
