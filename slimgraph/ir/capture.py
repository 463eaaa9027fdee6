"""Capture a model into slimgraph's IR: a ``torch.fx.GraphModule`` at the canonical ATen level.

Three entry paths, one result:

* any ``nn.Module`` -> ``torch.export.export(strict=False)`` (handles real transformers models);
* if export fails -> ``torch.fx.symbolic_trace`` and export of the traced module;
* a GraphModule captured by dynamo (what the torch.compile backend receives), whose parameters were
  lifted to inputs -> ``constant_inputs`` turns those inputs back into module attributes first.

The result takes the same ``(*args, **kwargs)`` as the model's ``forward`` and returns the same output
structure (HF ``ModelOutput`` included). It owns copies of the weights, so rewriting or training it never
touches the caller's model. See ``docs/architecture.md`` for the op level.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import traceback
from collections.abc import Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from ..errors import CaptureError, InputError
from . import dynamic
from .canonicalize import canonicalize
from .experts import dense_experts, warn_dense_experts
from .graph_utils import add_constant, remove_unused_attributes
from .info import GRAPH_KEY, GraphInfo
from .propagate import refresh
from .rnn_shapes import symbolic_rnn_shapes


def capture(
    model: nn.Module,
    example_inputs,
    example_kwargs: dict | None = None,
    *,
    dynamic_batch: bool = True,
    share_weights: bool = False,
    constant_inputs: Sequence[int] = (),
    dynamic_shapes=None,
    dynamic_budget_s: float | None = None,
) -> fx.GraphModule:
    """Capture ``model`` at the example inputs into a canonical fx GraphModule.

    Args:
        model: the module to capture (left untouched; it is traced in eval mode).
        example_inputs: tuple of positional inputs (a single tensor is accepted too).
        example_kwargs: keyword inputs, e.g. ``{"attention_mask": mask}``.
        dynamic_batch: keep input dims symbolic where the model allows it (batch, sequence, image size), so
            the captured module accepts other shapes; see :mod:`slimgraph.ir.dynamic` for the fallback ladder.
            ``False`` captures static shapes.
        share_weights: reuse the model's tensors instead of private copy-on-write copies (the result
            then aliases the caller's weights; only for inference-only flows such as the compile backend).
        constant_inputs: for dynamo-captured GraphModules: indices of ``example_inputs`` that are
            parameters or buffers lifted to inputs; they become constants of the returned module,
            which then takes only the remaining inputs.
        dynamic_shapes: an explicit ``torch.export`` dynamic-shapes spec (for the inputs left after
            ``constant_inputs``); overrides ``dynamic_batch``. A spec the model cannot satisfy raises
            CaptureError (it never falls back to static shapes).
        dynamic_budget_s: seconds each dynamic attempt may trace before capture steps down a rung
            (default: grows with the model, ``$SLIMGRAPH_DYNAMIC_BUDGET_S`` overrides; 0 = unbounded).

    ``graph_info(gm)`` records the dims that stayed symbolic (``dynamic_dims``), the rung used
    (``shape_policy``) and every fallback or specialisation (``shape_notes``).
    """
    args, kwargs = _check_inputs(example_inputs, example_kwargs)
    if not isinstance(model, nn.Module) and not isinstance(model, torch.export.ExportedProgram):
        raise InputError(f"capture() needs an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Module):
        _check_model_device(model)
    source = "export"
    if constant_inputs:
        if not isinstance(model, fx.GraphModule):
            raise InputError("constant_inputs is only meaningful for a dynamo-captured fx.GraphModule")
        model, args = _freeze_inputs(model, args, constant_inputs)
        source = "dynamo"

    notes: list[str] = []
    if isinstance(model, torch.export.ExportedProgram):
        exported, policy = model.module(), "given"
    else:
        budget = dynamic_budget_s if dynamic_budget_s is not None else dynamic.default_budget(model)
        exported, policy, source = _export_with_fallbacks(model, args, kwargs, dynamic_batch, source,
                                                          dynamic_shapes, budget, notes)
        warn_dense_experts(model)  # the dense MoE form costs E/k times the expert FLOPs: say so, once
    names = dynamic.leaf_names(model, args, kwargs) if isinstance(model, nn.Module) else []
    dims = dynamic.symbolic_dims(exported, names) if names else {}

    gm = fx.GraphModule(exported, exported.graph, class_name="SlimGraphModule")
    gm.meta[GRAPH_KEY] = GraphInfo(
        example_args=tuple(_detach(a) for a in args),
        example_kwargs={k: _detach(v) for k, v in kwargs.items()},
        source=source,
        dynamic_batch=any(0 in d for d in dims.values()),
        dynamic_dims=dims,
        shape_policy=policy if dims else "static",
        shape_notes=notes,
    )
    canonicalize(gm)
    # dead code out now (e.g. a pooler whose output forward() drops): no pass should see or prune it, and its
    # weights should not count in reports or saved files
    gm.graph.eliminate_dead_code()
    remove_unused_attributes(gm)
    gm.recompile()
    if not share_weights:
        _own_weights(gm)
    refresh(gm)
    return gm


def is_captured(model) -> bool:
    """True for a GraphModule slimgraph produced (it carries a ``GraphInfo``)."""
    return isinstance(model, fx.GraphModule) and GRAPH_KEY in model.meta


def capture_or_copy(model: nn.Module, example_inputs=None, example_kwargs: dict | None = None, **capture_options):
    """The one entry every API uses: a private copy of an already-captured graph, else a fresh capture.

    Either way the result can be rewritten or trained without touching ``model``.
    """
    if is_captured(model):
        return copy.deepcopy(model)
    if example_inputs is None:
        raise InputError(f"{type(model).__name__} is not a slimgraph graph yet: pass example_inputs to capture it")
    return capture(model, example_inputs, example_kwargs, **capture_options)


# --------------------------------------------------------------------------------------------- inputs


def _check_inputs(example_inputs, example_kwargs) -> tuple[tuple, dict]:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, list):
        example_inputs = tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise InputError(
            f"example_inputs must be a tuple of tensors, got {type(example_inputs).__name__}; "
            "wrap a single input as (x,)"
        )
    kwargs = dict(example_kwargs or {})
    for where, value in [*((f"example_inputs[{i}]", a) for i, a in enumerate(example_inputs)),
                         *((f"example_kwargs[{k!r}]", v) for k, v in kwargs.items())]:
        if isinstance(value, torch.Tensor) and not _runnable(value.device):
            raise InputError(
                f"{where} is on the '{value.device}' device, where nothing can run; capture traces the model "
                "with real example values: move the inputs (and the model) to 'cpu' or 'cuda'"
            )
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise InputError(f"{where} contains NaN or Inf; capture needs finite example inputs")
    return example_inputs, kwargs


def _runnable(device: torch.device) -> bool:
    if device.type == "meta":  # shapes only: no kernel can read it
        return False
    if device.type in ("cpu", "cuda"):
        return True
    backend = getattr(torch, device.type, None)
    return bool(getattr(backend, "is_available", lambda: False)())


def _check_model_device(model: nn.Module) -> None:
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if not _runnable(t.device):
            raise InputError(
                f"{type(model).__name__}.{name} is on the '{t.device}' device, where nothing can run: load "
                "real weights (e.g. model.to_empty(device='cpu') and load_state_dict) before capturing"
            )


def _detach(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Trace the inference graph, then restore every submodule's own training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _export(model: nn.Module, args: tuple, kwargs: dict, dynamic_shapes, *, oblivious: bool = False):
    size_rule = dynamic.size_oblivious() if oblivious else contextlib.nullcontext()
    with _eval_mode(model), _quiet_export_warnings(), size_rule, dense_experts(model), symbolic_rnn_shapes():
        ep = torch.export.export(model, args, kwargs, strict=False, dynamic_shapes=dynamic_shapes)
    if dynamic_shapes is not None:
        # ep.module() checks export's shape guards before each call; our graph drops that check, so a graph whose
        # symbolic dims are only valid on a curve of sizes (a branch taken on `h * w == 16`) must not be used
        pinned = dynamic.restrictive_guards(list(getattr(ep, "_guards_code", ()) or ()))
        if pinned:
            raise CaptureError(f"the traced graph is only valid where {' and '.join(pinned[:3])} (a Python branch on "
                               "input sizes); those dims cannot vary freely")
    return ep.module()


@contextlib.contextmanager
def _quiet_export_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*TreeSpec.*")
        yield


def _export_with_fallbacks(model, args, kwargs, dynamic_batch: bool, source: str, dynamic_shapes, budget: float,
                           notes: list[str]):
    """(module, shape policy, source): the first of the dynamic-shape ladder's rungs that traces."""
    failures: list[tuple[str, BaseException]] = []
    if dynamic_shapes is not None:
        try:
            return _export(model, args, kwargs, dynamic_shapes), "given", source
        except Exception as exc:  # noqa: BLE001 - a user's spec must not degrade silently
            if not _is_input_mismatch(exc):
                raise CaptureError(
                    f"could not capture {type(model).__name__} with the dynamic_shapes given: "
                    f"{type(exc).__name__}: {_first_line(exc, 600)}\n  what to try: mark dims the model fixes as "
                    "static (or use Dim.AUTO, which lets export decide per dim), or pass dynamic_shapes=None for "
                    "slimgraph's default (dynamic where the model allows it)."
                ) from exc
            failures.append(("torch.export (given dynamic shapes)", exc))
            plans = []
    else:
        plans = dynamic.ladder(model, args, kwargs) if dynamic_batch else [dynamic.ShapePlan("static", None)]
    slow_key = _slow_key(model, args, kwargs)
    over_budget = False
    for i, p in enumerate(plans):
        label = f"torch.export (dynamic: {p.rung})" if p.spec is not None else "torch.export"
        bounded = p.rung in ("all", "batch+sequence")  # the rungs with non-batch symbols, which can blow up
        try:
            if bounded and (slow_key, p.key) in _OVER_BUDGET:
                raise dynamic.BudgetExceeded("ran past its budget before on the same model and input shapes")
            if bounded and over_budget:  # the symbols that blew up (sequence/spatial) are in this rung too
                raise dynamic.BudgetExceeded("skipped: the rung above ran past its budget on the same dims")
            with dynamic.time_budget(budget if bounded else None):
                exported = _export(model, args, kwargs, dynamic.export_spec(p.spec, args, kwargs, model),
                                   oblivious=p.size_oblivious)
            if p.size_oblivious:
                _check_size_oblivious(model, exported, args, kwargs)
        except (Exception, dynamic.BudgetExceeded) as exc:  # noqa: BLE001 - every failure is reported
            if isinstance(exc, dynamic.BudgetExceeded):
                _OVER_BUDGET.add((slow_key, p.key))
                over_budget = True
            failures.append((label, exc))
            if _is_input_mismatch(exc):
                break
            if i + 1 < len(plans):
                notes.append(f"dims dynamic on rung '{p.rung}' ({_describe(p.offered)}) did not trace: "
                             f"{type(exc).__name__}: {_first_line(exc, 160)}; tried '{plans[i + 1].rung}' next")
            continue
        if i > 0 and failures:
            dynamic.warn(f"capture of {type(model).__name__}: kept only the '{p.rung}' dims dynamic, so the graph "
                         f"accepts fewer input shapes than the model. " + " ".join(notes))
        return exported, p.rung if p.spec is not None else "static", source
    if source == "export" and not isinstance(model, fx.GraphModule):
        try:
            traced = fx.symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001
            failures.append(("torch.fx.symbolic_trace", exc))
        else:
            try:
                exported = _export(traced, args, kwargs, None)
            except Exception as exc:  # noqa: BLE001
                failures.append(("torch.export of the symbolic_trace graph", exc))
            else:
                notes.append("torch.export failed; captured through torch.fx.symbolic_trace with static shapes")
                dynamic.warn(f"capture of {type(model).__name__}: {notes[-1]}: the graph accepts only the example "
                             "input shapes")
                return exported, "static", "symbolic_trace"
    raise CaptureError(_explain_failure(model, failures)) from failures[-1][1]


# (model class, input signature, rung dims) that ran past their budget: later captures of the same model at the
# same shapes (tests, compress's repeated captures) step down at once instead of waiting out the budget again
_OVER_BUDGET: set[tuple] = set()


def _slow_key(model, args, kwargs) -> tuple:
    leaves = pytree.tree_leaves((args, kwargs))
    shapes = tuple((tuple(t.shape), t.dtype) for t in leaves if isinstance(t, torch.Tensor))
    return type(model).__qualname__, sum(p.numel() for p in model.parameters()), shapes


def _describe(offered: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{name} dims {list(dims)}" for name, dims in offered.items())


def _check_size_oblivious(model, exported, args, kwargs) -> None:
    """A size-1 batch traced as 'any size' must still give the model's own result at size 1 (a model that
    branches on ``batch == 1`` would take the other branch)."""
    from ..numerics import compare_outputs

    with torch.no_grad(), _eval_mode(model):
        expected = model(*args, **kwargs)
        got = exported(*args, **kwargs)
    err = compare_outputs(got, expected)
    if not err.exact and err.max_rel > 1e-4:
        raise CaptureError(f"the graph traced for any batch size differs from the model at batch size 1 ({err})")


def _is_input_mismatch(exc: BaseException) -> bool:
    return isinstance(exc, TypeError) and "argument" in str(exc)


# ------------------------------------------------------------------------------------------- dynamo


def _freeze_inputs(gm: fx.GraphModule, args: tuple, constant_inputs: Sequence[int]):
    """Turn the placeholders at ``constant_inputs`` into get_attr nodes holding the example tensors."""
    constant = set(constant_inputs)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(args):
        raise InputError(f"graph has {len(placeholders)} inputs but {len(args)} example inputs were given")
    new = fx.GraphModule(gm, _copy_graph(gm.graph), class_name="FrozenDynamoGraph")
    placeholders = [n for n in new.graph.nodes if n.op == "placeholder"]
    kept = []
    for i, (node, value) in enumerate(zip(placeholders, args)):
        if i not in constant:
            kept.append(value)
            continue
        if not isinstance(value, torch.Tensor):
            raise InputError(f"constant input {i} ('{node.name}') is not a tensor")
        name = _attribute_name_for(node.name)
        target = add_constant(new, value.detach(), f"frozen.{name}", parameter=isinstance(value, nn.Parameter))
        with new.graph.inserting_before(node):
            attr = new.graph.get_attr(target)
        node.replace_all_uses_with(attr)
        new.graph.erase_node(node)
    new.graph.lint()
    new.recompile()
    return new, tuple(kept)


def dynamo_constant_inputs(gm: fx.GraphModule, example_inputs: Sequence) -> list[int]:
    """Indices of the inputs of a dynamo graph that are module parameters or buffers lifted to inputs.

    Dynamo marks them as static inputs and sources them from a module's ``_parameters``/``_buffers``;
    both signals are checked (plus nn.Parameter as a last resort) because they vary across torch versions.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    found = []
    for i, (node, value) in enumerate(zip(placeholders, example_inputs)):
        static = node.meta.get("tensor_dict", {}).get("_dynamo_static_input_type")
        source = str(getattr(node.meta.get("grapharg"), "source", ""))
        if (static is not None or "ParamBufferSource" in source or isinstance(value, nn.Parameter)
                or re.search(r"_(parameters|buffers)_", str(node.target))):
            if isinstance(value, torch.Tensor):
                found.append(i)
    return found


def _copy_graph(graph: fx.Graph) -> fx.Graph:
    new = fx.Graph()
    out = new.graph_copy(graph, {})
    new.output(out)
    return new


def _attribute_name_for(placeholder: str) -> str:
    # L_self_modules_fc_parameters_weight_ -> fc_weight: readable names in reports and saved files.
    name = re.sub(r"^L_(self_)?", "", placeholder).strip("_")
    name = re.sub(r"_modules_|_parameters_|_buffers_", "_", name)
    return name.replace("modules_", "") or "param"


# ------------------------------------------------------------------------------------------ weights


def _own_weights(gm: fx.GraphModule) -> None:
    """Give the module private copies of every parameter/buffer so the caller's model never changes.

    Copies are copy-on-write (``torch._lazy_clone``) where torch provides it: capturing BERT-base costs
    no 440 MB memcpy, yet training or editing either module never shows through to the other.
    """
    copies: dict[int, torch.Tensor] = {}  # by identity, so tied weights stay tied

    def copy_of(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in copies:
            c = _private_copy(t)
            copies[id(t)] = nn.Parameter(c, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else c
        return copies[id(t)]

    for mod in gm.modules(remove_duplicate=False):
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = copy_of(p)
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = copy_of(b)
    for name, value in list(vars(gm).items()):
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            setattr(gm, name, copy_of(value))


def _private_copy(t: torch.Tensor) -> torch.Tensor:
    lazy = getattr(torch, "_lazy_clone", None)
    t = t.detach()
    if lazy is not None:
        try:
            return lazy(t)
        except RuntimeError:  # some tensor kinds (e.g. wrapper subclasses) have no COW storage
            pass
    return t.clone()


# ------------------------------------------------------------------------------------------- errors

_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(os.path.dirname(__file__))


def _user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost traceback frame outside torch and slimgraph: the construct that broke tracing."""
    best = None
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for frame in traceback.extract_tb(exc.__traceback__):
            path = os.path.abspath(frame.filename)
            if path.startswith(_TORCH_DIR) or path.startswith(_OWN_DIR) or frame.filename.startswith("<"):
                continue
            if "site-packages/torch" in path or "contextlib" in path:
                continue
            best = frame
        exc = exc.__cause__ or exc.__context__
    return best


def _classify(exc: BaseException) -> tuple[str, str]:
    text = f"{type(exc).__name__}: {exc}"
    if re.search(r"data.dependent|GuardOnDataDependent|control flow|Could not guard", text, re.I):
        return (
            "data-dependent control flow (a Python `if`/`while` or `.item()` on a tensor's value)",
            "make the branch independent of tensor values, express it with torch.cond / torch.where, "
            "or compile with torch.compile(model, backend='slimgraph'), which tolerates graph breaks",
        )
    if re.search(r"in output, which is not a known type|not a known type", text):
        kind = re.search(r"<class '([^']+)'>", text)
        return (
            f"an output of type {kind.group(1) if kind else '?'} that torch.export cannot flatten",
            "for transformers decoders disable the KV cache (model.config.use_cache = False, or "
            "example_kwargs={'use_cache': False}); otherwise register the type with "
            "torch.utils._pytree.register_pytree_node",
        )
    if isinstance(exc, TypeError) and "argument" in str(exc):
        return (
            "example inputs that do not match forward()'s signature",
            "pass positional inputs as a tuple and keyword inputs through example_kwargs",
        )
    return (
        "a construct torch.export cannot trace",
        "wrap the offending code in a custom op (torch.library.custom_op) or move it out of forward(); "
        "torch.export.export(model, args, strict=False) shows the full trace",
    )


def _explain_failure(model, failures: list[tuple[str, BaseException]]) -> str:
    exc = failures[-1][1]
    what, hint = _classify(failures[0][1])
    frame = _user_frame(failures[0][1]) or _user_frame(exc)
    where = ""
    if frame is not None:
        line = (frame.line or "").strip()
        where = f" at {os.path.basename(frame.filename)}:{frame.lineno} in {frame.name}(): `{line}`"
    tried = "; ".join(f"{label}: {type(e).__name__}: {_first_line(e)}" for label, e in failures)
    return (
        f"could not capture {type(model).__name__}: {what}{where}.\n"
        f"  tried -> {tried}\n"
        f"  what to try: {hint}."
    )


def _first_line(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).strip().splitlines()
    first = next((t for t in text if t.strip()), "")
    return first if len(first) <= limit else first[: limit - 3] + "..."
