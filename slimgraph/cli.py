"""The ``slimgraph`` command line.

    slimgraph demo                           the main job end to end on the built-in default model
    slimgraph compress MODEL --out DIR       prune, distill, quantize, fuse, verify, export, report
                     [--data SPEC] [--eval package.module:metric]
    slimgraph inspect MODEL                  per-layer table (op, shapes, params, MACs) and totals
    slimgraph optimize MODEL --out FILE      capture, run a pipeline, verify, save
    slimgraph prune MODEL --out FILE         structured pruning only
    slimgraph quantize MODEL --out FILE      int8 quantization only
    slimgraph distill MODEL --teacher MODEL --data SPEC --steps N --out FILE
    slimgraph export MODEL --onnx FILE       ONNX export (QDQ for quantized models)
    slimgraph passes                         list registered passes and their options
    slimgraph bench kernels                  kernel microbenchmarks (from a source checkout)

MODEL is a built-in demo (minilm, digits-cnn), ``package.module:factory`` returning
``(model, args[, kwargs])``, or a file written by ``slimgraph optimize`` / ``sg.save``. A spec
``package.module:name`` is imported with the current directory importable.

--data SPEC is ``package.module:batches`` (a callable returning an iterable of batches, or the iterable) or a
``.npz`` / ``.safetensors`` file of input arrays, first dimension = samples, cut into ``--batch-size`` batches
(array naming: see ``slimgraph.data.batches``). --eval ``package.module:metric`` names ``metric(model) ->
float``, higher is better. Defaults for every option come from ``slimgraph.defaults``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import defaults

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
    from .passes.base import pass_options

    for name, cls in registered_passes().items():
        opts = [f"{key}={default!r}" for key, default in pass_options(cls).items()]
        kind = "lossless" if cls.tolerance is not None else "lossy"
        print(f"{name:16s} {kind:8s} {cls.summary}")
        if opts:
            print(f"{'':16s} {'':8s} options: {', '.join(opts)}")
    return 0


def _data(args, demo):
    """--data loaded, or the built-in demo's own training batches, or None."""
    from .data.batches import load_data

    if getattr(args, "data", None):
        _status(f"loading data from {args.data} ...")
        return load_data(args.data, demo.model, batch_size=args.batch_size)
    return list(demo.train_batches) or None


def _eval_fn(args, demo):
    from .data.batches import resolve_attr
    from .errors import InputError

    if not args.eval:
        return demo.evaluate
    fn = resolve_attr(args.eval, "--eval")
    if not callable(fn):
        raise InputError(f"--eval {args.eval}: {type(fn).__name__} is not callable; it must be metric(model) -> "
                         "float (higher is better)")
    return fn


def _none_or(value, cast):
    return None if value in (None, "none", "off") else cast(value)


def _reconstruct(args) -> bool | str:
    return {None: defaults.PRUNE_RECONSTRUCT, True: True, False: False}[args.reconstruct]


def _smoothquant(value: str):
    return value if value == "auto" else _none_or(value, float)


def _config(args):
    from .compress import CompressConfig

    return CompressConfig(
        prune=_none_or(args.prune, float), heads=_none_or(args.heads, float), importance=args.importance,
        reconstruct=_reconstruct(args), round_to=args.round_to, distill_steps=args.distill,
        quant=_quant(args), smoothquant=_smoothquant(args.smoothquant), onnx=not args.no_onnx,
        seed=args.seed, eval_fraction=args.eval_fraction, timing_rounds=args.timing_rounds, sparsity=args.sparsity,
        pattern=args.pattern, share_bits=args.share_bits, entropy=args.entropy,
        keep_profitable=not args.int8_everywhere)


def _quant(args):
    if args.quant is None:  # weight sharing replaces int8 storage: its codebooks are the quantization
        return None if args.share_bits else defaults.COMPRESS_QUANT
    return _none_or(args.quant, str)


def cmd_compress(args) -> int:
    from .compress import compress, print_summary

    config = _config(args)  # bad options fail before a large model loads
    demo = _load(args.model)
    data = _data(args, demo)
    if demo.distill:  # a built-in demo's tuned distillation (steps unless --distill says otherwise)
        config.distill_options = {k: v for k, v in demo.distill.items() if k != "steps"}
        if args.distill is None and data is not None:
            config.distill_steps = demo.distill.get("steps", 0)
    result = compress(demo.model, demo.args, data=data, eval_fn=_eval_fn(args, demo), example_kwargs=demo.kwargs,
                      out=Path(args.out), config=config, name=demo.name, description=demo.description)
    print_summary(result)
    return 0 if result.checks.get("reload_exact") else 1


def cmd_demo(args) -> int:
    return cmd_compress(args)


def cmd_prune(args) -> int:
    from .prune import prune, prune_report
    from .serialize import save

    demo = _load(args.model)
    data = _data(args, demo)
    importance = defaults.resolve_importance(args.importance, data is not None)
    reconstruct = defaults.resolve_reconstruct(_reconstruct(args), data is not None)
    ratio = float(args.ratio)
    _status(f"pruning {ratio:.0%} (importance {importance}, round_to {args.round_to}, refit "
            f"{'on' if reconstruct else 'off'}, {len(data) if data else 0} data batches) ...")
    ratios = {"heads": args.heads} if args.heads is not None else None
    gm = prune(demo.model, demo.args, ratio=ratio, importance=importance, scope=args.scope,
               round_to=args.round_to, ignore=tuple(args.ignore), example_kwargs=demo.kwargs, ratios=ratios,
               calib=[b.for_calibration() for b in data[: args.calib_batches]] if data else None,
               reconstruct=reconstruct)
    print(prune_report(gm).table(limit=None if args.all_rows else 40))
    if args.out:
        print(f"saved to {save(gm, args.out)}")
    return 0


def cmd_quantize(args) -> int:
    from .errors import InputError
    from .quant import last_report, quantize
    from .serialize import save

    demo = _load(args.model)
    data = _data(args, demo)
    if args.scheme == "w8a8" and data is None:
        raise InputError("--scheme w8a8 calibrates static activation ranges: give --data, or use w8a8-dynamic")
    gm = quantize(demo.model, demo.args, scheme=args.scheme,
                  calib=[b.for_calibration() for b in data[: args.calib_batches]] if data else None,
                  example_kwargs=demo.kwargs, observer=args.observer, skip=tuple(args.skip),
                  max_error=args.max_error, smoothquant=_smoothquant(args.smoothquant))
    report = last_report(gm)
    if report is not None:
        print(report.table())
    if args.out:
        print(f"saved to {save(gm, args.out)}")
    return 0


def cmd_distill(args) -> int:
    from .distill import distill
    from .errors import InputError
    from .serialize import save

    student, teacher = _load(args.model), _load(args.teacher)
    data = _data(args, student) or _data(args, teacher)
    if not data:
        raise InputError("distill needs training batches: give --data package.module:batches or a .npz/.safetensors "
                         "file")
    _status(f"distilling {student.description or student.name} from {teacher.description or teacher.name} for "
            f"{args.steps} steps on {len(data)} batches ...")
    gm = distill(student.model, teacher.model, [b.for_distill() for b in data], steps=args.steps, lr=args.lr,
                 temperature=args.temperature, alpha=args.alpha, output_loss=args.output_loss, seed=args.seed)
    history = getattr(gm, "distill_history", None)
    if history is not None and history.losses:
        print(f"loss {history.losses[0]:.4g} -> {history.losses[-1]:.4g} over {len(history.losses)} steps")
    if args.out:
        print(f"saved to {save(gm, args.out)}")
    return 0


def cmd_export(args) -> int:
    from .onnx_export import export_onnx

    demo = _load(args.model)
    print(f"wrote {export_onnx(demo.model, demo.args, args.onnx, example_kwargs=demo.kwargs)}")
    return 0


def bench_suites(root: Path) -> list[str]:
    """The runnable suites of a source checkout's bench/: every module there with a ``main(argv)``."""
    helpers = {"__init__", "harness", "prune_common", "shapes"}
    return sorted(p.stem for p in (root / "bench").glob("*.py")
                  if p.stem not in helpers and "\ndef main(" in p.read_text(encoding="utf-8"))


def cmd_bench(args) -> int:
    import importlib

    from .errors import InputError

    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "__init__.py").is_file():
        raise InputError("benchmarks ship with the source checkout (bench/ next to slimgraph/), not with an "
                         "installed package: run 'slimgraph bench' from a clone of the repository")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    suites = bench_suites(root)
    if args.suite not in suites:
        raise InputError(f"benchmark suite {args.suite!r} not found; choose from {', '.join(suites)}")
    module = importlib.import_module(f"bench.{args.suite}")
    rest = list(args.rest)
    asks_help = any(a in ("-h", "--help") for a in rest)
    if not asks_help and not any(a == "--out" or a.startswith("--out=") for a in rest):
        # committed results under bench/results are only ever replaced on purpose, with an explicit --out
        from bench.harness import scratch_dir

        scratch = scratch_dir(args.suite)
        scratch.mkdir(parents=True, exist_ok=True)
        _status(f"writing results to the scratch directory {scratch} (pass --out DIR to keep them elsewhere)")
        rest += ["--out", str(scratch)]
    return int(module.main(rest) or 0)


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

    DEFAULT_PIPELINE = defaults.LOSSLESS_PIPELINE

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

    def data_options(p, what: str):
        p.add_argument("--data", metavar="SPEC", help=f"{what}: package.module:batches (callable returning an "
                       "iterable of batches, or the iterable) or a .npz/.safetensors file of input arrays (first "
                       "dimension = samples; arrays named after forward()'s parameters, or arg0, arg1, ...)")
        p.add_argument("--batch-size", type=int, default=8, help="samples per batch when --data is a file "
                       "(default 8)")

    def prune_options(p, ratio_flag: str, ratio_default):
        p.add_argument(ratio_flag, default=ratio_default, help=f"fraction of channels/FFN neurons removed per group "
                       f"(default {ratio_default})")
        p.add_argument("--importance", default=defaults.PRUNE_IMPORTANCE, help="auto | l1 | l2 | act | bn-scale | "
                       "taylor | random (default auto: act, activation-aware, with --data; l2 without)")
        p.add_argument("--round-to", type=int, default=defaults.PRUNE_ROUND_TO, help="round kept widths up to a "
                       f"multiple (default {defaults.PRUNE_ROUND_TO})")
        p.add_argument("--reconstruct", dest="reconstruct", action="store_true", default=None, help="refit the "
                       "layers that lose inputs by least squares on the data (default: on with --data, off without)")
        p.add_argument("--no-reconstruct", dest="reconstruct", action="store_false", help="never refit")

    def compress_options(p):
        prune_options(p, "--prune", str(defaults.COMPRESS_PRUNE))
        p.add_argument("--heads", default=str(defaults.COMPRESS_HEADS), help="fraction of attention heads removed "
                       f"(default {defaults.COMPRESS_HEADS}; 'none' = same as --prune)")
        p.add_argument("--distill", type=int, default=None, metavar="STEPS", help="distillation steps after pruning "
                       "(needs --data; default: a built-in demo's tuned setting, 0 for other models)")
        p.add_argument("--quant", default=None, help="w8a8 | w8a8-dynamic | w8a16 | none "
                       f"(default {defaults.COMPRESS_QUANT}; w8a8 needs --data)")
        p.add_argument("--smoothquant", default=defaults.SMOOTHQUANT, help="SmoothQuant alpha, 'auto' (0.5 for "
                       "w8a8 schemes, off for w8a16) or 'none' (default auto)")
        p.add_argument("--no-onnx", action="store_true", help="do not export to ONNX")
        p.add_argument("--int8-everywhere", action="store_true", help="quantize every layer even where int8 is "
                       "slower than float on this device (default: each layer is timed, int8 kept where faster)")
        p.add_argument("--seed", type=int, default=defaults.SEED, help=f"random seed (default {defaults.SEED})")
        data_options(p, "input batches for calibration, importance, refit and distillation (1 in "
                     f"{round(1 / defaults.EVAL_FRACTION)} held out for evaluation)")
        p.add_argument("--eval", metavar="package.module:metric", help="your metric: metric(model) -> float, "
                       "higher is better (default: a demo's own metric; otherwise cosine fidelity to the original "
                       "on held-out batches)")
        p.add_argument("--eval-fraction", type=float, default=defaults.EVAL_FRACTION,
                       help=f"fraction of --data batches held out (default {defaults.EVAL_FRACTION})")
        p.add_argument("--timing-rounds", type=int, default=defaults.TIMING_ROUNDS,
                       help=f"interleaved latency rounds (default {defaults.TIMING_ROUNDS})")
        p.add_argument("--sparsity", type=float, default=None, help="after pruning, zero this fraction of the GEMM "
                       "weights (sg.sparsify; default off)")
        p.add_argument("--pattern", default=defaults.SPARSE_PATTERN, help="sparsity pattern: unstructured | N:M | "
                       f"BNxBK (default {defaults.SPARSE_PATTERN})")
        p.add_argument("--share-bits", type=int, default=None, help="k-means weight sharing with 2**BITS centroids "
                       "per weight (sg.share_weights; default off; implies --quant none unless --quant is given)")
        p.add_argument("--entropy", action="store_true", help="also write the final archive entropy coded "
                       "(sg.save(..., compress=True)) and report its size")

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
    prune_options(p, "--ratio", defaults.PRUNE_RATIO)
    p.add_argument("--heads", type=float, default=None, help="separate ratio for attention heads")
    p.add_argument("--scope", default=defaults.PRUNE_SCOPE, help="local | global")
    p.add_argument("--ignore", action="append", default=[], help="module (pattern) never to prune; repeatable")
    data_options(p, "calibration batches for act/taylor importance and the refit")
    p.add_argument("--calib-batches", type=int, default=defaults.CALIB_BATCHES, help="batches of --data used "
                   f"(default {defaults.CALIB_BATCHES})")
    p.add_argument("--all-rows", action="store_true", help="do not truncate the report")
    p.add_argument("--out", help="write the pruned model to this archive file")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("quantize", help="int8 quantization (w8a8, w8a8-dynamic, w8a16)",
                       description="Quantize MODEL, calibrating on --data (or a demo's own data), and print the "
                       "per-layer report.")
    p.add_argument("model", help=model_help)
    p.add_argument("--scheme", default=defaults.QUANT_SCHEME, help="w8a8 | w8a8-dynamic | w8a16 (default "
                   f"{defaults.QUANT_SCHEME}; w8a8 needs --data)")
    p.add_argument("--observer", default=defaults.QUANT_OBSERVER, help="minmax | percentile | mse")
    p.add_argument("--smoothquant", default=defaults.SMOOTHQUANT, help="SmoothQuant alpha, 'auto' or 'none' "
                   "(default auto: 0.5 for w8a8 schemes, off for w8a16)")
    p.add_argument("--skip", action="append", default=[], help="layer pattern kept in float; repeatable")
    p.add_argument("--max-error", type=float, default=None, help="relative output error budget")
    data_options(p, "calibration batches")
    p.add_argument("--calib-batches", type=int, default=defaults.CALIB_BATCHES, help="batches of --data used "
                   f"(default {defaults.CALIB_BATCHES})")
    p.add_argument("--out", help="write the quantized model to this archive file")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("distill", help="knowledge distillation of MODEL from --teacher on --data",
                       description="Train MODEL (e.g. a pruned archive) to match --teacher on --data batches.")
    p.add_argument("model", help=model_help)
    p.add_argument("--teacher", required=True, help="the teacher: " + model_help)
    data_options(p, "training batches (required; default: the model's own when it is a built-in demo)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature (default 2.0)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the KD term against a labelled task loss")
    p.add_argument("--output-loss", default="kl", help="kl | mse | cosine (default kl)")
    p.add_argument("--seed", type=int, default=defaults.SEED)
    p.add_argument("--out", help="write the distilled model to this archive file")
    p.set_defaults(func=cmd_distill)

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
    from .compress import quiet_torch_internals
    from .errors import SlimgraphError

    args = build_parser().parse_args(argv)
    try:
        with quiet_torch_internals():
            return int(args.func(args) or 0)
    except SlimgraphError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
