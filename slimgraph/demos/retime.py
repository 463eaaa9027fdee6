"""Check a compress report's speed column against an independent, interleaved re-timing of its stages.

    python -m slimgraph.demos.retime bench/results/demo-minilm [--rounds 15]

Rebuilds the original model from the report's model name (a built-in demo or ``package.module:factory``),
loads every later stage from the archives the run kept under ``DIR/stages/``, times them all again, interleaved
(:func:`slimgraph.timing.time_models`, fresh process, fresh warm-up), and compares each stage's
``speed vs original`` with the re-timing: the two agree when their ranges (from the interquartile ranges)
overlap. Writes ``DIR/retime.md`` and ``DIR/retime.json``; exits 1 when a stage disagrees.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .. import defaults


def agree(reported: dict, measured) -> bool:
    """Two speed ratios agree when their spreads overlap (each is a [low, high] range around a median)."""
    return reported["low"] <= measured.high and measured.low <= reported["high"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slimgraph.demos.retime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report_dir", help="a `slimgraph compress`/`demo` output directory")
    parser.add_argument("--rounds", type=int, default=defaults.TIMING_ROUNDS, help="interleaved rounds")
    args = parser.parse_args(argv)

    import torch

    from ..ir.capture import _eval_mode
    from ..serialize import load
    from ..timing import speedup, time_models
    from . import load_model

    out = Path(args.report_dir)
    report = json.loads((out / "report.json").read_text())
    stages = [s["name"] for s in report["stages"]]
    demo = load_model(report["model"])
    models = {stages[0]: demo.model}
    for name in stages[1:]:
        models[name] = load(out / "stages" / f"{name}.slimgraph")
    torch.manual_seed(0)
    start = time.perf_counter()
    with _eval_mode(demo.model):
        run = time_models(models, demo.args, demo.kwargs, rounds=args.rounds,
                          min_rounds=min(args.rounds, defaults.TIMING_MIN_ROUNDS), max_seconds=120.0)
    rows, ok = [], True
    for s in report["stages"][1:]:
        measured = speedup(run[stages[0]], run[s["name"]])
        same = agree(s["vs_original"], measured)
        ok &= same
        rows.append({"stage": s["name"], "reported": s["vs_original"], "retimed": measured.as_dict(),
                     "retimed_ms": run[s["name"]].as_dict(), "agree": same})
    command = "python -m slimgraph.demos.retime " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"command": command, "conditions": run.conditions(), "seconds": time.perf_counter() - start,
               "original_ms": run[stages[0]].as_dict(), "stages": rows, "all_agree": ok}
    (out / "retime.json").write_text(json.dumps(payload, indent=2))
    lines = [
        "# Independent re-timing of the report's speed column", "",
        f"Command: `{command}` (a fresh process: the original rebuilt, every later stage loaded from "
        "`stages/*.slimgraph`).  ", f"Timing: {run.conditions()}.", "",
        "Ratios are speed vs the original (> 1 = faster), median with the range from both interquartile ranges. "
        "They agree when the report's range and the re-timing's range overlap.", "",
        "| stage | report: speed vs original | re-timed: speed vs original | re-timed ms (IQR) | agree |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        rep, new, ms = r["reported"], r["retimed"], r["retimed_ms"]
        lines.append(f"| {r['stage']} | {rep['median']:.2f}x ({rep['low']:.2f}-{rep['high']:.2f}) | "
                     f"{new['median']:.2f}x ({new['low']:.2f}-{new['high']:.2f}) | {ms['median_ms']:.1f} "
                     f"({ms['q1_ms']:.1f}-{ms['q3_ms']:.1f}) | {'yes' if r['agree'] else 'NO'} |")
    lines += ["", f"Original: {run[stages[0]].label()}.", "",
              "All stages agree." if ok else "**At least one stage disagrees with the report.**", ""]
    (out / "retime.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
