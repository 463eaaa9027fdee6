"""The one calibration runner: feed batches through a captured graph, optionally watching chosen nodes.

Every compression family that learns from data goes through here: quantization (observers, SmoothQuant
ranges, per-layer sensitivity), pruning (activation-aware importance, Taylor gradients, least-squares
reconstruction) and sparsity (activation norms). A batch loop written once means one input format, one
NaN check, one error message for a batch that does not fit the model, and one progress line.

    for index, out in each_output(gm, batches, watchers={node: [hook]}, desc="prune: act importance"):
        ...

With ``watchers`` the graph is interpreted node by node (``torch.fx.Interpreter``) and each hook is called
with the watched node's evaluated arguments and result (:class:`NodeValues`): observers see activations and
sensitivity can quantize one layer on its real inputs without building a modified graph for every question.
Without watchers the compiled graph runs as is (fast). ``grad=True`` keeps autograd on, for criteria that
back-propagate a loss per batch.

The data a pass learns from (``calib`` batches, a ``loss_fn``) is not one of its options: options are what a
pipeline string can say. The Python API hands it over with :meth:`UsesData.with_data`; a pass run from a
pipeline string calibrates on the example inputs recorded at capture.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ..errors import InputError
from ..progress import progress as progress_reporter
from .info import graph_info, node_info


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


# --------------------------------------------------------------------------------------------- batches


def normalize_batches(calib, gm: fx.GraphModule) -> list[Batch]:
    """Calibration batches as (args, kwargs). ``calib=None`` means the example inputs recorded at capture.

    An item may be a tensor, a tuple/list of positional inputs, a dict of keyword inputs, or an
    ``(args_tuple, kwargs_dict)`` pair.
    """
    info = graph_info(gm)
    if calib is None:
        return [Batch(tuple(info.example_args), dict(info.example_kwargs))]
    if isinstance(calib, (str, bytes, torch.Tensor)):
        raise InputError("calib must be an iterable of input tuples, e.g. [(x1,), (x2,)]; got a single "
                         f"{type(calib).__name__}")
    batches = []
    for i, item in enumerate(calib):
        if isinstance(item, Batch):
            batches.append(item)
        elif isinstance(item, torch.Tensor):
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


def flat_inputs(gm: fx.GraphModule, batch: Batch) -> list:
    """The batch as the graph's placeholders see it (an exported graph takes its pytree flattened)."""
    if getattr(gm, "_in_spec", None) is not None:
        return pytree.tree_leaves((tuple(batch.args), dict(batch.kwargs)))
    return list(batch.args)


def output_tensors(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


# ---------------------------------------------------------------------------------------------- runner


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


def each_output(gm: fx.GraphModule, batches: Iterable[Batch], *,
                watchers: Mapping[fx.Node, list[Watcher]] | None = None,
                grad: bool = False, desc: str = "calibrating", progress: bool | None = None,
                ) -> Iterator[tuple[int, object]]:
    """Run ``gm`` on every batch (calling the watchers); yields ``(batch index, output)`` as each one is done.

    A batch that does not run through the model raises :class:`InputError` naming it; an ``InputError`` a
    watcher raises (bad values at a node) passes through unchanged. ``progress``: None shows a bar on a
    terminal only, True also prints periodic lines in logs, False shows nothing.
    """
    batches = list(batches)
    shown = progress if progress is not None else _is_terminal()
    bar = progress_reporter(len(batches), desc, "batch", enabled=bool(shown) and len(batches) > 0)
    try:
        for i, batch in enumerate(batches):
            try:
                # grad mode only around the forward: the caller's code between batches keeps its own mode
                with torch.set_grad_enabled(grad):
                    if watchers:
                        out = _WatchingInterpreter(gm, watchers, i).run(*flat_inputs(gm, batch))
                    else:
                        out = gm(*batch.args, **batch.kwargs)
            except InputError:
                raise
            except Exception as exc:
                raise InputError(
                    f"calibration batch {i} does not run through the model ({type(exc).__name__}: {exc}); "
                    "batches must match the example inputs' structure (a model captured with static shapes "
                    "also needs the example batch size)"
                ) from exc
            yield i, out
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def run_watched(gm: fx.GraphModule, batches: Iterable[Batch], watchers: Mapping[fx.Node, list[Watcher]], *,
                desc: str = "calibrating", progress: bool | None = None) -> list[list[torch.Tensor]]:
    """Run ``gm`` on every batch calling the watchers; returns each batch's output tensors (flattened)."""
    return [output_tensors(out) for _, out in each_output(gm, batches, watchers=watchers, desc=desc,
                                                           progress=progress)]


def watch(gm: fx.GraphModule, batches: Iterable[Batch], watchers: Mapping[fx.Node, list[Watcher]], *,
          desc: str = "calibrating", progress: bool | None = None) -> None:
    """Run ``gm`` on every batch only for what the watchers collect (the outputs are not kept)."""
    for _ in each_output(gm, batches, watchers=watchers, desc=desc, progress=progress):
        pass


def run_outputs(gm: fx.GraphModule, batches: Iterable[Batch]) -> list[list[torch.Tensor]]:
    """Flattened output tensors of ``gm`` (compiled code, no interpreter) on every batch."""
    return [output_tensors(out) for _, out in each_output(gm, batches, progress=False)]


def _is_terminal() -> bool:
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)())


# ------------------------------------------------------------------------------------ data for a pass


@dataclass(frozen=True)
class PassData:
    """What a pass learns from beyond its options: the user's calibration batches and loss callable."""

    calib: tuple | None = None  # None: the example inputs recorded at capture
    loss_fn: Callable | None = None


_NO_DATA = PassData()


class UsesData:
    """Mixin for a pass dataclass that calibrates: data travels beside the options, never as a field.

    ``Prune(ratio=0.5).with_data(calib=batches)`` is the same pass (equal, same pipeline string, same
    listed options) that calibrates on ``batches``; a pass parsed from a pipeline string has no data and
    falls back to the example inputs.
    """

    def with_data(self, calib: Iterable | None = None, loss_fn: Callable | None = None):
        if isinstance(calib, (str, bytes, torch.Tensor)):
            raise InputError("calib must be an iterable of input tuples, e.g. [(x1,), (x2,)]; got a single "
                             f"{type(calib).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise InputError(f"loss_fn must be callable (outputs -> scalar tensor), got {type(loss_fn).__name__}")
        bound = dataclasses.replace(self)  # type: ignore[type-var]
        # frozen dataclass: the data is an attribute outside the fields, so eq, hash and str ignore it
        object.__setattr__(bound, "_pass_data", PassData(tuple(calib) if calib is not None else None, loss_fn))
        return bound

    @property
    def data(self) -> PassData:
        return getattr(self, "_pass_data", _NO_DATA)
