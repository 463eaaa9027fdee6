"""Running a float graph over calibration batches while watching chosen nodes.

``run_watched(gm, batches, watchers)`` interprets the graph node by node (``torch.fx.Interpreter``) and calls
``watcher(values)`` with the watched node's evaluated arguments and result. That is how observers see
activations, how SmoothQuant reads per-channel ranges, and how sensitivity quantizes one layer at a time on
the real inputs of that layer, without building a modified graph for every question.

Every watched activation is checked for NaN/Inf, so bad calibration data fails with the node's name instead
of silently producing a NaN scale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ..errors import InputError
from ..ir.info import graph_info, node_info


@dataclass
class Batch:
    args: tuple
    kwargs: dict


@dataclass
class NodeValues:
    """What a watcher sees of one node during one batch."""

    args: tuple
    kwargs: dict
    result: object
    batch: int


Watcher = Callable[[NodeValues], None]


def normalize_batches(calib, gm: fx.GraphModule) -> list[Batch]:
    """Calibration batches as (args, kwargs). ``calib=None`` means the example inputs recorded at capture.

    An item may be a tensor, a tuple/list of positional inputs, a dict of keyword inputs, or an
    ``(args_tuple, kwargs_dict)`` pair.
    """
    info = graph_info(gm)
    if calib is None:
        return [Batch(tuple(info.example_args), dict(info.example_kwargs))]
    if isinstance(calib, torch.Tensor):
        raise InputError("calib must be an iterable of input tuples, e.g. [(x1,), (x2,)]; got a single tensor")
    batches = []
    for i, item in enumerate(calib):
        if isinstance(item, torch.Tensor):
            batches.append(Batch((item,), {}))
        elif isinstance(item, Mapping):
            batches.append(Batch((), dict(item)))
        elif (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (tuple, list))
              and isinstance(item[1], Mapping)):
            batches.append(Batch(tuple(item[0]), dict(item[1])))
        elif isinstance(item, (tuple, list)):
            batches.append(Batch(tuple(item), {}))
        else:
            raise InputError(f"calibration batch {i} is a {type(item).__name__}; expected a tuple of input tensors")
    if not batches:
        raise InputError("calibration data is empty: pass at least one batch of inputs (or calib=None to "
                         "calibrate on the example inputs)")
    for i, batch in enumerate(batches):
        _check_finite_inputs(batch, i)
    return batches


def named_inputs(batch: Batch) -> list[tuple[str, object]]:
    """``("input 0", x), ("input 'mask'", m), ...``: a batch's inputs with the names error messages use."""
    positional = [(f"input {i}", a) for i, a in enumerate(batch.args)]
    return positional + [(f"input {k!r}", v) for k, v in batch.kwargs.items()]


def _check_finite_inputs(batch: Batch, index: int) -> None:
    for where, value in named_inputs(batch):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise InputError(f"calibration batch {index}: {where} contains NaN or Inf; calibration needs finite data")


def describe(node: fx.Node) -> str:
    info = node_info(node)
    return f"node '{node.name}'" + (f" (module '{info.module}')" if info is not None and info.module else "")


def check_finite(node: fx.Node, value, batch: int) -> None:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
        bad = "NaN" if torch.isnan(value).any() else "Inf"
        raise InputError(
            f"calibration batch {batch}: {describe(node)} produced {bad} values, so no int8 scale can be computed "
            "for the layers it feeds; check the calibration data and the model's numerics at that node"
        )


class _WatchingInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, watchers: Mapping[fx.Node, list[Watcher]], batch: int):
        super().__init__(gm, garbage_collect_values=True)
        self.watchers = watchers
        self.batch = batch

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        hooks = self.watchers.get(n)
        if hooks:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            values = NodeValues(args, kwargs, result, self.batch)
            for hook in hooks:
                hook(values)
        return result


def flat_inputs(gm: fx.GraphModule, batch: Batch) -> list:
    if getattr(gm, "_in_spec", None) is not None:
        return pytree.tree_leaves((tuple(batch.args), dict(batch.kwargs)))
    return list(batch.args)


def run_watched(gm: fx.GraphModule, batches: Iterable[Batch], watchers: Mapping[fx.Node, list[Watcher]], *,
                desc: str = "calibrating", progress: bool | None = None) -> list[list[torch.Tensor]]:
    """Run ``gm`` on every batch calling the watchers; returns each batch's output tensors (flattened)."""
    from tqdm.auto import tqdm

    outputs = []
    batches = list(batches)
    bar = tqdm(batches, desc=f"quant: {desc}", unit="batch", disable=_disabled(progress), leave=False)
    with torch.no_grad():
        for i, batch in enumerate(bar):
            try:
                out = _WatchingInterpreter(gm, watchers, i).run(*flat_inputs(gm, batch))
            except InputError:
                raise
            except Exception as exc:
                raise InputError(
                    f"calibration batch {i} does not run through the model ({type(exc).__name__}: {exc}); "
                    "batches must match the example inputs' structure (a model captured with static shapes "
                    "also needs the example batch size)"
                ) from exc
            outputs.append([t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)])
    return outputs


def run_outputs(gm: fx.GraphModule, batches: Iterable[Batch]) -> list[list[torch.Tensor]]:
    """Flattened output tensors of ``gm`` (compiled code, no interpreter) on every batch."""
    results = []
    with torch.no_grad():
        for batch in batches:
            out = gm(*batch.args, **batch.kwargs)
            results.append([t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)])
    return results


def _disabled(progress: bool | None) -> bool | None:
    # None lets tqdm decide: a bar on a terminal, silence in logs and CI.
    return None if progress is None else not progress
