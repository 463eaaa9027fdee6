"""The ``slimgraph`` command line.

    slimgraph inspect MODEL                  per-layer table (op, shapes, params, MACs) and totals
    slimgraph optimize MODEL --out FILE      capture, run a pipeline, verify, save
    slimgraph passes                         list registered passes and their options
    slimgraph demo                           the main job end to end on the built-in default model

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


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(model=args.model, out_dir=Path(args.out), seed=args.seed)


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

    p = sub.add_parser("demo", help="run the main job end to end on a built-in model and print a report",
                       description="Capture, optimize, verify and save a built-in model; write a report.")
    p.add_argument("model", nargs="?", default="minilm", help="model (default: minilm)")
    p.add_argument("--out", default="slimgraph-demo", help="output directory (default ./slimgraph-demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_demo)
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
