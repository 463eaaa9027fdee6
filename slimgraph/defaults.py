"""The one set of defaults shared by the Python API, the CLI, ``compress`` and the torch.compile backend.

Every entry point reads its default from here instead of keeping its own literal, so ``sg.prune``,
``slimgraph prune``, ``sg.compress`` and ``slimgraph compress`` agree. Where a default depends on whether the
user gave data (activation-aware importance, least-squares refit), the rule lives here as a small function
and the caller reports the value it resolved to.

Values reconciled from what the code used before this module existed:

* quant scheme: ``compress`` used ``w8a8-dynamic``, ``sg.quantize`` ``w8a8``. One default now:
  ``w8a8-dynamic`` needs no calibration set (activation scales are per token at run time), so it is right
  for every entry point including the backend, where no data exists; static ``w8a8`` stays one flag away.
* SmoothQuant: ``sg.quantize`` applied alpha 0.5 to activation schemes ("auto"), the CLI turned it off, the
  backend used 0.5 for ``w8a8-dynamic``. One policy now: "auto" = alpha 0.5 for the schemes that quantize
  activations, off for weight-only ``w8a16``.
* pruning importance: ``compress`` used ``act``, ``sg.prune`` ``l2``. One rule now: ``auto`` = ``act``
  (activation-aware) when calibration data is given, ``l2`` (weight magnitude) without: activation
  statistics from the example inputs alone describe one batch, not the data.
* reconstruct: on in ``compress``, off in ``sg.prune``. One rule now: ``auto`` = on when calibration data is
  given (the refit is a least-squares fit on that data), off without.
"""

from __future__ import annotations

from .errors import InputError

# ------------------------------------------------------------------------------------------------ pipelines

LOSSLESS_PIPELINE = "fold-constants,fold-bn,fuse,dce"  # sg.optimize, the quantize preparation, compress

# ------------------------------------------------------------------------------------------------ quantization

QUANT_SCHEMES = ("w8a8", "w8a8-dynamic", "w8a16")
QUANT_SCHEME = "w8a8-dynamic"
QUANT_OBSERVER = "minmax"
QUANT_PERCENTILE = 99.99
SMOOTHQUANT = "auto"
SMOOTHQUANT_ALPHA = 0.5  # lifts MiniLM's w8a8-dynamic cosine 0.9975 -> 0.9989 (bench/results/quant-minilm.md)
SMOOTHQUANT_SCHEMES = ("w8a8", "w8a8-dynamic")  # the schemes that quantize activations

# ------------------------------------------------------------------------------------------------ pruning

PRUNE_RATIO = 0.5  # fraction of units removed per group (sg.prune, slimgraph prune)
PRUNE_IMPORTANCE = "auto"
PRUNE_IMPORTANCE_WITH_DATA = "act"
PRUNE_IMPORTANCE_WITHOUT_DATA = "l2"
PRUNE_SCOPE = "local"
PRUNE_ROUND_TO = 8  # widths rounded up to a multiple of 8: what int8/fp16 GEMM tiles and SIMD lanes like
PRUNE_FLOOR = 0.1
PRUNE_RECONSTRUCT = "auto"

SPARSE_PATTERN = "unstructured"  # sg.sparsify / compress --sparsity: element-wise zeros (Deep Compression)

# The main job (sg.compress / slimgraph compress / slimgraph demo): heads are pruned more gently than FFN
# neurons because one head carries far more of the output than one neuron (bench/prune_minilm.py).
COMPRESS_PRUNE = 0.5
COMPRESS_HEADS = 0.25
COMPRESS_QUANT = QUANT_SCHEME
COMPRESS_DISTILL_STEPS = None  # None: a built-in demo's tuned setting; 0 for user models unless asked
COMPRESS_ONNX = True
# int8 only for the layers (and the model) measured faster than float on the device the job runs on
COMPRESS_KEEP_PROFITABLE = True
SEED = 0

# ------------------------------------------------------------------------------------------------ data split

EVAL_FRACTION = 0.25  # of the user's batches, held out for evaluation and never trained or calibrated on
FIDELITY_BATCHES = 16  # held-out batches the fidelity metric runs on per stage (the first ones; all if fewer)
CALIB_BATCHES = 8  # training batches for quantization ranges and importance (more when the refit needs rows)

# ------------------------------------------------------------------------------------------------ timing

TIMING_WARMUP = 3  # calls per variant before any is timed (allocator, caches, lazy init)
TIMING_ROUNDS = 15  # interleaved rounds: every variant is timed once per round, in rotating order
TIMING_MAX_SECONDS = 20.0  # stop adding rounds after this long (the minimum rounds still run)
TIMING_MIN_ROUNDS = 5


def resolve_smoothquant(smoothquant: float | str | None, scheme: str) -> float | None:
    """The SmoothQuant alpha ``scheme`` gets: "auto" -> alpha for activation schemes, None for weight-only."""
    if smoothquant == "auto":
        return SMOOTHQUANT_ALPHA if scheme in SMOOTHQUANT_SCHEMES else None
    if isinstance(smoothquant, str):
        raise InputError(f"smoothquant must be an alpha in [0, 1], None or 'auto', got {smoothquant!r}")
    return smoothquant


def resolve_importance(importance: str, has_data: bool) -> str:
    """``auto`` -> ``act`` with calibration data, ``l2`` without; any other name is returned as given."""
    if importance == "auto":
        return PRUNE_IMPORTANCE_WITH_DATA if has_data else PRUNE_IMPORTANCE_WITHOUT_DATA
    return importance


def resolve_reconstruct(reconstruct: bool | str, has_data: bool) -> bool:
    """``auto`` -> refit when calibration data is given; an explicit bool is returned as given."""
    if reconstruct == "auto":
        return has_data
    if not isinstance(reconstruct, bool):
        raise InputError(f"reconstruct must be True, False or 'auto', got {reconstruct!r}")
    return reconstruct


def as_dict() -> dict[str, object]:
    """Every default by name (the report and ``slimgraph defaults`` print it)."""
    return {k: v for k, v in globals().items() if k.isupper() and not k.startswith("_")}
