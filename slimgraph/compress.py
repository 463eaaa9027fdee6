"""The main job: compress the user's model on the user's data, judged by the user's metric, and report it.

    res = sg.compress(model, example_inputs, data=batches, eval_fn=metric, out="out/")
    slimgraph compress mymod:factory --data mymod:batches --eval mymod:metric --out out/
    slimgraph demo            # the same on the built-in default (all-MiniLM-L6-v2), into ./slimgraph-demo

Stages, each measured (parameters, bytes, MACs, the metric, time taken; latency of all stages in one
interleaved timing run at the end, see :mod:`slimgraph.timing`):

1. ``original``: the model as given (captured once for its MACs);
2. ``pruned``: structured pruning (channels / FFN neurons at ``prune``, attention heads at ``heads``), the
   layers that lose inputs refit by least squares on the training batches (``reconstruct``);
3. ``distilled``: knowledge distillation from the original on the training batches (``distill_steps``);
4. ``quantized``: fold BN, fuse epilogues, int8 rewrite (``quant`` scheme, calibrated on training batches);
5. verified (IR invariants, output shapes, outputs vs the original), saved without pickle, exported to ONNX.

``data`` is split once, deterministically (:func:`slimgraph.data.batches.split_batches`): held-out batches
measure fidelity to the original and are never calibrated, scored, refit or trained on. ``eval_fn(model) ->
float`` (higher is better) is the user's metric, evaluated on every stage; without it the metric is the mean
cosine similarity of each held-out sample's outputs to the original's. A step that cannot run as asked stops
with an :class:`InputError` before any work, or runs a documented fallback that is printed and reported
(:attr:`CompressResult.fallbacks`).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn

from . import defaults
from .data.batches import Batch, DataSplit, as_batches, split_batches
from .errors import ArchiveError, InputError
from .timing import Ratio, Timing, TimingRun

FIDELITY = "heldout_cosine"  # the metric's name when the user gives no eval_fn


@dataclass
class CompressConfig:
    """Every setting of the main job; the report lists them with the values they resolved to."""

    prune: float | None = defaults.COMPRESS_PRUNE  # fraction of channels / FFN neurons removed; None = no pruning
    heads: float | None = defaults.COMPRESS_HEADS  # fraction of attention heads removed; None = same as ``prune``
    importance: str = defaults.PRUNE_IMPORTANCE  # "auto": act with data, l2 without (slimgraph.defaults)
    reconstruct: bool | str = defaults.PRUNE_RECONSTRUCT  # "auto": on with data
    round_to: int = defaults.PRUNE_ROUND_TO
    distill_steps: int | None = defaults.COMPRESS_DISTILL_STEPS  # None: the built-in demo's setting, else 0
    distill_options: dict = field(default_factory=dict)  # sg.distill keywords (lr, output_loss, temperature, ...)
    quant: str | None = defaults.COMPRESS_QUANT  # None = stay in float
    smoothquant: float | str | None = defaults.SMOOTHQUANT
    onnx: bool = defaults.COMPRESS_ONNX
    seed: int = defaults.SEED
    eval_fraction: float = defaults.EVAL_FRACTION
    calib_batches: int = defaults.CALIB_BATCHES
    timing_rounds: int = defaults.TIMING_ROUNDS
    sparsity: float | None = None  # fraction of GEMM weights zeroed after pruning (sg.sparsify); None = off
    pattern: str = defaults.SPARSE_PATTERN
    share_bits: int | None = None  # k-means weight sharing, code width (sg.share_weights); None = off
    entropy: bool = False  # also write the final archive entropy coded (sg.save(..., compress=True))
    keep_profitable: bool = defaults.COMPRESS_KEEP_PROFITABLE  # int8 per layer only where measured faster

    def __post_init__(self):
        if self.prune is not None and not 0.0 <= self.prune < 1.0:
            raise InputError(f"prune must be in [0, 1) (fraction of units removed per group), got {self.prune}")
        if self.heads is not None and not 0.0 <= self.heads < 1.0:
            raise InputError(f"heads must be in [0, 1) (fraction of attention heads removed), got {self.heads}")
        if self.quant not in (None, *defaults.QUANT_SCHEMES):
            raise InputError(f"quant must be one of {', '.join(defaults.QUANT_SCHEMES)} or None, got {self.quant!r}")
        if self.distill_steps is not None and self.distill_steps < 0:
            raise InputError(f"distill_steps must be >= 0, got {self.distill_steps}")
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise InputError(f"sparsity must be in (0, 1) (fraction of GEMM weights zeroed), got {self.sparsity}")
        if self.share_bits is not None and not 1 <= self.share_bits <= 8:
            raise InputError(f"share_bits must be 1..8 (codebook of 2**bits centroids), got {self.share_bits}")
        if self.share_bits and self.quant:
            raise InputError(f"share_bits={self.share_bits} and quant={self.quant!r}: int8 quantization would "
                             "replace the shared codebooks; choose one (quant=None / --quant none to share)")
        if self.calib_batches < 1 or self.timing_rounds < 1:
            raise InputError("calib_batches and timing_rounds must be >= 1")


@dataclass
class Stage:
    name: str
    params: int
    bytes: int
    macs: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""
    disk_bytes: int | None = None  # the stage's archive (sg.save) on disk
    latency: Timing | None = None
    vs_original: Ratio | None = None
    vs_previous: Ratio | None = None
    module: nn.Module | None = field(default=None, repr=False)

    @property
    def latency_ms(self) -> float:
        return self.latency.median_ms if self.latency else math.nan


@dataclass
class CompressResult:
    model: str
    description: str
    config: CompressConfig
    stages: list[Stage]
    final: fx.GraphModule
    out_dir: Path | None
    files: dict[str, str] = field(default_factory=dict)
    checks: dict[str, object] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)  # every effective setting, resolved
    metric: str = FIDELITY  # the headline metric's name
    metric_source: str = ""  # what the headline metric is, in words
    data: str = ""  # how the data was split
    fallbacks: list[str] = field(default_factory=list)  # steps that ran differently from what was asked, and why
    not_pruned: list[tuple[str, str, str]] = field(default_factory=list)  # (group, status, reason)
    timing: TimingRun | None = None
    original: fx.GraphModule | None = field(default=None, repr=False)  # the captured original
    coded_bytes: int | None = None  # the final archive entropy coded (entropy=True)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


@contextlib.contextmanager
def quiet_torch_internals():
    """Hide torch's own pytree deprecation, raised from inside copy.deepcopy of its tree specs: not the user's
    business, and a stray line in every log of the main job and the CLI."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        yield


def say(msg: str) -> None:
    """Line-based progress on stderr: one line per step, readable in a terminal and in a CI log alike."""
    print(f"[slimgraph] {msg}", file=sys.stderr, flush=True)


def compress(
    model: nn.Module,
    example_inputs: tuple | None = None,
    *,
    data: Iterable | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    prune: float | None = defaults.COMPRESS_PRUNE,
    heads: float | None = defaults.COMPRESS_HEADS,
    quant: str | None = defaults.COMPRESS_QUANT,
    distill_steps: int | None = defaults.COMPRESS_DISTILL_STEPS,
    out: str | Path | None = None,
    example_kwargs: dict | None = None,
    config: CompressConfig | None = None,
    name: str | None = None,
    description: str = "",
    **options,
) -> CompressResult:
    """Prune, distill, quantize, verify and export ``model``; every stage measured; returns a CompressResult.

    Args:
        example_inputs: a tuple of positional inputs (default: the first batch of ``data``).
        data: an iterable of batches (tensors, tuples, ``(args, kwargs)`` pairs or sg.distill dicts), split into
            training and held-out batches (``eval_fraction``, default 1/4).
        eval_fn: ``eval_fn(model) -> float``, higher is better (or a dict of named floats); evaluated on the
            original and on every stage.
        prune, heads, quant, distill_steps: see :class:`CompressConfig`; ``options`` are its other fields
            (``importance``, ``reconstruct``, ``round_to``, ``distill_options``, ``smoothquant``, ``onnx``,
            ``seed``, ``eval_fraction``, ``calib_batches``, ``timing_rounds``).
        out: directory for report.md/json, plots, the saved model and the ONNX file (None: nothing written).
        config: a complete CompressConfig instead of the keywords.

    The caller's model is never modified.
    """
    if config is None:
        unknown = set(options) - set(CompressConfig.__dataclass_fields__)
        if unknown:
            raise InputError(f"compress() got unknown option(s) {sorted(unknown)}; known: "
                             f"{sorted(CompressConfig.__dataclass_fields__)}")
        config = CompressConfig(prune=prune, heads=heads, quant=quant, distill_steps=distill_steps, **options)
    elif options:
        raise InputError("compress(): pass either config= or keyword options, not both")
    if not isinstance(model, nn.Module):
        raise InputError(f"compress() needs an nn.Module, got {type(model).__name__}")
    if eval_fn is not None and not callable(eval_fn):
        raise InputError(f"eval_fn must be callable (model -> float), got {type(eval_fn).__name__}")
    batches = as_batches(data) if data is not None else None
    if example_inputs is None:
        if not batches:
            raise InputError("compress() needs example_inputs, or data to take the first batch from")
        example_inputs, example_kwargs = batches[0].args, {**batches[0].kwargs, **(example_kwargs or {})}
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    with quiet_torch_internals():
        return _run(model, args, dict(example_kwargs or {}), batches, eval_fn, config,
                    Path(out) if out is not None else None, name or type(model).__name__,
                    description or f"{type(model).__name__} ({sum(p.numel() for p in model.parameters())} "
                    "parameters)")


def _run(model: nn.Module, args: tuple, kwargs: dict, batches: list[Batch] | None, eval_fn, config: CompressConfig,
         out: Path | None, name: str, description: str) -> CompressResult:
    from .ir.capture import capture

    wall = time.perf_counter()
    torch.manual_seed(config.seed)
    split = split_batches(batches, config.eval_fraction) if batches is not None else None
    fallbacks: list[str] = []
    settings = _resolve(config, split, fallbacks)  # every refusal happens here, before any work
    if split is not None:
        say(f"data: {split.describe()}")

    start = time.perf_counter()
    say("capturing the original model ...")
    original_graph = capture(model, args, kwargs)
    calib = _calibration(settings, split, original_graph, args, fallbacks, asked=config.reconstruct is True)
    for line in fallbacks:
        say(f"fallback: {line}")
    evaluator = _Evaluator(eval_fn, original_graph, split, args, kwargs)
    result = CompressResult(name, description, config, [], original_graph, out, settings=settings,
                            data=split.describe() if split else "no data given: nothing held out", fallbacks=fallbacks,
                            original=original_graph)
    say("evaluating the original ...")
    result.stages.append(_stage("original", model, original_graph, evaluator, time.perf_counter() - start))
    result.metric, result.metric_source = evaluator.headline, evaluator.source  # known once eval_fn has run
    current: fx.GraphModule = original_graph

    if settings["prune"]:
        current = _prune_stage(result, current, args, kwargs, calib, evaluator)
        if settings["distill_steps"]:
            from .distill import distill

            steps = settings["distill_steps"]
            say(f"distilling from the original for {steps} steps on {len(split.train)} training batches ...")
            start = time.perf_counter()
            current = distill(current, model, [b.for_distill() for b in split.train], steps=steps, seed=config.seed,
                              **config.distill_options)
            result.stages.append(_stage("distilled", current, current, evaluator, time.perf_counter() - start,
                                        f"{steps} steps on {len(split.train)} training batches"))

    if settings["sparsity"]:
        from .compress_stages import sparse_stage

        current = sparse_stage(result, current, args, kwargs, calib, evaluator, _stage)
    if settings["share_bits"]:
        from .compress_stages import share_stage

        current = share_stage(result, current, args, kwargs, calib, evaluator, _stage)

    if settings["quant"]:
        current = _quant_stage(result, current, args, kwargs, calib, evaluator)
    elif not (settings["prune"] or settings["sparsity"] or settings["share_bits"]):
        from .passes.manager import PassManager

        current = PassManager(defaults.LOSSLESS_PIPELINE, check_numerics=True).run(current).gm

    result.final = current
    _time_stages(result, args, kwargs, config.timing_rounds)
    _verify_and_save(result, model, args, kwargs)
    from .compress_stages import disk_sizes

    say("measuring the archives on disk ...")
    disk_sizes(result)
    result.checks["wall_seconds"] = round(time.perf_counter() - wall, 1)
    if out is not None:
        from .compress_report import write_report

        write_report(result, original_graph)
    return result


def _resolve(config: CompressConfig, split: DataSplit | None, fallbacks: list[str]) -> dict[str, object]:
    """The effective value of every setting; raises before any work for a step that cannot run as asked."""
    has_data = split is not None
    prune = config.prune or None
    heads = config.heads if config.heads is not None else prune
    importance = defaults.resolve_importance(config.importance, has_data)
    reconstruct = defaults.resolve_reconstruct(config.reconstruct, has_data) and bool(prune)
    if config.reconstruct is True and not has_data:
        raise InputError("reconstruct=True refits the layers that lose inputs by least squares on calibration "
                         "data, and no data was given: pass data= (--data) or reconstruct=False")
    if prune and importance in ("act", "taylor") and not has_data:
        fallbacks.append(f"importance {importance!r} scored on the example inputs only (no data given)")
    steps = config.distill_steps or 0
    if steps and not has_data:
        raise InputError(f"distill_steps={steps} needs training batches and no data was given: pass data= "
                         "(--data) or distill_steps=0")
    if steps and not prune:
        raise InputError(f"distill_steps={steps}: distillation recovers what pruning cost, and pruning is off; "
                         "set prune or distill_steps=0")
    if config.entropy:
        import inspect

        from .serialize import save

        if "compress" not in inspect.signature(save).parameters:
            raise InputError("entropy=True writes the archive with sg.save(..., compress=True), which this "
                             "installation's slimgraph.serialize does not offer; update slimgraph or drop --entropy")
    if config.share_bits and not has_data:
        fallbacks.append("weight-sharing centroids not fine-tuned: no data given (k-means codebooks as fitted)")
    if config.quant == "w8a8" and not has_data:
        raise InputError("quant='w8a8' calibrates static activation ranges and no data was given: pass data= "
                         "(--data) or use 'w8a8-dynamic' (per-token scales at run time, no calibration)")
    return {
        "prune": prune, "heads": heads if prune else None, "importance": importance if prune else None,
        "round_to": config.round_to, "reconstruct": reconstruct, "distill_steps": steps,
        "distill_options": dict(config.distill_options), "quant": config.quant,
        "smoothquant": defaults.resolve_smoothquant(config.smoothquant, config.quant) if config.quant else None,
        "onnx": config.onnx, "seed": config.seed, "eval_fraction": config.eval_fraction if has_data else None,
        "calib_batches": config.calib_batches if has_data else None, "timing_rounds": config.timing_rounds,
        "sparsity": config.sparsity, "pattern": config.pattern if config.sparsity else None,
        "share_bits": config.share_bits, "entropy": config.entropy,
        "keep_profitable": config.keep_profitable if config.quant else None,
    }


def _calibration(settings: dict, split: DataSplit | None, graph: fx.GraphModule, args: tuple,
                 fallbacks: list[str], *, asked: bool) -> list[Batch]:
    """The training batches used for calibration, importance and the refit: ``calib_batches`` of them, or as
    many as the refit needs rows for (each refit layer needs as many rows as it keeps inputs, plus its bias)."""
    if split is None:
        return []
    count = min(settings["calib_batches"], len(split.train))
    if settings["reconstruct"]:
        needs = _refit_needs(graph, args, min(settings["prune"], settings["heads"]), settings["round_to"])
        if needs:
            layer, need, per_sample = max(needs, key=lambda n: n[1] / n[2])
            have = 0.0
            for count, batch in enumerate(split.train, start=1):
                have += batch.samples() * per_sample
                if have >= need and count >= min(settings["calib_batches"], len(split.train)):
                    break
            if have < need:
                msg = (f"the least-squares refit needs about {need} calibration rows at {layer} (kept inputs + "
                       f"bias) and the {len(split.train)} training batches give {have:.0f}")
                if asked:
                    raise InputError(f"{msg}: give more data or reconstruct=False")
                settings["reconstruct"] = False
                fallbacks.append(f"{msg}; pruned without the refit (surviving weights kept as they are)")
    settings["calib_batches"] = count
    return split.train[:count]


def _refit_needs(graph: fx.GraphModule, args: tuple, ratio: float, round_to: int) -> list[tuple[str, int, float]]:
    """(layer, rows needed, rows per input sample) for every linear layer the refit may touch; an estimate from
    the captured shapes, assuming the layer keeps the most inputs pruning at ``ratio`` can leave it."""
    from .ir.graph_utils import op_name
    from .ir.info import node_info

    first = next((a for a in args if isinstance(a, torch.Tensor) and a.dim()), None)
    samples = int(first.shape[0]) if first is not None else 1
    needs = []
    for node in graph.graph.nodes:
        if node.op != "call_function" or op_name(node.target) != "aten.linear":
            continue
        source = node.args[0]
        info = node_info(source) if isinstance(source, fx.Node) else None
        if source.op == "placeholder" or info is None or info.spec is None or not info.spec.shape:
            continue  # a model input is never pruned: its consumer has nothing to refit
        shape = [int(d) for d in info.spec.shape]
        k = shape[-1]
        kept = min(k, -(-(k - math.floor(k * ratio)) // round_to) * round_to)
        bias = len(node.args) > 2 and node.args[2] is not None
        needs.append((node_info(node).module or node.name, kept + int(bias), math.prod(shape[:-1]) / samples))
    return needs


class _Evaluator:
    """The metrics of one stage: the user's ``eval_fn`` when given, and always fidelity to the original on the
    held-out batches (or, without data, on the example inputs)."""

    def __init__(self, eval_fn, original: fx.GraphModule, split: DataSplit | None, args: tuple, kwargs: dict):
        self.eval_fn = eval_fn
        held_out = split.eval[: defaults.FIDELITY_BATCHES] if split is not None else []
        self.batches = [(b.args, b.kwargs) for b in held_out] if split is not None else [(args, kwargs)]
        self.reference = [_flat_outputs(original, a, k) for a, k in self.batches]
        where = (f"the first {len(held_out)} held-out batches ({sum(b.samples() for b in held_out)} samples)"
                 if split is not None else "the example inputs (no data given)")
        self.fidelity = (f"{FIDELITY}: mean over samples of the cosine similarity between the stage's outputs and "
                         f"the original's on {where}; {FIDELITY}_min: the worst sample")
        name = getattr(eval_fn, "__name__", "metric") if eval_fn is not None else FIDELITY
        self.user_name = "metric" if name.startswith("<") else name
        self.headline = self.user_name if eval_fn is not None else FIDELITY
        # an eval_fn may say what it measures (the built-in demos do): the report quotes it
        self.what = getattr(eval_fn, "description", None) or "the user's eval_fn, evaluated on each stage"
        self.source = f"{self.headline}: {self.what} (higher is better)" if eval_fn is not None else self.fidelity

    def __call__(self, stage: str, module: nn.Module) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.eval_fn is not None:
            metrics.update(self._user(stage, module))
        cos = torch.cat([_per_sample_cosine(_flat_outputs(module, a, k), ref)
                         for (a, k), ref in zip(self.batches, self.reference)])
        metrics[FIDELITY] = cos.mean().item()
        metrics[f"{FIDELITY}_min"] = cos.min().item()
        return metrics

    def _user(self, stage: str, module: nn.Module) -> dict[str, float]:
        try:
            value = self.eval_fn(module)
        except Exception as exc:  # noqa: BLE001 - the user's code: name the stage and what it raised
            raise InputError(f"eval_fn raised on the {stage} model: {type(exc).__name__}: {exc}") from exc
        if isinstance(value, dict):
            if not value:
                raise InputError(f"eval_fn returned an empty dict on the {stage} model")
            values = value
            if self.headline == self.user_name:  # a dict's first entry is the headline
                self.headline = str(next(iter(value)))
                self.source = f"{self.headline}: {self.what} (higher is better)"
        elif isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
            values = {self.user_name: value}
        else:
            raise InputError(f"eval_fn must return a float (higher is better) or a dict of floats; on the {stage} "
                             f"model it returned a {type(value).__name__}")
        return {str(k): float(v) for k, v in values.items()}


def _flat_outputs(module, args: tuple, kwargs: dict) -> torch.Tensor:
    """The floating outputs of one batch as [samples, features] (one row when outputs have no common batch dim)."""
    import torch.utils._pytree as pytree

    with torch.no_grad():
        out = module(*args, **kwargs)
    leaves = [t.detach().double() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)
              and t.is_floating_point()]
    if not leaves:
        raise InputError(f"{type(module).__name__} returns no floating-point tensor to compare")
    n = leaves[0].shape[0] if leaves[0].dim() else 1
    if all(t.dim() and t.shape[0] == n for t in leaves):
        return torch.cat([t.reshape(n, -1) for t in leaves], dim=1)
    return torch.cat([t.reshape(1, -1) for t in leaves], dim=1)


def _per_sample_cosine(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, ref, dim=1, eps=1e-30)


def _stage(name: str, module: nn.Module, graph: fx.GraphModule, evaluator: _Evaluator, seconds: float,
           note: str = "") -> Stage:
    from .ir.capture import _eval_mode
    from .report import totals

    t = totals(graph)
    with _eval_mode(module):
        metrics = evaluator(name, module)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    say(f"{name}: {t.params} parameters, {t.macs} MACs; {shown}; {seconds:.1f} s")
    return Stage(name, t.params, t.bytes, t.macs, metrics, seconds, note, module=module)


def _prune_stage(result: CompressResult, graph: fx.GraphModule, args, kwargs, calib, evaluator) -> fx.GraphModule:
    from .prune import prune, prune_report

    s = result.settings
    say(f"pruning {s['prune']:.0%} of channels/neurons and {s['heads']:.0%} of attention heads if any "
        f"(importance {s['importance']}, round_to {s['round_to']}, refit {'on' if s['reconstruct'] else 'off'}) ...")
    start = time.perf_counter()
    options = dict(ratio=s["prune"], importance=s["importance"], round_to=s["round_to"], example_kwargs=kwargs,
                   seed=s["seed"], calib=[b.for_calibration() for b in calib] or None, reconstruct=s["reconstruct"])
    try:
        pruned = prune(graph, args, ratios={"heads": s["heads"]}, **options)
    except InputError as exc:
        if "ratios key 'heads' matches no group" not in str(exc):
            raise
        # the heads ratio is a default of the main job, and this model has no attention heads to apply it to
        s["heads"] = "n/a (no attention-head groups in this model)"
        pruned = prune(graph, args, **options)
    report = prune_report(pruned)
    note = f"{len(report.pruned)} of {len(report.groups)} groups pruned"
    if report.reconstructed:
        note += f", {len(report.reconstructed)} layers refit by least squares"
    result.not_pruned = [(g.name, g.status, g.reason) for g in report.groups if g.status != "pruned"]
    if not report.pruned:
        why = "; ".join(sorted({r for _, _, r in result.not_pruned if r})[:3]) or "no prunable group"
        line = f"pruning was asked for and no group could be pruned ({why}): the pruned stage equals the original"
        result.fallbacks.append(line)
        say(f"fallback: {line}")
    for line in report.notes:
        if "skipped" in line:  # a refit the data could not support: the layer kept its sliced weights
            result.fallbacks.append(line)
            say(f"fallback: {line}")
    result.stages.append(_stage("pruned", pruned, pruned, evaluator, time.perf_counter() - start, note))
    return pruned


def _quant_stage(result: CompressResult, graph: fx.GraphModule, args, kwargs, calib, evaluator) -> fx.GraphModule:
    from .quant import last_report, quantize

    s = result.settings
    calib_data = [b.for_calibration() for b in calib] or None
    say(f"quantizing ({s['quant']}, SmoothQuant {s['smoothquant']}"
        + (", each layer timed: int8 kept only where it is faster on this device" if s["keep_profitable"] else "")
        + ") ...")
    start = time.perf_counter()
    if s["keep_profitable"]:
        from .layer_choice import keep_profitable

        chosen = keep_profitable(graph, args, s["quant"], example_kwargs=kwargs, calib=calib_data,
                                 smoothquant=s["smoothquant"])
        quantized = chosen.model
        if chosen.kept_float:
            result.settings["layers_kept_float"] = chosen.kept_float
        if not chosen.used_int8:
            line = (f"int8 ({s['quant']}) was not faster than float on this device for the whole model "
                    f"({chosen.int8_ms:.2f} vs {chosen.float_ms:.2f} ms): the quantized stage is the float graph")
            result.fallbacks.append(line)
            say(f"fallback: {line}")
    else:
        quantized = quantize(graph, args, scheme=s["quant"], calib=calib_data, example_kwargs=kwargs,
                             smoothquant=s["smoothquant"])
    report = last_report(quantized)
    note = f"{len(report.quantized)} layers int8" if report is not None else "float (int8 not faster here)"
    if report is not None and not report.quantized:
        line = f"no layer could be quantized to {s['quant']} ({'; '.join(report.notes) or 'nothing to quantize'})"
        result.fallbacks.append(line)
        say(f"fallback: {line}")
    if s["keep_profitable"] and report is not None:
        note += f", {len(result.settings.get('layers_kept_float', []))} kept in float (slower in int8 here)"
    result.stages.append(_stage("quantized", quantized, quantized, evaluator, time.perf_counter() - start, note))
    return quantized


def _time_stages(result: CompressResult, args: tuple, kwargs: dict, rounds: int) -> None:
    """All stages in one interleaved run, so their ratios share the same machine conditions."""
    from contextlib import ExitStack

    from .ir.capture import _eval_mode
    from .timing import speedup, time_models

    say(f"timing {len(result.stages)} stages interleaved ({rounds} rounds) ...")
    with ExitStack() as stack:
        for s in result.stages:
            stack.enter_context(_eval_mode(s.module))
        run = time_models({s.name: s.module for s in result.stages}, args, kwargs, rounds=rounds,
                          min_rounds=min(rounds, defaults.TIMING_MIN_ROUNDS))
    result.timing = run
    for i, s in enumerate(result.stages):
        s.latency = run[s.name]
        if i:
            s.vs_original = speedup(run[result.stages[0].name], s.latency)
            s.vs_previous = speedup(run[result.stages[i - 1].name], s.latency)
    say(run.conditions())


def _verify_and_save(result: CompressResult, model: nn.Module, args: tuple, kwargs: dict) -> None:
    from .ir.verify import verify
    from .numerics import compare_outputs, run_module

    say("verifying" + (" and exporting ..." if result.out_dir else " ..."))
    verify(result.final)
    final_out = run_module(result.final, args, kwargs)
    fidelity = compare_outputs(final_out, run_module(result.stages[0].module, args, kwargs))  # raises on shapes
    result.checks.update({"ir_verified": True, "output_shapes_unchanged": True,
                          "final_vs_original (example inputs)": str(fidelity)})
    if result.out_dir is None:
        return
    from .serialize import load, save

    result.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result.files["model"] = str(save(result.final, result.out_dir / "model.slimgraph"))
    except ArchiveError as exc:  # the report, plots and ONNX are still worth writing: say why there is no archive
        line = f"the compressed model could not be saved ({exc}); report and ONNX written without it"
        result.fallbacks.append(line)
        result.checks["reload_exact"] = False
        say(f"fallback: {line}")
    else:
        reload = run_module(load(result.files["model"]), args, kwargs)
        result.checks["reload_exact"] = compare_outputs(reload, final_out).exact
    if result.settings["onnx"]:
        try:
            from .onnx_export import export_onnx

            result.files["onnx"] = str(export_onnx(result.final, args, result.out_dir / "model.onnx",
                                                   example_kwargs=kwargs))
        except Exception as exc:  # noqa: BLE001 - reported as a failed step; the saved model is still there
            result.fallbacks.append(f"ONNX export failed ({type(exc).__name__}: {exc}); the saved model is complete")
            say(f"fallback: ONNX export failed: {exc}")


def print_summary(result: CompressResult) -> None:
    from .compress_report import summary_text

    print(summary_text(result))


__all__ = ["CompressConfig", "CompressResult", "Stage", "compress", "print_summary"]
