"""The main job: compress a model end to end and report what it gained.

    slimgraph compress minilm --prune 0.5 --heads 0.25 --distill 300 --quant w8a8-dynamic --out out/
    slimgraph demo            # the same on the built-in default (all-MiniLM-L6-v2), into ./slimgraph-demo

Stages, each measured (parameters, bytes, MACs, CPU latency, the model's task metric, time taken):

1. ``original``: the model as given (captured once for its MACs);
2. ``pruned``: structured pruning (channels / FFN neurons at ``prune``, attention heads at ``heads``), the
   layers that lose inputs refit by least squares on calibration data (``reconstruct``);
3. ``distilled``: knowledge distillation from the original on the demo's training data;
4. ``quantized``: fold BN, fuse epilogues, int8 rewrite (``quant`` scheme, calibrated on training data);
5. ``final``: verified (IR invariants, output shapes, outputs vs the original), saved without pickle, and
   exported to ONNX.

Writes ``report.md``, ``report.json``, ``layers.png`` (per-layer parameters and MACs before vs after) and
``tradeoff.png`` (task metric against size and latency per stage), the saved model and the ONNX file. Runs
are deterministic given ``seed``.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.fx as fx

from .errors import InputError


@dataclass
class CompressConfig:
    prune: float | None = 0.5  # fraction of channels / FFN neurons removed per group; None = no pruning
    heads: float | None = 0.25  # fraction of attention heads removed; None = same as ``prune``
    importance: str = "act"  # activation-aware: uses the model's calibration data
    reconstruct: bool = True  # least-squares refit of the layers that lose inputs, on the calibration data
    round_to: int = 8
    distill_steps: int | None = None  # None: the demo's default; 0 = no distillation
    quant: str | None = "w8a8-dynamic"  # None = stay in float
    onnx: bool = True
    seed: int = 0
    latency_iters: int = 20

    def __post_init__(self):
        if self.prune is not None and not 0.0 <= self.prune < 1.0:
            raise InputError(f"--prune must be in [0, 1), got {self.prune}")
        if self.heads is not None and not 0.0 <= self.heads < 1.0:
            raise InputError(f"--heads must be in [0, 1), got {self.heads}")
        if self.quant not in (None, "w8a8", "w8a8-dynamic", "w8a16"):
            raise InputError(f"--quant must be w8a8, w8a8-dynamic, w8a16 or none, got {self.quant!r}")


@dataclass
class Stage:
    name: str
    params: int
    bytes: int
    macs: int
    latency_ms: float
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""


@dataclass
class CompressResult:
    model: str
    description: str
    config: CompressConfig
    stages: list[Stage]
    final: fx.GraphModule
    out_dir: Path
    files: dict[str, str] = field(default_factory=dict)
    checks: dict[str, object] = field(default_factory=dict)


def _say(msg: str) -> None:
    print(f"[slimgraph] {msg}", file=sys.stderr, flush=True)


def _measure(name, model, demo, graph, seconds, iters, note="") -> Stage:
    from .measure import latency_ms
    from .report import totals

    t = totals(graph)
    metrics = demo.evaluate(model) if demo.evaluate is not None else {}
    lat = latency_ms(model, demo.args, demo.kwargs, iters=iters)
    return Stage(name, t.params, t.bytes, t.macs, lat, metrics, seconds, note)


def compress(model: str, config: CompressConfig | None = None, out_dir: str | Path = "slimgraph-out") -> CompressResult:
    """Run the main job on ``model`` (a demo name, ``package.module:factory`` or a saved archive)."""
    from .demos import load_model
    from .distill import distill
    from .ir.capture import capture
    from .numerics import compare_outputs, run_module
    from .prune import prune, prune_report
    from .serialize import load, save

    config = config or CompressConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    wall = time.perf_counter()
    _say(f"loading {model} ...")
    demo = load_model(model)
    _say(demo.description)

    start = time.perf_counter()
    original_graph = capture(demo.model, demo.args, demo.kwargs)
    _say(f"captured in {time.perf_counter() - start:.2f} s; measuring the original model ...")
    stages = [_measure("original", demo.model, demo, original_graph, time.perf_counter() - start,
                       config.latency_iters)]
    current: fx.GraphModule = original_graph

    if config.prune:
        heads = config.heads if config.heads is not None else config.prune
        _say(f"pruning {config.prune:.0%} of channels/neurons and {heads:.0%} of attention heads ...")
        start = time.perf_counter()
        ratios = {"heads": config.heads} if config.heads is not None else None
        current = prune(current, demo.args, ratio=config.prune, importance=config.importance,
                        round_to=config.round_to, example_kwargs=demo.kwargs, ratios=ratios, seed=config.seed,
                        calib=demo.calib_batches or None, reconstruct=config.reconstruct)
        report = prune_report(current)
        note = f"{len(report.pruned)} of {len(report.groups)} groups pruned"
        if report.reconstructed:
            note += f", {len(report.reconstructed)} layers refit by least squares"
        stages.append(_measure("pruned", current, demo, current, time.perf_counter() - start, config.latency_iters,
                               note))

        steps = demo.distill.get("steps", 0) if config.distill_steps is None else config.distill_steps
        if steps and demo.train_batches:
            _say(f"distilling from the original for {steps} steps ...")
            start = time.perf_counter()
            settings = {k: v for k, v in demo.distill.items() if k != "steps"}
            current = distill(current, demo.model, demo.train_batches, steps=steps, seed=config.seed, **settings)
            stages.append(_measure("distilled", current, demo, current, time.perf_counter() - start,
                                   config.latency_iters, f"{steps} steps, {settings}"))

    if config.quant:
        from .quant import quantize

        _say(f"quantizing ({config.quant}) ...")
        start = time.perf_counter()
        current = quantize(current, demo.args, scheme=config.quant, calib=demo.calib_batches or None,
                           example_kwargs=demo.kwargs)
        stages.append(_measure("quantized", current, demo, current, time.perf_counter() - start,
                               config.latency_iters))
    elif not config.prune:
        from .passes.manager import PassManager

        current = PassManager("fold-constants,fold-bn,fuse,dce", check_numerics=True).run(current).gm

    _say("verifying and exporting ...")
    from .ir.verify import verify

    verify(current)
    final_out, original_out = run_module(current, demo.args, demo.kwargs), run_module(demo.model, demo.args,
                                                                                      demo.kwargs)
    fidelity = compare_outputs(final_out, original_out)  # raises if output shapes changed
    files = {"model": str(save(current, out / "model.slimgraph"))}
    reload_exact = compare_outputs(run_module(load(files["model"]), demo.args, demo.kwargs), final_out).exact
    checks: dict[str, object] = {"ir_verified": True, "output_shapes_unchanged": True,
                                 "final_vs_original": str(fidelity), "reload_exact": reload_exact}
    if config.onnx:
        try:
            from .onnx_export import export_onnx

            files["onnx"] = str(export_onnx(current, demo.args, out / "model.onnx", example_kwargs=demo.kwargs))
        except Exception as exc:  # noqa: BLE001 - the report says why; the saved model is still there
            checks["onnx_error"] = f"{type(exc).__name__}: {exc}"
            _say(f"ONNX export failed: {exc}")
    result = CompressResult(model, demo.description, config, stages, current, out, files, checks)
    result.checks["wall_seconds"] = round(time.perf_counter() - wall, 1)
    write_report(result, original_graph)
    return result


# ----------------------------------------------------------------------------------------------- report


def write_report(result: CompressResult, original: fx.GraphModule) -> None:
    from .report import format_table, human, inspect_table

    out = result.out_dir
    metrics = sorted({k for s in result.stages for k in s.metrics})
    base = result.stages[0]
    rows = []
    for s in result.stages:
        rows.append([s.name, human(s.params), human(s.bytes, "B"), f"{base.bytes / max(s.bytes, 1):.2f}x",
                     human(s.macs), f"{s.latency_ms:.1f}", f"{base.latency_ms / max(s.latency_ms, 1e-9):.2f}x",
                     *(f"{s.metrics.get(k, float('nan')):.4f}" for k in metrics), f"{s.seconds:.1f}"])
    summary = format_table(["stage", "params", "size", "smaller", "MACs", "CPU ms", "faster", *metrics, "took s"],
                           rows, align_right=set(range(1, 8 + len(metrics))))
    result.checks["summary_table"] = summary
    _plots(result, original, metrics)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "cuda": torch.cuda.is_available()}
    report = {
        "model": result.model, "description": result.description, "config": asdict(result.config),
        "machine": meta, "stages": [asdict(s) for s in result.stages], "files": result.files,
        "checks": {k: v for k, v in result.checks.items() if k != "summary_table"},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    md = [
        f"# slimgraph compress: {result.model}", "", result.description, "",
        f"Config: `{asdict(result.config)}`.  ",
        f"torch {meta['torch']}, {meta['threads']} CPU threads, CUDA: {meta['cuda']}. Every number below comes "
        f"from this run ({result.checks.get('wall_seconds')} s).", "",
        "## Stages", "", "```", summary, "```", "",
        "![task metric vs size and latency](tradeoff.png)", "",
        "## Checks", "",
        *(f"- {k}: {v}" for k, v in result.checks.items() if k not in ("summary_table",)), "",
        "## Files", "", *(f"- {k}: `{Path(v).name}`" for k, v in result.files.items()), "",
        "## Layers: before vs after", "", "![per-layer params and MACs](layers.png)", "",
        "### Final model", "", "```", inspect_table(result.final, limit=50), "```", "",
    ]
    (out / "report.md").write_text("\n".join(md))


def _layer_costs(gm: fx.GraphModule) -> dict[str, tuple[int, int]]:
    from .report import layer_rows

    costs: dict[str, tuple[int, int]] = {}
    for r in layer_rows(gm):
        if r.macs:
            p, m = costs.get(r.module, (0, 0))
            costs[r.module] = (p + r.params, m + r.macs)
    return costs


def _plots(result: CompressResult, original: fx.GraphModule, metrics: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before, after = _layer_costs(original), _layer_costs(result.final)
    names = sorted(before, key=lambda n: -before[n][1])[:30]
    fig, axes = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
    x = range(len(names))
    for ax, idx, label in ((axes[0], 0, "parameters"), (axes[1], 1, "MACs")):
        ax.bar([i - 0.2 for i in x], [before[n][idx] for n in names], width=0.4, label="original")
        ax.bar([i + 0.2 for i in x], [after.get(n, (0, 0))[idx] for n in names], width=0.4, label="compressed")
        ax.set_ylabel(label)
        ax.legend()
    axes[1].set_xticks(list(x))
    axes[1].set_xticklabels([n.replace("encoder.", "")[-28:] for n in names], rotation=80, fontsize=7)
    fig.suptitle(f"{result.model}: per-layer parameters and MACs (30 largest layers)")
    fig.tight_layout()
    fig.savefig(result.out_dir / "layers.png", dpi=110)
    plt.close(fig)

    metric = metrics[0] if metrics else None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, attr, label in ((axes[0], "bytes", "size (MB)"), (axes[1], "latency_ms", "CPU latency (ms)")):
        xs = [getattr(s, attr) / (1e6 if attr == "bytes" else 1) for s in result.stages]
        ys = [s.metrics.get(metric, float("nan")) if metric else 0 for s in result.stages]
        ax.plot(xs, ys, "o-")
        for s, xv, yv in zip(result.stages, xs, ys):
            ax.annotate(s.name, (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(metric or "")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result.model}: {metric or 'metric'} per stage")
    fig.tight_layout()
    fig.savefig(result.out_dir / "tradeoff.png", dpi=110)
    plt.close(fig)


def print_summary(result: CompressResult) -> None:
    print(result.checks["summary_table"])
    print()
    for k, v in result.checks.items():
        if k != "summary_table":
            print(f"{k}: {v}")
    for k, v in result.files.items():
        print(f"{k}: {v}")
    print(f"report: {result.out_dir / 'report.md'}")
