"""Export float, pruned and quantized slimgraph models to ONNX.

    sg.export_onnx(model, (x,), "model.onnx")

The model is captured first if it is a plain ``nn.Module``; slimgraph GraphModules are exported as they are.
``torch.onnx.export(dynamo=True)`` re-traces the graph: ``linear_act``/``conv_act`` decompose into ATen ops on
the way, and the int8 ops translate through :data:`slimgraph.quant.onnx_ops.TRANSLATIONS` into QDQ form
(QuantizeLinear / DequantizeLinear with int8 zero points around Gemm, Conv and MatMul), the form ONNX Runtime
and TensorRT turn back into int8 kernels. The input dims the captured graph keeps symbolic stay dynamic axes
(named batch, sequence, height, width), and outputs are named after the model's outputs (``last_hidden_state``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import warnings
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from .errors import InputError, SlimgraphError
from .ir import dynamic
from .ir.capture import capture
from .ir.info import GRAPH_KEY, graph_info
from .ir.rnn_shapes import symbolic_rnn_shapes

FORM_KEY = "slimgraph.onnx_form"  # metadata_props key: "qdq" (portable) | "avx2" | "vnni" (ORT CPU forms)


class ExportError(SlimgraphError):
    """The model could not be written as ONNX."""


def export_onnx(model: nn.Module, example_inputs, path: str | os.PathLike, *, example_kwargs: dict | None = None,
                opset: int = 18) -> Path:
    """Write ``model`` to ``path`` as ONNX (one file, weights included); returns the path.

    Args:
        model: an ``nn.Module`` or a slimgraph GraphModule (captured, optimized, pruned or quantized).
        example_inputs: tuple of positional inputs; ``example_kwargs`` the keyword inputs.
        opset: ONNX opset, at least 13 (per-channel QuantizeLinear/DequantizeLinear).
    """
    if opset < 13:
        raise InputError(f"opset {opset} is too old: per-channel QuantizeLinear/DequantizeLinear need opset >= 13")
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    kwargs = dict(example_kwargs or {})
    if isinstance(model, fx.GraphModule) and GRAPH_KEY in model.meta:
        gm = model
    elif isinstance(model, nn.Module):
        gm = capture(model, args, kwargs)
    else:
        raise InputError(f"export_onnx() needs an nn.Module, got {type(model).__name__}")
    from .ops.sparse_linear import register_onnx_translation
    from .quant.onnx_ops import TRANSLATIONS, export_form  # onnxscript is only needed here

    register_onnx_translation()  # a lowered sparse graph may come from an archive loaded in this process

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced = _copying_reshapes(gm)
    shared = _dynamic_shapes(gm, args, kwargs, shared=True)
    plain = _dynamic_shapes(gm, args, kwargs)
    attempts = [s for s in (shared, plain) if s is not None] + [None]
    failures = []
    for shapes in attempts:
        if shapes is None and failures:  # the file will take the example's shapes only: never silently
            dynamic.warn(f"ONNX export with dynamic axes failed ({type(failures[-1]).__name__}: "
                             f"{str(failures[-1])[:300]}); the file is exported with static shapes")
        try:
            with _quiet(), symbolic_rnn_shapes():  # an RNN's sequence length stays a dynamic axis
                program = torch.onnx.export(traced, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                                            custom_translation_table=dict(TRANSLATIONS), dynamic_shapes=shapes,
                                            verbose=False)
            break
        except Exception as exc:  # noqa: BLE001 - both attempts are reported below
            failures.append(exc)
    else:
        first = "" if len(failures) == 1 else (f" (with dynamic axes: {type(failures[0]).__name__}: "
                                               f"{str(failures[0])[:500]})")
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {type(failures[-1]).__name__}: "
                          f"{failures[-1]}{first}") from failures[-1]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        program.save(str(tmp), external_data=False)
        _readable_names(tmp, _output_names(gm, args, kwargs), _dim_names(gm, args, kwargs),
                        {FORM_KEY: export_form()})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _copying_reshapes(gm: fx.GraphModule) -> fx.GraphModule:
    """The graph with every ``contiguous`` written as an explicit contiguous ``clone``, and one more before
    every ``reshape`` of a tensor not known to be contiguous.

    # contiguous(x)            =>  clone(x, contiguous)
    # reshape(transpose(x))    =>  reshape(clone(transpose(x), contiguous))
    The exporter decomposes ``contiguous`` away and turns the ``reshape`` after it into a ``view``, which then
    fails on the transposed strides (T5's ``attn_output.transpose(1, 2).contiguous()`` then ``reshape``:
    "Cannot view a tensor with shape [2, 16, 4, 16] and strides (1024, 16, 256, 1)"); ``clone`` is kept as an
    ONNX op. The copies cost nothing in ONNX (its tensors have no strides). A new GraphModule sharing the
    weights: the caller's is left as it was."""
    from torch._prims_common import is_contiguous_or_false

    aten = torch.ops.aten

    def needs_copy(node: fx.Node) -> bool:
        if node.op != "call_function":
            return False
        if node.target is aten.contiguous.default:
            return True
        source = node.args[0] if node.target is aten.reshape.default and node.args else None
        return (isinstance(source, fx.Node) and isinstance(source.meta.get("val"), torch.Tensor)
                and not is_contiguous_or_false(source.meta["val"]))

    todo = {n.name for n in gm.graph.nodes if needs_copy(n)}
    if not todo:
        return gm
    copied = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    for node in [n for n in copied.graph.nodes if n.name in todo]:
        with copied.graph.inserting_before(node):
            clone = copied.graph.call_function(aten.clone.default, (node.args[0],),
                                               {"memory_format": torch.contiguous_format})
        if node.target is aten.contiguous.default:
            node.replace_all_uses_with(clone)
            copied.graph.erase_node(node)
        else:
            node.replace_input_with(node.args[0], clone)
    copied.recompile()
    return copied


def _dynamic_shapes(gm: fx.GraphModule, args: tuple, kwargs: dict, *, shared: bool = False):
    """dynamic_shapes keeping symbolic exactly the input dims the captured graph keeps symbolic.

    ``shared``: inputs of one example shape (token ids and their attention mask) share their axes, so export
    knows the mask's batch and length are the ids'. Without that, a graph whose ops only broadcast the two can
    leave a hidden size as an expression of unrelated sizes, which the int8 translations cannot take
    (CLIP's text tower). None when no two inputs share a shape (the plain spec then says the same)."""
    dims = graph_info(gm).dynamic_dims
    if not dims:
        return None
    dim_for = None
    if shared:
        dim_for = _shared_axes(gm, args, kwargs, dims)
        if dim_for is None:
            return None
    spec = dynamic.spec_for_dims(gm, args, kwargs, dims, dim_for)
    return dynamic.export_spec(spec, args, kwargs, gm)


def _shared_axes(gm: fx.GraphModule, args: tuple, kwargs: dict, dims: dict[str, tuple[int, ...]]):
    """``dim_for(name, d)`` giving one named Dim per (example shape, dim) that several inputs share, else None."""
    from torch.export import Dim

    shapes = {name: tuple(value.shape) for name, value in zip(dynamic.leaf_names(gm, args, kwargs),
                                                              pytree.tree_leaves((args, kwargs)))
              if isinstance(value, torch.Tensor) and name in dims}
    groups: dict[tuple, list[str]] = {}
    for name, shape in shapes.items():
        groups.setdefault((shape, dims[name]), []).append(name)
    shared = {name: i for i, members in enumerate(m for m in groups.values() if len(m) > 1) for name in members}
    if not shared:
        return None
    made: dict[tuple[int, int], object] = {}

    def dim_for(name: str, d: int):
        if name not in shared:
            return Dim.AUTO
        key = (shared[name], d)
        if key not in made:
            made[key] = Dim(f"{'batch' if d == 0 else 'sequence' if d == 1 else f'dim{d}'}_{shared[name]}")
        return made[key]

    return dim_for


def _output_names(gm: fx.GraphModule, args: tuple, kwargs: dict) -> list[str] | None:
    """The model's own output names (``last_hidden_state``, ``logits``; ``output_0``... for plain tuples)."""
    with torch.no_grad():
        out = gm(*args, **kwargs)
    names = []
    for path, leaf in pytree.tree_flatten_with_path(out)[0]:
        if not isinstance(leaf, torch.Tensor):
            continue
        name = re.sub(r"\W+", "_", pytree.keystr(path)).strip("_")
        names.append(name if name and not name[0].isdigit() else f"output_{name or len(names)}")
    return names if len(set(names)) == len(names) else None


def _dim_names(gm: fx.GraphModule, args: tuple, kwargs: dict) -> dict[tuple[str, int], str]:
    """(input name, dim) -> a readable ONNX dim name for the graph's dynamic dims: batch, sequence, height, width."""
    names = {}
    for name, dims in graph_info(gm).dynamic_dims.items():
        for d in dims:
            names[(name, d)] = "batch" if d == 0 else {1: "sequence"}.get(d, f"dim{d}")
    for name, value in zip(dynamic.leaf_names(gm, args, kwargs), pytree.tree_leaves((args, kwargs))):
        if isinstance(value, torch.Tensor) and value.dim() == 4:
            for d, label in ((2, "height"), (3, "width")):
                if (name, d) in names:
                    names[(name, d)] = label
    return names


def _readable_names(path: Path, outputs: list[str] | None, dims: dict[tuple[str, int], str],
                    metadata: dict[str, str]) -> None:
    """Rename the exported file's outputs after the model's outputs and its symbolic dims (s0, s1...) after what
    they are, so ONNX Runtime / TensorRT users see ``input_ids[batch, sequence] -> last_hidden_state``; record
    ``metadata`` in the file's metadata_props (which CPUs an ORT-form file is exact on must travel with it)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    symbols = {}
    for value in graph.input:
        for d, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.dim_param and (value.name, d) in dims:
                symbols.setdefault(dim.dim_param, dims[(value.name, d)])
    taken = set(symbols.values())
    if len(taken) < len(set(symbols)):  # two different symbols got one name (two unrelated batch dims): number them
        seen: dict[str, int] = {}
        for sym, name in symbols.items():
            seen[name] = seen.get(name, 0) + 1
            symbols[sym] = name if seen[name] == 1 else f"{name}_{seen[name]}"
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_param = symbols[dim.dim_param]
    if outputs is not None and len(outputs) == len(graph.output):
        existing = {v.name for v in graph.input} | {i.name for i in graph.initializer}
        rename = {o.name: new for o, new in zip(graph.output, outputs) if o.name not in existing}
        if not set(rename.values()) & ({n for node in graph.node for n in node.output} - set(rename)):
            for node in graph.node:
                node.input[:] = [rename.get(n, n) for n in node.input]
                node.output[:] = [rename.get(n, n) for n in node.output]
            for value in [*graph.output, *graph.value_info]:
                value.name = rename.get(value.name, value.name)
    for key, value in metadata.items():
        entry = next((p for p in model.metadata_props if p.key == key), None) or model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints progress lines and warns about ops of packages we never use (torchvision)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.onnx._internal.exporter._registration")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
