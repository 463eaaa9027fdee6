"""``quantize()``: the one-call API around the ``quant`` pass."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
import torch.fx as fx
import torch.nn as nn

from .. import defaults
from ..errors import InputError, PassError
from ..ir.calibration import Batch, named_inputs, normalize_batches, run_outputs
from ..ir.capture import capture_or_copy
from ..ir.info import graph_info
from ..numerics import compare_outputs
from ..passes.manager import PassManager
from .quant_pass import Quantize
from .report import last_report

log = logging.getLogger("slimgraph")

# Lossless clean-up first: BatchNorm folded into conv weights before they are quantized, bias + activation
# grouped so the int8 GEMM epilogue applies them.
PREPARE = defaults.LOSSLESS_PIPELINE


def quantize(
    model: nn.Module,
    example_inputs,
    scheme: str = defaults.QUANT_SCHEME,
    calib: Iterable | None = None,
    *,
    example_kwargs: dict | None = None,
    observer: str = defaults.QUANT_OBSERVER,
    percentile: float = defaults.QUANT_PERCENTILE,
    smoothquant: float | str | None = defaults.SMOOTHQUANT,
    skip: Iterable[str] = (),
    max_error: float | None = None,
    attention: bool = False,
    embeddings: bool = False,
    per_layer: Mapping[str, str] | None = None,
    residual_outputs: bool | None = None,
    progress: bool | None = None,
) -> fx.GraphModule:
    """Quantize ``model`` to int8; returns a new runnable GraphModule (the caller's model is untouched).

    Args:
        model: an ``nn.Module`` (captured first) or a GraphModule from slimgraph (captured, pruned, optimized:
            it is copied).
        example_inputs: tuple of positional inputs; ``example_kwargs`` the keyword inputs.
        scheme: ``"w8a8-dynamic"`` (default: per-token activation scales at run time, no calibration set
            needed), ``"w8a8"`` (static per-tensor activations from calibration, per-channel weights) or
            ``"w8a16"`` (weight-only). Defaults come from :mod:`slimgraph.defaults`.
        calib: iterable of input tuples (or ``(args, kwargs)`` pairs) to calibrate on; default: the example
            inputs. With 4 or more batches, one in 8 (at most 4) is held out of calibration. A progress bar
            shows on a terminal (``progress=True/False`` forces it).
        observer: ``"minmax"``, ``"percentile"`` (``percentile``) or ``"mse"`` for static activation ranges.
        smoothquant: SmoothQuant alpha (e.g. 0.5) to migrate activation outliers of LayerNorm-fed Linear
            layers into their weights; None disables it. "auto" (default): 0.5 for the schemes that quantize
            activations (it lifts all-MiniLM-L6-v2's w8a8-dynamic cosine from 0.9975 to 0.9989, see
            bench/results/quant-minilm.md), off for w8a16. Models without LayerNorm-fed Linears are unaffected.
        skip: fnmatch patterns of layers to keep in float, matched against the module path, the weight name,
            the node name, the op kind (``linear``, ``conv2d``, ``matmul``, ...) or the module type (``Conv2d``).
        max_error: relative output error budget on the calibration data; layers go back to float, most
            sensitive (lowest SQNR) first, until the error is under it.
        attention: also quantize matmul/bmm whose operands are both activations (per-token, at run time).
        embeddings: also store embedding tables as int8 (weight-only).
        per_layer: ``{pattern: scheme or "float"}`` overriding the scheme per layer (first match wins).
        residual_outputs: ``w8a8``: convs whose output feeds residual adds (and a stem read by one) also write
            int8, calibrated, so whole ResNets run as integer convs (ONNX Runtime's QLinearConv, oneDNN): one more
            rounding per residual branch (ResNet-18 cosine to fp32 0.99992 vs 0.99993, bench/results/cpu-speed.md).
            Off by default; None reads the ``quant_pass.int8_residual_outputs()`` context.

    The per-layer report: ``slimgraph.quant.last_report(result)``. Its headline is the output error on data
    the calibration did not fit: the example inputs and the held-out batches. A warning is logged (and kept
    in the report's notes) when that error is far above the calibration-set error, or when calibration inputs
    hold extreme outliers. Raises :class:`InputError` for an unknown
    scheme or observer, empty or non-finite calibration data (naming the node). A model with nothing to
    quantize is returned unchanged, with the reason in its report.
    """
    smoothquant = defaults.resolve_smoothquant(smoothquant, scheme)
    if not isinstance(model, nn.Module):
        raise InputError(f"quantize() needs an nn.Module, got {type(model).__name__}")
    gm = capture_or_copy(model, example_inputs, example_kwargs)
    batches = _calibration(calib)
    fit, held_out = _hold_out(batches)
    qpass = Quantize(scheme=scheme, observer=observer, percentile=percentile, smoothquant=smoothquant,
                     skip=tuple(skip) if not isinstance(skip, str) else (skip,), max_error=max_error,
                     attention=attention, embeddings=embeddings, per_layer=dict(per_layer or {}),
                     residual_outputs=residual_outputs, progress=progress).with_data(calib=fit)
    info = graph_info(gm)
    evaluation = [Batch(tuple(info.example_args), dict(info.example_kwargs))]
    evaluation += normalize_batches(held_out, gm) if held_out else []
    reference = run_outputs(gm, evaluation)  # before the passes: they rewrite gm
    try:
        gm = PassManager([*PREPARE.split(","), qpass], check_numerics=True).run(gm).gm
    except PassError as exc:
        if isinstance(exc.__cause__, InputError):  # bad calibration data: the user's error, not the pass's
            raise exc.__cause__ from None
        raise
    report = last_report(gm)
    if report is not None:
        _report_evaluation(report, run_outputs(gm, evaluation), reference, len(held_out), calib is None)
        for warning in _outlier_warnings(normalize_batches(fit, gm)):
            report.notes.append(warning)
            log.warning("quantize: %s", warning)
        if not report.quantized:
            log.warning("quantize: %s", "; ".join(report.notes) or "no layer was quantized")
    return gm


# Held-out calibration batches: with HOLD_OUT_FROM or more batches, one in HOLD_OUT_EVERY (at most HOLD_OUT_MAX)
# is kept out of calibration and used only to measure the error the user will see on data it was not fit to.
HOLD_OUT_FROM, HOLD_OUT_EVERY, HOLD_OUT_MAX = 4, 8, 4
# Warn when the error on the example inputs is this many times the calibration-set error (and not tiny).
EVAL_GAP_FACTOR, EVAL_GAP_FLOOR = 3.0, 0.02
# Calibration inputs whose largest magnitude is this many times their median nonzero magnitude are called
# outliers (a Gaussian's ratio is about 8 at a million samples; heavy-tailed real inputs stay far below 1000).
OUTLIER_RATIO = 1000.0


def _hold_out(batches: tuple | None) -> tuple[tuple | None, tuple]:
    if batches is None:
        return None, ()
    n = len(batches)
    if n < HOLD_OUT_FROM:
        return batches, ()
    k = min(HOLD_OUT_MAX, max(1, n // HOLD_OUT_EVERY))
    return batches[: n - k], batches[n - k:]


def _report_evaluation(report, outputs, reference, held_out: int, calibrated_on_examples: bool) -> None:
    error = compare_outputs(outputs, reference)
    report.eval_rel_error, report.eval_cosine = error.rel_l2, error.cosine
    where = "the example inputs"
    if held_out:
        where += f" and {held_out} held-out calibration batch{'es' if held_out > 1 else ''}"
    if calibrated_on_examples:
        where += " (also the calibration data)"
    report.eval_data = where
    calib_error = report.output_rel_error
    if (calib_error is not None and not calibrated_on_examples and report.eval_rel_error > EVAL_GAP_FLOOR
            and report.eval_rel_error > EVAL_GAP_FACTOR * calib_error):
        warning = (f"the output error on {where} is {report.eval_rel_error:.3g} (cosine {report.eval_cosine:.4f}), "
                   f"{report.eval_rel_error / max(calib_error, 1e-12):.0f}x the error on the calibration data "
                   f"({calib_error:.3g}): the calibration data does not represent these inputs; calibrate on "
                   "batches like the ones the model will see, or use scheme='w8a8-dynamic'")
        report.notes.append(warning)
        log.warning("quantize: %s", warning)


def _outlier_warnings(batches: list[Batch]) -> list[str]:
    """Calibration inputs with extreme values: a static scale fit to them crushes every ordinary value."""
    warnings = []
    for b, batch in enumerate(batches):
        for where, value in named_inputs(batch):
            if not (isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() >= 16):
                continue
            magnitude = value.detach().abs().flatten().float()
            magnitude = magnitude[magnitude > 0]
            if magnitude.numel() == 0:
                continue
            typical = float(magnitude.median())
            peak = float(magnitude.max())
            if peak > OUTLIER_RATIO * typical:
                warnings.append(f"calibration batch {b}, {where}: max |x| = {peak:.3g} is {peak / typical:.0f}x its "
                                f"median ({typical:.3g}); static activation scales fit to such outliers lose the "
                                "precision of ordinary values (drop the outliers, or use observer='percentile')")
    return warnings


def _calibration(calib) -> tuple | None:
    """The user's calibration batches as a tuple; None means the example inputs recorded at capture."""
    if calib is None:
        return None
    if isinstance(calib, (str, bytes, torch.Tensor)):
        raise InputError("calib must be an iterable of input tuples, e.g. [(x1,), (x2,)]")
    return tuple(calib)
