"""``quantize()``: the one-call API around the ``quant`` pass."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping

import torch.fx as fx
import torch.nn as nn

from ..errors import InputError, PassError
from ..ir.capture import capture
from ..ir.info import GRAPH_KEY
from ..passes.manager import PassManager
from .quant_pass import Quantize
from .report import last_report

log = logging.getLogger("slimgraph")

# Lossless clean-up first: BatchNorm folded into conv weights before they are quantized, bias + activation
# grouped so the int8 GEMM epilogue applies them.
PREPARE = "fold-constants,fold-bn,fuse,dce"
AUTO_SMOOTHQUANT = 0.5


def quantize(
    model: nn.Module,
    example_inputs,
    scheme: str = "w8a8",
    calib: Iterable | None = None,
    *,
    example_kwargs: dict | None = None,
    observer: str = "minmax",
    percentile: float = 99.99,
    smoothquant: float | str | None = "auto",
    skip: Iterable[str] = (),
    max_error: float | None = None,
    attention: bool = False,
    embeddings: bool = False,
    per_layer: Mapping[str, str] | None = None,
    progress: bool | None = None,
) -> fx.GraphModule:
    """Quantize ``model`` to int8; returns a new runnable GraphModule (the caller's model is untouched).

    Args:
        model: an ``nn.Module`` (captured first) or a GraphModule from slimgraph (captured, pruned, optimized:
            it is copied).
        example_inputs: tuple of positional inputs; ``example_kwargs`` the keyword inputs.
        scheme: ``"w8a8"`` (static per-tensor activations from calibration, per-channel weights),
            ``"w8a8-dynamic"`` (per-token activation scales at run time) or ``"w8a16"`` (weight-only).
        calib: iterable of input tuples (or ``(args, kwargs)`` pairs) to calibrate on; default: the example
            inputs. A progress bar shows on a terminal (``progress=True/False`` forces it).
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

    The per-layer report: ``slimgraph.quant.last_report(result)``. Raises :class:`InputError` for an unknown
    scheme or observer, empty or non-finite calibration data (naming the node). A model with nothing to
    quantize is returned unchanged, with the reason in its report.
    """
    if smoothquant == "auto":
        smoothquant = AUTO_SMOOTHQUANT if scheme in ("w8a8", "w8a8-dynamic") else None
    elif isinstance(smoothquant, str):
        raise InputError(f"smoothquant must be an alpha in [0, 1], None or 'auto', got {smoothquant!r}")
    qpass = Quantize(scheme=scheme, observer=observer, percentile=percentile, smoothquant=smoothquant,
                     skip=tuple(skip) if not isinstance(skip, str) else (skip,), max_error=max_error,
                     attention=attention, embeddings=embeddings, per_layer=dict(per_layer or {}),
                     calib=_calibration(calib, example_inputs, example_kwargs), progress=progress)
    if isinstance(model, fx.GraphModule) and GRAPH_KEY in model.meta:
        gm = copy.deepcopy(model)
    elif isinstance(model, nn.Module):
        gm = capture(model, example_inputs, example_kwargs)
    else:
        raise InputError(f"quantize() needs an nn.Module, got {type(model).__name__}")
    try:
        gm = PassManager([*PREPARE.split(","), qpass], check_numerics=True).run(gm).gm
    except PassError as exc:
        if isinstance(exc.__cause__, InputError):  # bad calibration data: the user's error, not the pass's
            raise exc.__cause__ from None
        raise
    report = last_report(gm)
    if report is not None and not report.quantized:
        log.warning("quantize: %s", "; ".join(report.notes) or "no layer was quantized")
    return gm


def _calibration(calib, example_inputs, example_kwargs):
    if calib is not None:
        if isinstance(calib, (str, bytes)):
            raise InputError("calib must be an iterable of input tuples")
        return tuple(calib)
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    return ((args, dict(example_kwargs or {})),)
