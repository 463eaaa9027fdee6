"""Which input dimensions capture keeps symbolic, and what it does when the model refuses.

By default every dim of every tensor input is offered to ``torch.export`` as ``Dim.AUTO``: export keeps the
dims the model lets vary (batch, sequence, image size) and silently specialises the rest (hidden size,
channels, a ViT's fixed image size). If tracing with a rung's dims fails, or runs past its time budget
(symbolic window arithmetic can keep sympy busy for minutes, e.g. Swin's spatial dims; see
:func:`default_budget`), capture steps
down one rung:

    all dims  ->  batch + sequence/spatial  ->  batch only  ->  static

Each step down is recorded in ``GraphInfo.shape_notes`` and raised as a :class:`DynamicShapeWarning`.

Pitfalls handled here: dims of size 0 or 1 are never offered (export would 0/1-specialise them) except the
batch dim of size 1, which is traced size-obliviously so a batch-1 example still yields a graph for any
batch; dims of equal example size are never unified, because export disables duck sizing.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import signal
import threading
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree
from torch.export import Dim

RUNGS = ("all", "batch+sequence", "batch", "static")


class DynamicShapeWarning(UserWarning):
    """Capture kept fewer dims dynamic than it tried to: the graph accepts fewer input shapes."""


class BudgetExceeded(BaseException):
    """A trace ran past its time budget. A BaseException, so torch's broad ``except Exception`` handlers
    inside export cannot swallow it."""


@dataclass
class ShapePlan:
    """One rung of the ladder: the export spec and, per flattened input leaf, the dims it offers."""

    rung: str
    spec: object  # torch.export dynamic_shapes, or None for static
    offered: dict[str, tuple[int, ...]] = field(default_factory=dict)
    size_oblivious: bool = False  # a batch dim of example size 1 is offered

    @property
    def key(self) -> tuple:
        return tuple(sorted(self.offered.items()))


def rung_dims(value: torch.Tensor, rung: str) -> tuple[int, ...]:
    """Dims of ``value`` a rung offers as dynamic (before dropping size-0/1 dims)."""
    rank = value.dim()
    if rung == "all":
        dims = range(rank)
    elif rung == "batch+sequence":  # channels-last tokens [B, S, H]; channels-first images/audio [B, C, ...]
        dims = range(rank) if rank <= 2 else (0, 1) if rank == 3 else (0, *range(2, rank))
    elif rung == "batch":
        dims = range(min(rank, 1))
    else:
        dims = ()
    return tuple(d for d in dims if value.shape[d] >= 2 or (d == 0 and value.shape[d] == 1 and rank >= 2))


def leaf_names(model: nn.Module, args: tuple, kwargs: dict) -> list[str]:
    """A readable name for every flattened input leaf: forward()'s parameter names where they can be bound."""
    try:
        positional = [p.name for p in inspect.signature(model.forward).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        positional = []
    names = []
    for path, _ in pytree.tree_flatten_with_path((tuple(args), dict(kwargs)))[0]:
        head, rest = path[0].idx, path[1:]
        if head == 0:
            i = rest[0].idx
            name = positional[i] if i < len(positional) else f"args[{i}]"
        else:
            name = str(rest[0].key)
        names.append(name + pytree.keystr(rest[1:]))
    return names


def plan(model: nn.Module, args: tuple, kwargs: dict, rung: str) -> ShapePlan:
    """The dynamic_shapes spec for ``rung``, shaped like ``(args, kwargs)``."""
    spec, offered = _spec(model, args, kwargs, lambda name, value: rung_dims(value, rung))
    if not offered:  # nothing to offer: this rung is the static one
        return ShapePlan("static", None)
    oblivious = any(v.shape[d] == 1 for v, dims in offered.values() for d in dims)
    return ShapePlan(rung, spec, {name: dims for name, (_, dims) in offered.items()}, oblivious)


def spec_for_dims(model: nn.Module, args: tuple, kwargs: dict, dims: dict[str, tuple[int, ...]], dim_for=None):
    """The spec (shaped like ``(args, kwargs)``) making exactly ``dims`` (as GraphInfo.dynamic_dims records
    them) dynamic; None when there are none. ``dim_for(name, d)`` gives the export Dim of input ``name``'s dim
    ``d`` (default ``Dim.AUTO``): one named Dim shared by several inputs tells export that those sizes are equal."""
    spec, offered = _spec(model, args, kwargs, lambda name, value: tuple(d for d in dims.get(name, ())
                                                                         if d < value.dim()), dim_for)
    return spec if offered else None


def _spec(model, args, kwargs, choose, dim_for=None):
    names = iter(leaf_names(model, args, kwargs))
    offered: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {}

    def walk(value):
        if value is None:  # an empty pytree: no leaf, no name
            return None
        if isinstance(value, torch.Tensor):
            name = next(names)
            dims = choose(name, value)
            if not dims:
                return None
            offered[name] = (value, dims)
            return {d: Dim.AUTO if dim_for is None else dim_for(name, d) for d in dims}
        if isinstance(value, (tuple, list)):
            return type(value)(walk(v) for v in value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if pytree.tree_leaves(value) != [value]:  # a registered container (e.g. a ModelOutput)
            leaves, tree = pytree.tree_flatten(value)
            return pytree.tree_unflatten([walk(v) for v in leaves], tree)
        next(names)
        return None

    return (walk(tuple(args)), walk(dict(kwargs))), offered


def ladder(model: nn.Module, args: tuple, kwargs: dict) -> list[ShapePlan]:
    """The rungs to try in order, without repeats (an MLP's "all" is its "batch")."""
    plans, seen = [], set()
    for rung in RUNGS:
        p = plan(model, args, kwargs, rung)
        if p.key not in seen:
            seen.add(p.key)
            plans.append(p)
    if plans[-1].spec is not None:
        plans.append(ShapePlan("static", None))
    return plans


def export_spec(spec, args: tuple, kwargs: dict, model: nn.Module):
    """torch.export takes dynamic_shapes keyed like forward()'s signature: turn ``(args, kwargs)`` into that."""
    if spec is None:
        return None
    try:
        bound = inspect.signature(model.forward).bind(*range(len(args)), **{k: k for k in kwargs})
    except (TypeError, ValueError):
        return (*spec[0], *spec[1].values()) if not spec[1] else None
    params = inspect.signature(model.forward).parameters
    pos_specs, kw_specs = spec
    out = {}
    for name, value in bound.arguments.items():
        kind = params[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            out[name] = tuple(pos_specs[i] for i in value)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            out[name] = {k: kw_specs[k] for k in value}
        elif isinstance(value, int):
            out[name] = pos_specs[value]
        else:
            out[name] = kw_specs[value]
    return out


def is_symbolic(size) -> bool:
    """True for a size that can vary at run time. Export leaves SymInts behind whose symbol it specialised
    to a constant (a ViT's image size): those are fixed."""
    if isinstance(size, int):
        return False
    node = getattr(size, "node", None)
    if node is None:
        return True
    if node.maybe_as_int() is not None:
        return False
    try:
        return not node.shape_env.replace(node.expr).is_number
    except Exception:  # noqa: BLE001 - an unusual symbol kind: treat as dynamic, the conservative reading
        return True


_PLAIN_SIZE = re.compile(r"^L(\[[^\]]+\])+\.size\(\)\[\d+\]$")


def restrictive_guards(guards: list[str]) -> list[str]:
    """Guards export recorded that pin an expression of several sizes to a constant, e.g. a ViT's
    ``(H // 4) * (W // 4) == 16``: the graph is then valid only on that curve, not for the sizes the dims claim.
    Specialising one size (``L['x'].size()[1] == 3``), equal sizes, divisibility and inequalities are fine."""
    bad = []
    for guard in guards:
        left, op, right = guard.partition(" == ")
        if not op:
            continue
        left, right = left.strip().strip("()"), right.strip().strip("()")
        constant = right if right.lstrip("-").isdigit() else left if left.lstrip("-").isdigit() else None
        if constant is None:
            continue
        other = left if constant is right else right
        if constant == "0" and "%" in other:
            # divisibility (GPT-2's `(b * s) % b == 0` from a reshape): holds for every consistent input, and
            # where it does not the model's own reshape fails too
            continue
        if not _PLAIN_SIZE.match(other):
            bad.append(guard)
    return bad


def symbolic_dims(gm: fx.GraphModule, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Input name -> dims that are symbolic in the graph's placeholder values."""
    places = [n for n in gm.graph.nodes if n.op == "placeholder"]
    out = {}
    for name, node in zip(names, places):
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            dims = tuple(d for d, s in enumerate(val.shape) if is_symbolic(s))
            if dims:
                out[name] = dims
    return out


def size_oblivious():
    """Trace a size-1 batch dim as if it could be any size (no 0/1 specialisation)."""
    from torch.fx.experimental import _config

    if "backed_size_oblivious" in getattr(_config, "_allowed_keys", ()) or hasattr(_config, "backed_size_oblivious"):
        return _config.patch(backed_size_oblivious=True)
    return contextlib.nullcontext()


def default_budget(model: nn.Module) -> float:
    """CPU seconds a dynamic rung may trace before capture steps down. ``SLIMGRAPH_DYNAMIC_BUDGET_S`` overrides;
    otherwise it grows with the number of submodules, as tracing time does. CPU time, not wall time: a busy
    machine slows every process, and must not make captures lose their dynamic dims."""
    env = os.environ.get("SLIMGRAPH_DYNAMIC_BUDGET_S")
    if env:
        return float(env)
    return min(600.0, 10.0 + 0.2 * sum(1 for _ in model.modules()))


@contextlib.contextmanager
def time_budget(seconds: float | None):
    """Raise BudgetExceeded in the traced code after ``seconds`` of this process's CPU time. Only where the
    virtual timer is ours to take (main thread, no other handler or timer); elsewhere the trace is unbounded."""
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread()
              and signal.getsignal(signal.SIGVTALRM) in (signal.SIG_DFL, signal.SIG_IGN, None)
              and signal.getitimer(signal.ITIMER_VIRTUAL)[0] == 0)
    if not usable:
        yield
        return

    def on_timer(signum, frame):
        raise BudgetExceeded(f"tracing ran past its budget of {seconds:g} CPU seconds")

    previous = signal.signal(signal.SIGVTALRM, on_timer)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


def grown_inputs(model: nn.Module, args: tuple, kwargs: dict, dims: dict[str, tuple[int, ...]]):
    """``(args, kwargs)`` with every dynamic dim one longer, by repeating its first slice: token ids stay in the
    vocabulary and masks stay masks. None when no dim is dynamic."""
    names = leaf_names(model, args, kwargs)
    leaves, tree = pytree.tree_flatten((tuple(args), dict(kwargs)))
    grown = False
    for i, (name, value) in enumerate(zip(names, leaves)):
        if isinstance(value, torch.Tensor):
            for d in dims.get(name, ()):
                if d < value.dim() and value.shape[d] > 0:
                    value = torch.cat([value, value.narrow(d, 0, 1)], dim=d)
                    grown = True
            leaves[i] = value
    return pytree.tree_unflatten(leaves, tree) if grown else None


def warn(message: str) -> None:
    warnings.warn(message, DynamicShapeWarning, stacklevel=4)
