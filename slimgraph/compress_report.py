"""The main job's report: report.md / report.json, the trade-off and per-layer plots, the console summary.

Every figure says what it is: the metric's source (the user's eval_fn, or fidelity on held-out data), how the
data was split, how latency was timed (interleaved rounds, median and IQR, machine load), and a speed ratio
whose spread contains 1.0 reads "no change".
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict
from pathlib import Path

import torch
import torch.fx as fx

from .compress import CompressResult, Stage
from .report import format_table, human, inspect_table, layer_rows


def slower_stages(result: CompressResult) -> list[str]:
    """One line per stage measurably slower than the stage before it on this machine."""
    lines = []
    for prev, s in zip(result.stages, result.stages[1:]):
        if s.vs_previous is not None and s.vs_previous.verdict == "slower":
            lines.append(f"{s.name} is slower than {prev.name} on this machine: {s.latency.label()} vs "
                         f"{prev.latency.label()} ({s.vs_previous.label()})")
    return lines


def summary_table(result: CompressResult) -> str:
    base = result.stages[0]
    metrics = _metric_names(result)
    rows = []
    for s in result.stages:
        lat = s.latency
        rows.append([
            s.name, human(s.params), human(s.bytes, "B"), _pct(s.bytes, base.bytes),
            human(s.disk_bytes, "B") if s.disk_bytes is not None else "-", human(s.macs),
            _pct(s.macs, base.macs),
            f"{lat.median_ms:.2f} ({lat.q1_ms:.2f}-{lat.q3_ms:.2f})" if lat else "-",
            s.vs_original.label() if s.vs_original else "-",
            s.vs_previous.label() if s.vs_previous else "-",
            *(f"{s.metrics.get(k, math.nan):.4f}" for k in metrics), f"{s.seconds:.1f}",
            "SLOWER than previous" if s.vs_previous is not None and s.vs_previous.verdict == "slower" else "",
        ])
    headers = ["stage", "params", "size", "size %", "on disk", "MACs", "MACs %", "CPU ms median (IQR)",
               "speed vs original", "vs previous", *metrics, "took s", "flag"]
    return format_table(headers, rows, align_right=set(range(1, len(headers) - 1)))


def summary_text(result: CompressResult) -> str:
    lines = [summary_table(result), "", f"metric: {result.metric_source}", f"data: {result.data}"]
    if result.timing is not None:
        lines.append(f"latency: {result.timing.conditions()}")
    lines += [f"WARNING: {line}" for line in slower_stages(result)]
    lines += [f"fallback: {line}" for line in result.fallbacks]
    from .compress_stages import disk_breakdown

    dense = next(iter(disk_breakdown(result)), ("", 0))[1]
    lines += [f"on disk: {step} {human(size, 'B')} ({100 * size / dense:.1f}% of dense)"
              for step, size in disk_breakdown(result)]
    lines += [f"{k}: {v}" for k, v in result.checks.items()]
    lines += [f"{k}: {v}" for k, v in result.files.items()]
    if result.out_dir is not None:
        lines.append(f"report: {result.out_dir / 'report.md'}")
    return "\n".join(lines)


def write_report(result: CompressResult, original: fx.GraphModule) -> None:
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    _plots(result, original)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor(), "cuda": torch.cuda.is_available()}
    report = {
        "model": result.model, "description": result.description, "settings": result.settings,
        "config": asdict(result.config), "metric": result.metric, "metric_source": result.metric_source,
        "data": result.data, "machine": meta, "timing": result.timing.as_dict() if result.timing else None,
        "stages": [_stage_json(s) for s in result.stages], "slower_than_previous": slower_stages(result),
        "fallbacks": result.fallbacks, "not_pruned": [dict(zip(("group", "status", "reason"), g))
                                                      for g in result.not_pruned],
        "files": result.files, "checks": result.checks,
        "disk_bytes": [{"step": step, "bytes": size} for step, size in _breakdown(result)],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    flags = slower_stages(result)
    md = [
        f"# slimgraph compress: {result.model}", "", result.description, "",
        "## Stages", "", "```", summary_table(result), "```", "",
        *([f"**Slower than the stage before it:** {line}.  " for line in flags] + [""] if flags else []),
        "## What the figures mean", "",
        f"- **Metric** ({result.metric}): {result.metric_source}.",
        f"- **Fidelity**: {_fidelity_note(result)}",
        f"- **Data**: {result.data}.",
        f"- **Latency**: {result.timing.conditions() if result.timing else 'not measured'}. Each stage is called "
        "on the example inputs; `speed vs original` / `vs previous` are median ratios (> 1 = faster) with the "
        "range from the two interquartile ranges; a range containing 1.0 reads `no change`.",
        "- **size**: bytes of the weights and buffers the graph reads in memory; **size %** and **MACs %**: of the "
        "original; **on disk**: the stage's saved archive (`sg.save`), breakdown below.",
        f"- Machine: {meta['machine']} {meta['processor']}, torch {meta['torch']}, {meta['threads']} threads, CUDA "
        f"{meta['cuda']}. Every number comes from this run ({result.checks.get('wall_seconds')} s in all).", "",
        *_disk_md(result),
        "## Fallbacks (steps that ran differently from what was asked)", "",
        *([f"- {line}" for line in result.fallbacks] or ["- none: every step ran as asked"]), "",
        "## Effective settings", "",
        "| setting | value |", "|---|---|", *(f"| {k} | `{v}` |" for k, v in result.settings.items()), "",
        "![metric against size and latency per stage](tradeoff.png)", "",
        *_not_pruned_md(result),
        "## Checks", "", *(f"- {k}: {v}" for k, v in result.checks.items()), "",
        "## Files", "", *(f"- {k}: `{_relative(v, out)}`" for k, v in result.files.items()), "",
        "## Layers: before vs after", "", "![per-layer parameters and MACs](layers.png)", "",
        "### Final model", "", "```", inspect_table(result.final, limit=50), "```", "",
    ]
    (out / "report.md").write_text("\n".join(md))


def _disk_md(result: CompressResult) -> list[str]:
    from .compress_stages import disk_breakdown

    rows = disk_breakdown(result)
    if not rows:
        return []
    dense = rows[0][1]
    lines = ["## Bytes on disk", "", "| step | bytes on disk | % of dense | smaller |", "|---|---|---|---|"]
    lines += [f"| {step} | {size} ({human(size, 'B')}) | {100 * size / dense:.1f}% | {dense / size:.2f}x |"
              for step, size in rows]
    return [*lines, ""]


def _fidelity_note(result: CompressResult) -> str:
    from .compress import FIDELITY

    return (f"`{FIDELITY}` is the mean over held-out samples of the cosine similarity between the stage's "
            f"outputs and the original's (all floating outputs of a sample flattened into one vector); "
            f"`{FIDELITY}_min` the worst sample. 1.0 = identical outputs.")


def _not_pruned_md(result: CompressResult) -> list[str]:
    if not any(s.name == "pruned" for s in result.stages):
        return []
    if not result.not_pruned:
        return ["## Groups not pruned", "", "- none: every group was pruned", ""]
    return ["## Groups not pruned", "", "| group | status | why |", "|---|---|---|",
            *(f"| {g} | {st} | {why or '-'} |" for g, st, why in result.not_pruned), ""]


def _breakdown(result: CompressResult) -> list[tuple[str, int]]:
    from .compress_stages import disk_breakdown

    return disk_breakdown(result)


def _stage_json(s: Stage) -> dict:
    d = {k: v for k, v in asdict(s).items() if k not in ("module", "latency", "vs_original", "vs_previous")}
    d["latency"] = s.latency.as_dict() if s.latency else None
    d["latency_ms"] = s.latency_ms
    d["vs_original"] = s.vs_original.as_dict() if s.vs_original else None
    d["vs_previous"] = s.vs_previous.as_dict() if s.vs_previous else None
    return d


def _metric_names(result: CompressResult) -> list[str]:
    names: list[str] = []
    for s in result.stages:
        names += [k for k in s.metrics if k not in names]
    return names


def _relative(path: str, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)


def _pct(value: float, base: float) -> str:
    return f"{100.0 * value / base:.1f}%" if base else "-"


def _layer_costs(gm: fx.GraphModule) -> dict[str, tuple[int, int]]:
    costs: dict[str, tuple[int, int]] = {}
    for r in layer_rows(gm):
        if r.macs:
            p, m = costs.get(r.module, (0, 0))
            costs[r.module] = (p + r.params, m + r.macs)
    return costs


def _plots(result: CompressResult, original: fx.GraphModule) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before, after = _layer_costs(original), _layer_costs(result.final)
    names = sorted(before, key=lambda n: -before[n][1])[:30]
    height = max(4.0, 0.32 * len(names) + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(15, height), sharey=True)
    y = list(range(len(names)))
    for ax, idx, label in ((axes[0], 0, "parameters (count)"), (axes[1], 1, "MACs per forward call (count)")):
        ax.barh([i - 0.2 for i in y], [before[n][idx] for n in names], height=0.4, label="original")
        ax.barh([i + 0.2 for i in y], [after.get(n, (0, 0))[idx] for n in names], height=0.4, label="compressed")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right")
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(names, fontsize=7)  # full module paths: a shortened name can be ambiguous
    axes[0].invert_yaxis()
    fig.suptitle(f"{result.model}: per-layer parameters and MACs, original vs compressed "
                 f"({len(names)} largest layers by MACs)")
    fig.tight_layout()
    fig.savefig(result.out_dir / "layers.png", dpi=110)
    plt.close(fig)

    metric = result.metric
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ys = [s.metrics.get(metric, math.nan) for s in result.stages]
    sizes = [s.bytes / 1e6 for s in result.stages]
    lat = [s.latency_ms for s in result.stages]
    err = [[s.latency_ms - s.latency.q1_ms for s in result.stages], [s.latency.q3_ms - s.latency_ms
                                                                    for s in result.stages]]
    axes[0].plot(sizes, ys, "o-")
    axes[1].errorbar(lat, ys, xerr=err, fmt="o-", capsize=3)
    for ax, xs, label in ((axes[0], sizes, "size of weights (MB)"),
                          (axes[1], lat, "CPU latency per call (ms, median; bars: interquartile range)")):
        for s, xv, yv in zip(result.stages, xs, ys):
            ax.annotate(s.name, (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric} (higher is better)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result.model}: {metric} per stage ({result.metric_source.split(':')[0]})")
    fig.tight_layout()
    fig.savefig(result.out_dir / "tradeoff.png", dpi=110)
    plt.close(fig)
