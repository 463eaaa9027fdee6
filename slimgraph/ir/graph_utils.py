"""Small helpers for reading and rewriting captured graphs.

Passes never mutate a tensor in place: they register a new tensor under the old (or a fresh) name,
so a module that shares storage with the caller's model can never change the caller's model.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

import torch
import torch.fx as fx

# Ops whose output is a view of (aliases) their first argument.
VIEW_OPS = {
    torch.ops.aten.view.default,
    torch.ops.aten.reshape.default,
    torch.ops.aten._unsafe_view.default,
    torch.ops.aten.transpose.int,
    torch.ops.aten.permute.default,
    torch.ops.aten.t.default,
    torch.ops.aten.unsqueeze.default,
    torch.ops.aten.squeeze.dim,
    torch.ops.aten.squeeze.dims,
    torch.ops.aten.squeeze.default,
    torch.ops.aten.flatten.using_ints,
    torch.ops.aten.unflatten.int,
    torch.ops.aten.expand.default,
    torch.ops.aten.slice.Tensor,
    torch.ops.aten.select.int,
    torch.ops.aten.narrow.default,
    torch.ops.aten.split.Tensor,
    torch.ops.aten.split_with_sizes.default,
    torch.ops.aten.chunk.default,
    torch.ops.aten.unbind.int,
    torch.ops.aten.alias.default,
    torch.ops.aten.detach.default,
    torch.ops.aten.contiguous.default,
    torch.ops.aten.view_as.default,
    torch.ops.aten.reshape_as.default,
}


def get_attr_tensor(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor | None:
    """The tensor a get_attr node refers to, or None if it is not a tensor attribute."""
    if node.op != "get_attr":
        return None
    value = _getattr_path(gm, node.target)
    return value if isinstance(value, torch.Tensor) else None


def _getattr_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def constant_of(gm: fx.GraphModule, arg) -> torch.Tensor | None:
    """Tensor behind an argument if it is a get_attr node, else None."""
    return get_attr_tensor(gm, arg) if isinstance(arg, fx.Node) else None


def set_attr_tensor(gm: fx.GraphModule, target: str, value: torch.Tensor, *, parameter: bool | None = None):
    """Register ``value`` at dotted path ``target`` (replacing what was there).

    ``parameter`` forces nn.Parameter vs buffer; by default the kind of the old attribute is kept
    (new attributes become buffers unless they are floating point and ``parameter`` is True).
    """
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    old = getattr(owner, name, None)
    if parameter is None:
        parameter = isinstance(old, torch.nn.Parameter)
    value = value.detach()
    if parameter:
        requires_grad = old.requires_grad if isinstance(old, torch.nn.Parameter) else value.is_floating_point()
        if not value.is_floating_point():
            requires_grad = False
        new = torch.nn.Parameter(value, requires_grad=requires_grad)
        if name in owner._buffers:
            del owner._buffers[name]
        owner._parameters[name] = new
    else:
        if name in owner._parameters:
            del owner._parameters[name]
        owner.register_buffer(name, value, persistent=True)


_MODULE_NAMES = frozenset(dir(torch.nn.Module))


def fresh_attr_name(gm: fx.GraphModule, base: str) -> str:
    """A dotted attribute path not used yet, derived from ``base``.

    Each part is made a valid identifier that does not shadow an nn.Module member (a folded node named
    ``to`` must not become ``module.to``), and every part but the last names a submodule or nothing yet:
    ``w.input_scale`` next to a tensor attribute ``w`` (a layer named after its weight, not a module)
    becomes ``w_input_scale``, since a tensor cannot own attributes.
    """
    parts = []
    for part in base.replace("-", "_").split("."):
        part = "".join(c if c.isalnum() or c == "_" else "_" for c in part) or "_"
        if part[0].isdigit() or part in _MODULE_NAMES:
            part = f"_{part}"
        parts.append(part)
    owner = gm
    for i, part in enumerate(parts[:-1]):
        owner = getattr(owner, part, None) if owner is not None else None
        if owner is not None and not isinstance(owner, torch.nn.Module):
            parts = parts[:i] + ["_".join(parts[i:])]
            break
    base = ".".join(parts)
    candidate, i = base, 0
    while _getattr_path(gm, candidate) is not None:
        i += 1
        candidate = f"{base}_{i}"
    return candidate


def add_constant(gm: fx.GraphModule, value: torch.Tensor, base_name: str, *, parameter: bool = False) -> str:
    """Register a new tensor on ``gm`` (creating owner submodules as needed); returns its dotted path."""
    target = fresh_attr_name(gm, base_name)
    owner_path, _, _ = target.rpartition(".")
    if owner_path:
        _ensure_submodule(gm, owner_path)
    set_attr_tensor(gm, target, value, parameter=parameter)
    return target


def _ensure_submodule(gm: fx.GraphModule, path: str):
    mod = gm
    for part in path.split("."):
        child = getattr(mod, part, None)
        if child is None:
            child = torch.nn.Module()
            mod.add_module(part, child)
        elif not isinstance(child, torch.nn.Module):
            raise ValueError(f"cannot create submodule {path!r}: {part!r} is not a module")
        mod = child


def remove_unused_attributes(gm: fx.GraphModule) -> int:
    """Delete parameters/buffers/submodules that no get_attr or call_module node references.

    Returns the number of tensor elements freed. Needed because fx's DCE only removes nodes: a folded
    BatchNorm's running statistics would otherwise stay in the state dict and in saved files.
    """
    used = set()
    for node in gm.graph.nodes:
        if node.op in ("get_attr", "call_module"):
            used.add(node.target)
    used_modules = {u for u in used if _is_module(gm, u)}

    def referenced(name: str) -> bool:
        if name in used:
            return True
        parts = name.split(".")
        return any(".".join(parts[:i]) in used_modules for i in range(1, len(parts)))

    freed = 0
    for name, tensor in list(gm.named_parameters(remove_duplicate=False)) + list(
        gm.named_buffers(remove_duplicate=False)
    ):
        if referenced(name):
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if attr in owner._parameters:
            del owner._parameters[attr]
        elif attr in owner._buffers:
            del owner._buffers[attr]
        else:
            continue
        freed += tensor.numel()
    # Plain tensor attributes (constants captured by export) are not in named_buffers.
    for name, value in list(vars(gm).items()):
        if isinstance(value, torch.Tensor) and name not in used and not name.startswith("_"):
            delattr(gm, name)
            freed += value.numel()
    _drop_empty_submodules(gm, used)
    return freed


def _is_module(gm, path: str) -> bool:
    return isinstance(_getattr_path(gm, path), torch.nn.Module)


def _drop_empty_submodules(gm: fx.GraphModule, used: set[str]):
    def has_state(m: torch.nn.Module) -> bool:
        return any(True for _ in m.parameters()) or any(True for _ in m.buffers())

    for name, _ in sorted(gm.named_modules(), key=lambda kv: -kv[0].count(".")):
        if not name or name in used:
            continue
        mod = gm.get_submodule(name)
        if not has_state(mod) and not any(u == name or u.startswith(name + ".") for u in used):
            owner_path, _, attr = name.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            delattr(owner, attr)


def users_after(node: fx.Node, anchor: fx.Node) -> list[fx.Node]:
    """Users of ``node`` that come after ``anchor`` in graph order."""
    order = {n: i for i, n in enumerate(anchor.graph.nodes)}
    return [u for u in node.users if order[u] > order[anchor]]


def is_getitem(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is operator.getitem


def iter_call_nodes(gm: fx.GraphModule, targets: Iterable | None = None):
    targets = set(targets) if targets is not None else None
    for node in gm.graph.nodes:
        if node.op == "call_function" and (targets is None or node.target in targets):
            yield node


def op_name(target) -> str:
    """Short readable name of a call_function target: 'aten.conv2d', 'slimgraph.linear_act', 'getitem'."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._schema.name.split('::')[-1]}"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return f"{target._qualified_op_name.replace('::', '.')}"
    return getattr(target, "__name__", str(target))


# ---------------------------------------------------------------------------------- GEMM weights

aten = torch.ops.aten

# ops whose weight operand (by position) is a GEMM weight in float
_FLOAT_GEMMS = {
    aten.linear.default: (1,), aten.mm.default: (0, 1), aten.matmul.default: (0, 1), aten.bmm.default: (0, 1),
    aten.addmm.default: (1, 2), aten.baddbmm.default: (1, 2), aten.conv1d.default: (1,), aten.conv2d.default: (1,),
    aten.conv3d.default: (1,), aten.conv1d.padding: (1,), aten.conv2d.padding: (1,), aten.conv3d.padding: (1,),
    aten.convolution.default: (1,), aten.conv_transpose1d.default: (1,), aten.conv_transpose2d.input: (1,),
    aten.conv_transpose3d.input: (1,), aten.einsum.default: (1,),
}
# shape-only ops a weight may pass through on its way to a GEMM
_VIEWS = {aten.t.default, aten.transpose.int, aten.permute.default, aten.view.default, aten.reshape.default,
          aten._unsafe_view.default, aten.unsqueeze.default, aten.squeeze.dim, aten.expand.default,
          aten.contiguous.default, aten.clone.default, aten._to_copy.default, aten.to.dtype, aten.select.int,
          aten.slice.Tensor, aten.index.Tensor, aten.split.Tensor, aten.chunk.default, aten.unbind.int,
          aten.split_with_sizes.default, aten.detach.default, aten.alias.default, operator.getitem}
_RNNS = {aten.lstm.input, aten.gru.input, aten.rnn_tanh.input, aten.rnn_relu.input}


def _float_gemms() -> dict:
    # slimgraph's fused float ops are registered when their package is imported: look them up late
    sgops = torch.ops.slimgraph
    extra = {getattr(sgops, n).default: (1,) for n in ("linear_act", "conv_act") if hasattr(sgops, n)}
    return {**_FLOAT_GEMMS, **extra}


def gemm_weight_consumer(node: fx.Node, depth: int = 0) -> fx.Node | None:
    """The GEMM that reads ``node`` (a constant or a view of one) as a weight operand, if any."""
    if depth > 8:
        return None
    for user in node.users:
        if user.op != "call_function":
            continue
        positions = _float_gemms().get(user.target)
        if positions is not None and any(i < len(user.args) and user.args[i] is node for i in positions):
            return user
        if user.target in _RNNS and any(node in (a if isinstance(a, (list, tuple)) else [a]) for a in user.args):
            return user
        if user.target in _VIEWS and user.args and user.args[0] is node:
            found = gemm_weight_consumer(user, depth + 1)
            if found is not None:
                return found
    return None
