"""The ``slimgraph`` command line.

    slimgraph demo                           the main job end to end on the built-in default model
    slimgraph compress MODEL --out DIR       prune, distill, quantize, fuse, verify, export, report
    slimgraph inspect MODEL                  per-layer table (op, shapes, params, MACs) and totals
    slimgraph optimize MODEL --out FILE      capture, run a pipeline, verify, save
    slimgraph prune MODEL --out FILE         structured pruning only
    slimgraph quantize MODEL --out FILE      int8 quantization only
    slimgraph export MODEL --onnx FILE       ONNX export (QDQ for quantized models)
    slimgraph passes                         list registered passes and their options
    slimgraph bench kernels                  kernel microbenchmarks (from a source checkout)

MODEL is a built-in demo (minilm, digits-cnn), ``package.module:factory`` returning
``(model, args[, kwargs])``, or a file written by ``slimgraph optimize`` / ``sg.save``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

DESCRIPTION = "Compiler-style pruning, fusion and int8 quantization for PyTorch models."


def _load(spec: str):
    """(model, args, kwargs, label) for a demo name, a factory or a saved archive."""
    from .demos import Demo, load_model

    if os.path.isfile(spec):
        from .ir.info import graph_info
        from .serialize import load

        gm = load(spec)
        info = graph_info(gm)
        return Demo(spec, gm, info.example_args, info.example_kwargs, description=f"archive {spec}")
    return load_model(spec)


def _status(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_inspect(args) -> int:
    from .ir.capture import capture
    from .report import inspect_table

    demo = _load(args.model)
    _status(f"capturing {demo.description or demo.name} ...")
    start = time.perf_counter()
    gm = demo.model if _is_captured(demo.model) else capture(demo.model, demo.args, demo.kwargs)
    _status(f"captured in {time.perf_counter() - start:.2f} s")
    print(inspect_table(gm, all_nodes=args.all_nodes, limit=None if args.all_rows else args.limit))
    return 0


def _is_captured(model) -> bool:
    import torch.fx as fx

    return isinstance(model, fx.GraphModule) and "slimgraph" in model.meta


def cmd_optimize(args) -> int:
    from .api import optimize
    from .ir.info import graph_info
    from .numerics import compare_outputs, run_module
    from .passes.base import parse_pipeline
    from .report import human, totals
    from .serialize import save

    parse_pipeline(args.pipeline)  # fail on a typo before loading a large model
    demo = _load(args.model)
    _status(f"optimizing {demo.description or demo.name} with pipeline {args.pipeline!r} ...")
    start = time.perf_counter()
    gm = optimize(demo.model, demo.args, args.pipeline, example_kwargs=demo.kwargs, check=not args.no_check)
    elapsed = time.perf_counter() - start
    for record in graph_info(gm).history:
        if record.notes and args.verbose:
            for note in record.notes:
                _status(f"  {record.name}: {note}")
    print(_history_table(gm))
    before, after = run_module(demo.model, demo.args, demo.kwargs), run_module(gm, demo.args, demo.kwargs)
    t = totals(gm)
    print(f"\noutput vs original: {compare_outputs(after, before)}")
    print(f"result: {human(t.params)} params, {human(t.macs)} MACs, {t.nodes} nodes; {elapsed:.2f} s")
    if args.out:
        path = save(gm, args.out)
        print(f"saved to {path} ({human(path.stat().st_size, 'B')})")
    return 0


def _history_table(gm) -> str:
    from .ir.info import graph_info
    from .passes.manager import PipelineResult

    return PipelineResult(gm, list(graph_info(gm).history)).table()


def cmd_passes(args) -> int:
    from .passes import registered_passes

    for name, cls in registered_passes().items():
        opts = [f"{f.name}={f.default!r}" for f in dataclasses.fields(cls) if f.init]
        kind = "lossless" if cls.tolerance is not None else "lossy"
        print(f"{name:16s} {kind:8s} {cls.summary}")
        if opts:
            print(f"{'':16s} {'':8s} options: {', '.join(opts)}")
    return 0


def _config(args, **overrides):
    from .compress import CompressConfig

    def none_or(value, cast):
        return None if value in (None, "none", "off") else cast(value)

    return CompressConfig(
        prune=none_or(args.prune, float), heads=none_or(args.heads, float), importance=args.importance,
        reconstruct=not args.no_reconstruct,
        round_to=args.round_to, distill_steps=args.distill, quant=none_or(args.quant, str),
        onnx=not args.no_onnx, seed=args.seed, **overrides)


def cmd_compress(args) -> int:
    from .compress import compress, print_summary

    result = compress(args.model, _config(args), Path(args.out))
    print_summary(result)
    return 0 if result.checks.get("reload_exact") else 1


def cmd_demo(args) -> int:
    return cmd_compress(args)


def cmd_prune(args) -> int:
    from .prune import prune, prune_report
    from .serialize import save

    demo = _load(args.model)
    ratios = {"heads": args.heads} if args.heads is not None else None
    gm = prune(demo.model, demo.args, ratio=args.ratio, importance=args.importance, scope=args.scope,
               round_to=args.round_to, ignore=tuple(args.ignore), example_kwargs=demo.kwargs, ratios=ratios,
               calib=demo.calib_batches or None, reconstruct=args.reconstruct)
    print(prune_report(gm).table(limit=None if args.all_rows else 40))
    if args.out:
        print(f"saved to {save(gm, args.out)}")
    return 0


def cmd_quantize(args) -> int:
    from .quant import last_report, quantize
    from .serialize import save

    demo = _load(args.model)
    gm = quantize(demo.model, demo.args, scheme=args.scheme, calib=demo.calib_batches or None,
                  example_kwargs=demo.kwargs, observer=args.observer, skip=tuple(args.skip),
                  max_error=args.max_error, smoothquant=args.smoothquant)
    report = last_report(gm)
    if report is not None:
        print(report.table())
    if args.out:
        print(f"saved to {save(gm, args.out)}")
    return 0


def cmd_export(args) -> int:
    from .onnx_export import export_onnx

    demo = _load(args.model)
    print(f"wrote {export_onnx(demo.model, demo.args, args.onnx, example_kwargs=demo.kwargs)}")
    return 0


def cmd_bench(args) -> int:
    import importlib

    root = Path(__file__).resolve().parent.parent
    if (root / "bench" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(f"bench.{args.suite}")
    except ImportError as exc:
        from .errors import InputError

        raise InputError(f"benchmark suite {args.suite!r} not found ({exc}); benchmarks ship with the source "
                         "checkout: run from the repository root") from exc
    return int(module.main(args.rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimgraph", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    model_help = "a built-in demo (minilm, digits-cnn), package.module:factory, or a saved archive"

    p = sub.add_parser("inspect", help="print a per-layer table (op, shapes, params, MACs) and totals",
                       description="Capture MODEL and print a per-layer table of GEMM/conv and parameter nodes.")
    p.add_argument("model", help=model_help)
    p.add_argument("--all-nodes", action="store_true", help="list every call node, not only GEMMs and weights")
    p.add_argument("--all-rows", action="store_true", help="do not truncate the table")
    p.add_argument("--limit", type=int, default=60, help="rows to show (default 60)")
    p.set_defaults(func=cmd_inspect)

    from .api import DEFAULT_PIPELINE

    p = sub.add_parser("optimize", help="run a pass pipeline and write the result",
                       description="Capture MODEL, run PIPELINE with numeric checks after every pass, save.")
    p.add_argument("model", help=model_help)
    p.add_argument("--pipeline", default=DEFAULT_PIPELINE, help=f"pass pipeline (default {DEFAULT_PIPELINE!r})")
    p.add_argument("--out", help="write the optimized model to this archive file")
    p.add_argument("--no-check", action="store_true", help="skip the numeric check after each pass")
    p.add_argument("-v", "--verbose", action="store_true", help="print every pass's notes")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("passes", help="list the registered passes and their options",
                       description="List the registered passes, whether they are lossless, and their options.")
    p.set_defaults(func=cmd_passes)

    def compress_options(p):
        p.add_argument("--prune", default="0.5", help="fraction of channels/FFN neurons removed (default 0.5; "
                       "'none' to skip pruning)")
        p.add_argument("--heads", default="0.25", help="fraction of attention heads removed (default 0.25)")
        p.add_argument("--importance", default="act", help="l1 | l2 | act | bn-scale | taylor | random (default act: "
                       "activation-aware, from the model's calibration data)")
        p.add_argument("--round-to", type=int, default=8, help="round kept widths up to a multiple (default 8)")
        p.add_argument("--no-reconstruct", action="store_true", help="keep the surviving weights as they are "
                       "instead of refitting the layers that lose inputs by least squares on calibration data")
        p.add_argument("--distill", type=int, default=None, metavar="STEPS",
                       help="distillation steps after pruning (default: the model's own setting; 0 = none)")
        p.add_argument("--quant", default="w8a8-dynamic", help="w8a8 | w8a8-dynamic | w8a16 | none")
        p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = sub.add_parser("demo", help="the main job end to end on the built-in default model (all-MiniLM-L6-v2)",
                       description="Compress the real all-MiniLM-L6-v2 (prune, distill, quantize, fuse, verify, "
                       "export) and write a report with every stage measured.")
    p.add_argument("model", nargs="?", default="minilm", help="model (default: minilm)")
    p.add_argument("--out", default="slimgraph-demo", help="output directory (default ./slimgraph-demo)")
    compress_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("compress", help="prune, distill, quantize, fuse, verify and export a model, with a report",
                       description="The main job on MODEL: every stage measured; writes report.md/json, plots, "
                       "the saved model and the ONNX file to --out.")
    p.add_argument("model", help=model_help)
    p.add_argument("--out", required=True, help="output directory")
    compress_options(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("prune", help="structured pruning of channels, neurons and heads",
                       description="Prune MODEL and print the per-group report.")
    p.add_argument("model", help=model_help)
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of units removed per group (default 0.5)")
    p.add_argument("--heads", type=float, default=None, help="separate ratio for attention heads")
    p.add_argument("--importance", default="l2", help="l1 | l2 | act | bn-scale | taylor | random")
    p.add_argument("--scope", default="local", help="local | global")
    p.add_argument("--round-to", type=int, default=8, help="round kept widths up to a multiple (default 8)")
    p.add_argument("--ignore", action="append", default=[], help="module (pattern) never to prune; repeatable")
    p.add_argument("--reconstruct", action="store_true", help="refit the layers that lose inputs (FFN down and "
                   "attention output projections) by least squares on the model's calibration data")
    p.add_argument("--all-rows", action="store_true", help="do not truncate the report")
    p.add_argument("--out", help="write the pruned model to this archive file")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("quantize", help="int8 quantization (w8a8, w8a8-dynamic, w8a16)",
                       description="Quantize MODEL (calibrating on its built-in data when it has any) and print "
                       "the per-layer report.")
    p.add_argument("model", help=model_help)
    p.add_argument("--scheme", default="w8a8", help="w8a8 | w8a8-dynamic | w8a16 (default w8a8)")
    p.add_argument("--observer", default="minmax", help="minmax | percentile | mse")
    p.add_argument("--smoothquant", type=float, default=None, help="SmoothQuant alpha (off by default)")
    p.add_argument("--skip", action="append", default=[], help="layer pattern kept in float; repeatable")
    p.add_argument("--max-error", type=float, default=None, help="relative output error budget")
    p.add_argument("--out", help="write the quantized model to this archive file")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("export", help="export to ONNX (QDQ for quantized models)",
                       description="Export MODEL (or a saved archive) to ONNX.")
    p.add_argument("model", help=model_help)
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="run a benchmark suite from bench/ (e.g. kernels)",
                       description="Run bench/<suite>.py from a source checkout, e.g. 'slimgraph bench kernels "
                       "--quick'. Arguments after the suite name go to the suite.")
    p.add_argument("suite", help="suite name: kernels, pipeline_cpu, e2e, ...")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the suite")
    p.set_defaults(func=cmd_bench)
    return parser


def _version() -> str:
    from . import __version__

    return f"slimgraph {__version__}"


def main(argv: list[str] | None = None) -> int:
    from .errors import SlimgraphError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SlimgraphError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
