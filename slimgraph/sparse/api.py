"""``sparsify()``: the one-call API around the ``sparsify`` pass."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import InputError, PassError
from ..ir.capture import capture_or_copy, is_captured
from ..passes.manager import PassManager
from .patterns import parse_pattern
from .sparsify_pass import Sparsify


def sparsify(
    model: nn.Module,
    example_inputs=None,
    sparsity: float = 0.5,
    pattern: str | tuple[int, int] = "unstructured",
    scope: str = "global",
    importance: str = "l1",
    data: Iterable | None = None,
    ignore: Iterable[str] | str = (),
    example_kwargs: dict | None = None,
    lower: str = "auto",
) -> fx.GraphModule:
    """Zero ``sparsity`` of the GEMM weights of ``model``; returns a new GraphModule (the caller's model is untouched).

    Args:
        model: an ``nn.Module`` (captured first) or a slimgraph GraphModule (copied).
        example_inputs: tuple of input tensors (``example_kwargs``: keyword inputs); not needed for a GraphModule.
        sparsity: fraction of weights set to zero, in [0, 1). N:M patterns fix it at 1 - N/M ("2:4": 0.5).
        pattern: ``"unstructured"``, ``"N:M"`` along the input dimension (``"2:4"``: sparse tensor cores), or a block
            ``(bn, bk)`` / ``"BNxBK"`` of the GEMM view (``(32, 32)``: the block-sparse kernel's tiles).
        scope: ``"global"`` ranks all weights together (layers with more unimportant weights lose more);
            ``"local"`` gives every layer the same sparsity.
        importance: ``"l1"`` / ``"l2"`` magnitude, or ``"act"``: |w| times the norm of the input channel it multiplies
            over ``data`` (Wanda).
        data: iterable of input batches (tuples or ``(args, kwargs)``) for ``importance="act"``; default: the
            example inputs.
        ignore: fnmatch patterns of layers to keep dense (module path, weight name, node name, "linear"/"conv2d", or
            module type).
        lower: ``"auto"`` lowers a linear layer to a sparse op where a measurement on this device says it is faster
            than dense; ``"always"`` lowers every linear layer without measuring; ``"off"`` keeps all dense (fine-tune
            first: ``graph_info(gm).sparsity`` tells distillation which zeros to keep).

    The per-layer report: ``slimgraph.sparse.last_report(result)``. Raises :class:`InputError` for a sparsity outside
    [0, 1), an unknown pattern/scope/importance/lower mode, non-tensor inputs, or an N:M pattern on a layer whose
    input dimension is not a multiple of M (naming the layer).
    """
    if not is_captured(model):
        _check_example_inputs(model, example_inputs)
    spass = Sparsify(sparsity=sparsity, pattern=str(parse_pattern(pattern)), scope=scope, importance=importance,
                     ignore=(ignore,) if isinstance(ignore, str) else tuple(ignore), lower=lower).with_data(data)
    gm = capture_or_copy(model, example_inputs, example_kwargs)
    try:
        return PassManager([spass], check_numerics=True).run(gm).gm
    except PassError as exc:
        if isinstance(exc.__cause__, InputError):  # bad data or layer shapes: the user's error, not the pass's
            raise exc.__cause__ from None
        raise


def _check_example_inputs(model, example_inputs) -> None:
    if not isinstance(model, nn.Module):
        raise InputError(f"sparsify() needs an nn.Module, got {type(model).__name__}")
    items = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(items, (tuple, list)) or not items:
        raise InputError(f"example_inputs must be a non-empty tuple of tensors, got {type(example_inputs).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, torch.Tensor):
            raise InputError(f"example_inputs[{i}] is a {type(item).__name__}; sparsify needs tensors (wrap scalars "
                             "in the model or pass them as tensors)")
