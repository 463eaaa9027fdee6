"""``share_weights()``: the one-call API around the ``share-weights`` pass, with centroid fine-tuning."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch.fx as fx
import torch.nn as nn

from ..distill import _split_batch, distill
from ..errors import InputError, PassError
from ..ir.capture import capture_or_copy, is_captured
from ..ir.info import graph_info
from ..numerics import compare_outputs, run_module
from ..passes.manager import PassManager
from .allocate import allocate_bits
from .report import ShareReport, last_report
from .share_pass import ShareWeights

EVAL_BATCHES = 4  # data batches, besides the example inputs, on which the output error is reported


def share_weights(
    model: nn.Module,
    example_inputs=None,
    bits: int = 5,
    data: Iterable | None = None,
    example_kwargs: dict | None = None,
    ignore: Iterable[str] | str = (),
    steps: int = 200,
    *,
    conv_bits: int = 8,
    embeddings: bool = True,
    per_layer: Mapping[str, float] | None = None,
    quantizer: str = "kmeans",
    mean_bits: float | None = None,
    output_loss: str = "kl",
    lr: float = 1e-3,
    temperature: float = 2.0,
    progress: bool = False,
) -> fx.GraphModule:
    """Replace each weight by a k-means codebook and integer codes; returns a new GraphModule.

    Args:
        model: an ``nn.Module`` (captured first) or a slimgraph GraphModule, e.g. from ``sg.sparsify`` (copied;
            the caller's model is untouched). Zeros stay exactly zero (code 0).
        bits: code width of linear and embedding weights (Deep Compression: 5 for fc); ``conv_bits`` of convs (8).
        data: batches (tuples, or dicts with ``args``/``kwargs``/``labels``) to fine-tune the centroids on by
            distillation from the input model (``sg.distill``; the codebooks are the only trainable tensors);
            None: no fine-tuning. The output error is reported on the example inputs and the first batches.
        ignore: fnmatch patterns of layers to keep as they are (layer name, weight path, node name, kind).
        steps, lr, temperature, output_loss: of the fine-tuning (``output_loss="mse"``/``"cosine"`` for
            embedding models). ``steps=0``: no fine-tuning; ``data`` then only feeds the sensitivity probes of
            ``mean_bits`` and the reported error.
        embeddings: also share embedding tables. ``per_layer={pattern: bits}`` overrides widths.
        quantizer: ``"kmeans"`` (the paper's codebooks, ``bits`` = code width) or ``"uniform"`` (entropy-coded
            uniform grid, ``bits`` = code entropy per weight, fractional allowed; smaller archives at equal error).
        mean_bits: with ``quantizer="uniform"``: give every layer its own rate from its measured sensitivity on
            ``data`` (or the example inputs), averaging ``mean_bits`` per weight
            (:func:`slimgraph.share.allocate_bits`; replaces ``bits``; cannot be combined with ``per_layer``).

    The report (bits, centroids used and reconstruction error per layer, the output error vs the input model
    before and after fine-tuning): ``slimgraph.share.last_report(result)``.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"share_weights() needs an nn.Module, got {type(model).__name__}")
    if not is_captured(model) and example_inputs is None:
        raise InputError("share_weights() needs example_inputs to capture the model")
    if isinstance(data, (str, bytes)) or (data is not None and not isinstance(data, Iterable)):
        raise InputError("data must be an iterable of batches, e.g. [(x1,), (x2,)]")
    batches = None if data is None else list(data)
    if batches is not None and not batches:
        raise InputError("data is empty: pass at least one batch, or data=None to skip fine-tuning")
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError(f"steps must be an integer >= 0 (0: no centroid fine-tuning), got {steps!r}")
    if mean_bits is not None and (quantizer != "uniform" or per_layer):
        raise InputError("mean_bits allocates per-layer rates for quantizer='uniform' and replaces per_layer: "
                         "pass quantizer='uniform' and no per_layer")
    spass = ShareWeights(bits=bits, conv_bits=conv_bits, embeddings=embeddings, ignore=ignore,
                         per_layer=dict(per_layer or {}), quantizer=quantizer)
    gm = capture_or_copy(model, example_inputs, example_kwargs)
    reference = copy.deepcopy(gm)  # the teacher and the yardstick: the pass rewrites gm
    allocation = None
    if mean_bits is not None:
        allocation = allocate_bits(gm, batches, mean_bits, embeddings=embeddings, ignore=ignore)
        spass = ShareWeights(bits=bits, conv_bits=conv_bits, embeddings=embeddings, ignore=ignore,
                             per_layer=allocation.bits, quantizer=quantizer)
    try:
        shared = PassManager([spass], check_numerics=True).run(gm).gm
    except PassError as exc:
        if isinstance(exc.__cause__, InputError):
            raise exc.__cause__ from None
        raise
    report = last_report(shared)
    report.allocation = allocation
    evaluation = _evaluation_batches(shared, batches)
    expected = [run_module(reference, args, kwargs) for args, kwargs in evaluation]
    _measure(report, shared, evaluation, expected, batches)
    if batches is None or not report.shared or steps == 0:
        return shared
    codebooks = [layer.codebook for layer in report.shared]
    tuned = distill(shared, reference, batches, steps=steps, lr=lr, temperature=temperature,
                    output_loss=output_loss, trainable=codebooks, progress=progress, weight_decay=0.0)
    tuned_report = last_report(tuned)  # distill deep-copies the graph and with it the report
    tuned_report.output_max_rel_before_finetune = report.output_max_rel
    tuned_report.output_cosine_before_finetune = report.output_cosine
    tuned_report.finetune_steps = steps
    losses = tuned.distill_history.losses
    tuned_report.finetune_loss = (losses[0], losses[-1])
    _measure(tuned_report, tuned, evaluation, expected, batches)
    return tuned


def _evaluation_batches(gm: fx.GraphModule, batches: list | None) -> list[tuple[tuple, dict]]:
    info = graph_info(gm)
    out = [(tuple(info.example_args), dict(info.example_kwargs))]
    for batch in (batches or [])[:EVAL_BATCHES]:
        args, kwargs, _ = _split_batch(batch)
        out.append((args, kwargs))
    return out


def _measure(report: ShareReport, gm: fx.GraphModule, evaluation, expected, batches) -> None:
    worst_rel, worst_cos = 0.0, 1.0
    for (args, kwargs), ref in zip(evaluation, expected):
        err = compare_outputs(run_module(gm, args, kwargs), ref)
        worst_rel, worst_cos = max(worst_rel, err.max_rel), min(worst_cos, err.cosine)
    report.output_max_rel, report.output_cosine = worst_rel, worst_cos
    extra = len(evaluation) - 1
    report.eval_data = "the example inputs" + (f" and {extra} data batch{'es' if extra > 1 else ''}" if extra else "")
