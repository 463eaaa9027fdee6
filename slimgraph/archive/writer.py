"""``save``: describe a GraphModule as data (the schema of :mod:`.schema`) and write it as a sealed archive."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from ..errors import ArchiveError
from ..ir.info import GraphInfo, graph_info
from .container import write_archive
from .schema import attribute_path, dtype_name, encode_arg, encode_spec, encode_target, identifier

EXAMPLE_PREFIX = "@example/"
GRAPH_KEY = "@graph"
_EXAMPLE_LIMIT_BYTES = 16 * 2**20  # example inputs larger than this are stored as specs only
_MAX_META_BYTES = 64 * 2**10


def save(module: nn.Module, path: str | os.PathLike, *, compress: bool = False) -> Path:
    """Write ``module`` (a GraphModule from slimgraph) to ``path`` as a pickle-free, checksummed archive.

    With ``compress=True`` every tensor is entropy coded by :mod:`slimgraph.archive.entropy` and the graph
    description is zlib-compressed; :func:`slimgraph.load` reads both kinds.
    """
    path = Path(path)
    if not isinstance(module, fx.GraphModule):
        raise ArchiveError(
            f"save() needs a module produced by slimgraph (capture/optimize/prune/quantize), got "
            f"{type(module).__name__}; run sg.optimize(model, example_inputs, pipeline='') first")
    try:
        tensors, metadata = _describe(module, compress)
    except ArchiveError:
        raise
    except Exception as exc:  # a module state the schema did not foresee: say so instead of leaking the trace
        raise ArchiveError(f"cannot save {type(module).__name__} to {path}: {type(exc).__name__}: {exc}") from exc
    write_archive(path, tensors, metadata)
    return path


def _describe(module: fx.GraphModule, compress: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from . import FORMAT, FORMAT_VERSION

    tensors, attributes = _collect_tensors(module)
    info = graph_info(module)
    description = {
        "nodes": [_encode_node(n) for n in module.graph.nodes],
        "attributes": attributes,
        **_encode_io(module.graph),
        "examples": _example_entries(module, info, tensors),
        "info": _encode_info(info),
    }
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "torch_version": torch.__version__}
    if compress:
        description["encoded"] = _entropy_encode(tensors)
        graph = zlib.compress(json.dumps(description, separators=(",", ":")).encode(), 9)
        tensors[GRAPH_KEY] = _bytes_tensor(graph)
        metadata["graph_encoding"] = "zlib"
    else:
        metadata["graph"] = json.dumps(description, separators=(",", ":"))
    return tensors, metadata


def _encode_info(info: GraphInfo) -> dict:
    return {"applied": list(info.applied), "dynamic_batch": bool(info.dynamic_batch),
            "sparsity": dict(info.sparsity), "shape_policy": info.shape_policy, "shape_notes": list(info.shape_notes),
            "dynamic_dims": {name: list(dims) for name, dims in info.dynamic_dims.items()}}


def _collect_tensors(gm: fx.GraphModule) -> tuple[dict[str, torch.Tensor], dict[str, list]]:
    """Every tensor a get_attr node reads, once per distinct tensor (tied weights stay tied)."""
    tensors: dict[str, torch.Tensor] = {}
    attributes: dict[str, list] = {}
    key_of: dict[int, str] = {}
    for node in gm.graph.nodes:
        if node.op != "get_attr" or node.target in attributes:
            continue
        value = _resolve(gm, node)
        key = key_of.setdefault(id(value), node.target)
        if key == node.target:
            tensors[key] = value.detach().cpu().contiguous()
        attributes[node.target] = [key, "p" if isinstance(value, nn.Parameter) else "b",
                                   int(bool(value.requires_grad))]
    return tensors, attributes


def _resolve(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, torch.Tensor):
        raise ArchiveError(f"node '{node.name}' reads attribute {node.target!r} of type {type(obj).__name__}; "
                           "only tensor attributes can be saved")
    return obj


def _encode_node(node: fx.Node) -> list:
    # the loader's grammar, checked here too, so that save never writes a file load would refuse
    identifier(node.name, "node name")
    target = encode_target(node)
    if node.op == "placeholder":
        identifier(target, f"node '{node.name}': input name")
    elif node.op == "get_attr":
        attribute_path(target, f"node '{node.name}': attribute")
    entry = [node.name, node.op, target, [encode_arg(a, node.name) for a in node.args]]
    if node.kwargs:
        entry.append({identifier(k, f"node '{node.name}': keyword"): encode_arg(v, node.name)
                      for k, v in node.kwargs.items()})
    elif not node.args:
        entry.pop()
    return entry


def _encode_io(graph: fx.Graph) -> dict:
    info = getattr(graph._codegen, "pytree_info", None)
    if info is None:
        return {"inputs": None, "output": None}
    return {
        "inputs": {"names": [identifier(name, "input name") for name in info.orig_args],
                   "spec": encode_spec(info.in_spec, "the model's inputs") if info.in_spec is not None else None},
        "output": encode_spec(info.out_spec, "the model's output") if info.out_spec is not None else None,
    }


def _example_entries(gm: fx.GraphModule, info: GraphInfo, tensors: dict[str, torch.Tensor]) -> dict:
    values = [*info.example_args, *info.example_kwargs.values()]
    store = sum(t.numel() * t.element_size() for t in values if isinstance(t, torch.Tensor)) <= _EXAMPLE_LIMIT_BYTES
    dynamic = _dynamic_dims(gm)

    def entry(position: int, name: str, value):
        if not isinstance(value, torch.Tensor):
            return {"value": encode_arg(value, f"example input {name}")}
        spec = {"shape": list(value.shape), "dtype": dtype_name(value.dtype)}
        if dynamic.get(position):
            spec["dynamic"] = dynamic[position]
        if store and value.device.type != "meta":  # meta tensors have no values: shape and dtype are all there is
            spec["key"] = EXAMPLE_PREFIX + name
            tensors[spec["key"]] = value.detach().cpu().contiguous()
        return {"tensor": spec}

    n = len(info.example_args)
    return {"args": [entry(i, f"arg{i}", a) for i, a in enumerate(info.example_args)],
            "kwargs": {k: entry(n + i, f"kw.{k}", v) for i, (k, v) in enumerate(info.example_kwargs.items())}}


def _dynamic_dims(gm: fx.GraphModule) -> dict[int, list[int]]:
    """Per placeholder (in input order), the dims capture made symbolic, so a reload marks them dynamic again."""
    out = {}
    for i, node in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            # a SymInt the shape environment has pinned to a number (e.g. by a matmul) is static
            dims = [d for d, s in enumerate(val.shape) if not is_concrete_int(s)]
            if dims:
                out[i] = dims
    return out


def _entropy_encode(tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    from . import entropy  # imported only when compressing: the codec is optional for plain archives

    encoded = {}
    for key, t in list(tensors.items()):
        blob, meta = entropy.encode_tensor(t)
        text = json.dumps(meta, separators=(",", ":"))
        if len(text) > _MAX_META_BYTES:
            raise ArchiveError(f"entropy coding of tensor {key!r} produced {len(text)} bytes of metadata "
                               f"(limit {_MAX_META_BYTES})")
        encoded[key] = {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "meta": meta}
        tensors[key] = _bytes_tensor(blob)
    return encoded


def _bytes_tensor(blob: bytes) -> torch.Tensor:
    # frombuffer refuses an empty buffer
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.empty(0, dtype=torch.uint8)
