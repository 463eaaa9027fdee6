"""Fake-tensor propagation and per-node metadata.

``propagate(gm)`` gives every node a ``meta["val"]`` (a FakeTensor, or a tuple of them) and
``meta["tensor_meta"]`` as torch expects, then ``annotate(gm)`` derives one typed
:class:`~slimgraph.ir.info.NodeInfo` per node (shapes, dtype, parameter count, MACs/FLOPs, owning
module). Capture already provides ``val`` for every node, so after a local rewrite only the new nodes
need propagating (``only_missing=True``), which keeps the pass pipeline fast on large graphs.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch._dispatch.python import enable_python_dispatcher
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from ..errors import VerificationError
from .cost import node_flops, node_macs
from .dynamic import is_symbolic
from .graph_utils import get_attr_tensor, op_name
from .info import NODE_KEY, NodeInfo, TensorSpec, graph_info
from .rnn_shapes import symbolic_rnn_shapes


def _fake_mode_for(gm: fx.GraphModule) -> FakeTensorMode:
    vals = [n.meta["val"] for n in gm.graph.nodes if "val" in n.meta]
    mode = detect_fake_mode(pytree.tree_leaves(vals)) if vals else None
    if mode is None:
        mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    return mode


def _example_placeholder_values(gm: fx.GraphModule) -> list:
    info = graph_info(gm)
    spec = getattr(gm, "_in_spec", None)
    if spec is not None:
        flat, _ = pytree.tree_flatten((tuple(info.example_args), dict(info.example_kwargs)))
        return flat
    return list(info.example_args)


def propagate(gm: fx.GraphModule, *, only_missing: bool = True, before_node=None) -> fx.GraphModule:
    """Fill ``meta["val"]``/``["tensor_meta"]`` by running the graph on fake tensors.

    ``before_node(node)``, if given, runs just before each call node is evaluated, when its inputs already
    have their new values: rewrites that derive arguments from input shapes (pruning's expand sizes) use it.
    """
    from torch.fx.passes.shape_prop import _extract_tensor_metadata

    mode = _fake_mode_for(gm)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    needs_examples = any("val" not in n.meta or not only_missing for n in placeholders)
    examples = _example_placeholder_values(gm) if needs_examples else []

    def val_of(a):
        if isinstance(a, fx.Node):
            if "val" not in a.meta:
                raise VerificationError(f"node '{a.name}' has no value; propagate it before its users")
            return a.meta["val"]
        return a

    # the Python dispatcher lets ops whose C++ composite kernels want concrete sizes (upsample_bilinear2d.vec
    # with a symbolic output size, baddbmm's beta/alpha path) run their symbolic-aware Python decompositions,
    # as they did when torch.export traced them
    with mode, enable_python_dispatcher(), symbolic_rnn_shapes():  # RNNs: no guard on a symbolic sequence
        for i, node in enumerate(placeholders):
            if only_missing and "val" in node.meta:
                continue
            if i >= len(examples) or not isinstance(examples[i], torch.Tensor):
                if i < len(examples):
                    node.meta["val"] = examples[i]
                    continue
                raise VerificationError(
                    f"placeholder '{node.name}' has no example value; pass example inputs when capturing"
                )
            old = node.meta.get("val")
            # static shapes: symbolic dims exist only where capture (torch.export) created them; making every
            # dim of a reloaded graph symbolic costs seconds of guard solving on window-attention models
            node.meta["val"] = old if old is not None else mode.from_tensor(examples[i], static_shapes=True)
        for node in gm.graph.nodes:
            if node.op in ("placeholder", "output") or (only_missing and "val" in node.meta):
                continue
            if node.op == "get_attr":
                t = get_attr_tensor(gm, node)
                if t is not None:
                    node.meta["val"] = mode.from_tensor(t, static_shapes=True)
                continue
            if node.op != "call_function":
                continue
            if before_node is not None:
                before_node(node)
            args = pytree.tree_map_only(fx.Node, val_of, node.args)
            kwargs = pytree.tree_map_only(fx.Node, val_of, node.kwargs)
            try:
                node.meta["val"] = node.target(*args, **kwargs)
            except Exception as exc:  # report which node broke shape propagation
                raise VerificationError(
                    f"shape propagation failed at node '{node.name}' ({op_name(node.target)}): {exc}"
                ) from exc
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and ("tensor_meta" not in node.meta or not only_missing):
            node.meta["tensor_meta"] = _extract_tensor_metadata(val)
    return gm


def _hint(s) -> int:
    if isinstance(s, int):
        return s
    try:
        return int(s.node.hint) if s.node.hint is not None else int(s)
    except Exception:
        return 1


def tensor_spec(val) -> TensorSpec | None:
    if not isinstance(val, torch.Tensor):
        return None
    shape = tuple(_hint(s) for s in val.shape)
    dyn = tuple(i for i, s in enumerate(val.shape) if is_symbolic(s))
    return TensorSpec(shape, val.dtype, dyn)


def _spec_tree(val) -> tuple[TensorSpec | None, ...]:
    if isinstance(val, (tuple, list)):
        return tuple(tensor_spec(v) for v in val)
    return (tensor_spec(val),)


def _owner(node: fx.Node) -> tuple[str, str]:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return "", ""
    path, typ = list(stack.values())[-1]
    typ = typ if isinstance(typ, str) else getattr(typ, "__qualname__", str(typ))
    return path, typ.rsplit(".", 1)[-1]


def annotate(gm: fx.GraphModule) -> fx.GraphModule:
    """Derive a NodeInfo for every node from its fake value (call :func:`propagate` first)."""
    for node in gm.graph.nodes:
        if node.op == "output":
            continue
        outputs = _spec_tree(node.meta.get("val"))
        info = NodeInfo(outputs=outputs)
        if node.op == "get_attr":
            t = get_attr_tensor(gm, node)
            info.params = t.numel() if t is not None else 0
        elif node.op == "call_function":
            arg_specs = [
                tensor_spec(a.meta.get("val")) if isinstance(a, fx.Node) else None for a in node.args
            ]
            info.params = sum(
                a.meta["val"].numel()
                for a in node.all_input_nodes
                if a.op == "get_attr" and isinstance(a.meta.get("val"), torch.Tensor)
            )
            info.macs = node_macs(node.target, arg_specs, outputs[0] if outputs else None)
            info.flops = node_flops(info.macs, outputs[0] if outputs else None)
            info.module, info.module_type = _owner(node)
        node.meta[NODE_KEY] = info
    return gm


def refresh(gm: fx.GraphModule, *, only_missing: bool = True) -> fx.GraphModule:
    """propagate + annotate: what every pass calls after it rewrote the graph."""
    propagate(gm, only_missing=only_missing)
    return annotate(gm)


def copy_provenance(new: fx.Node, old: fx.Node) -> None:
    """Let a replacement node inherit where it came from (module path, source line)."""
    for key in ("nn_module_stack", "stack_trace", "source_fn_stack", "from_node"):
        if key in old.meta and key not in new.meta:
            new.meta[key] = old.meta[key]


def invalidate(*nodes: fx.Node) -> None:
    """Forget the fake values of rewritten nodes so the next refresh recomputes them."""
    for n in nodes:
        n.meta.pop("val", None)
        n.meta.pop("tensor_meta", None)
        n.meta.pop(NODE_KEY, None)
