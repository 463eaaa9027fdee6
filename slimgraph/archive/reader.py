"""``load``: rebuild a GraphModule from a sealed archive through the fx Graph API, from validated values only.

Order of checks: the container (bounds, layout, checksum) in :mod:`.container`, then the description's schema
here: node names and targets by grammar and allow-list, arguments by kind, input/output structures by container
allow-list, example inputs and entropy-coded tensors by size limits, before the GraphModule is built.
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from ..errors import ArchiveError, SlimgraphError
from ..ir.info import GRAPH_KEY, GraphInfo
from ..ir.propagate import refresh
from .container import SEAL_KEY, read_archive
from .schema import (
    DECODED_BYTES_FLOOR,
    DECODED_BYTES_PER_FILE_BYTE,
    MAX_EXAMPLE_NUMEL,
    MAX_HEADER_BYTES,
    MAX_NAME,
    MAX_PASS_SPEC,
    attribute_path,
    bounded_str,
    decode_arg,
    decode_call_target,
    decode_device,
    decode_dtype,
    decode_spec,
    expect,
    identifier,
    int_list,
    parse_json,
    sparsity_pattern,
    spec_children,
    tensor_key,
)
from .writer import EXAMPLE_PREFIX
from .writer import GRAPH_KEY as GRAPH_TENSOR

_METADATA_KEYS = {SEAL_KEY, "format", "format_version", "torch_version", "graph", "graph_encoding"}
_DESCRIPTION_KEYS = {"nodes", "attributes", "inputs", "output", "examples", "info"}
_INFO_KEYS = {"applied", "dynamic_batch", "sparsity", "shape_policy", "shape_notes", "dynamic_dims"}
_SHAPE_POLICIES = {"all", "batch+sequence", "batch", "static", "given"}


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> fx.GraphModule:
    """Load an archive written by :func:`slimgraph.save` into a runnable GraphModule on ``device``.

    Every failure is an :class:`~slimgraph.errors.ArchiveError` naming the file and the offending entry.
    """
    path = Path(path)
    device = decode_device(device)
    metadata, tensors = read_archive(path)
    try:
        description = _description(metadata, tensors)
        tensors = _decode_entropy(description.pop("encoded", {}), tensors, path.stat().st_size)
        return _rebuild(description, tensors, device)
    except ArchiveError as exc:
        raise ArchiveError(f"{path}: {exc}") from None
    except SlimgraphError as exc:
        raise ArchiveError(f"{path}: the rebuilt graph is not valid ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # a torch/fx failure on a schema-valid but inconsistent graph: name it, do not leak it
        raise ArchiveError(f"{path}: the graph could not be rebuilt ({type(exc).__name__}: {str(exc)[:300]}); the "
                           "file is corrupt or was written for another torch version") from None


def _description(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> dict:
    unknown = set(metadata) - _METADATA_KEYS
    if unknown:
        raise ArchiveError(f"unknown header entries {sorted(unknown)}")
    encoding = metadata.get("graph_encoding")
    if encoding == "zlib" and "graph" not in metadata:
        blob = tensors.pop(GRAPH_TENSOR, None)
        if blob is None or blob.dtype != torch.uint8 or blob.dim() != 1:
            raise ArchiveError("the compressed graph description is missing")
        text = _inflate(blob.numpy().tobytes())
    elif encoding is None and "graph" in metadata:
        text = metadata["graph"]
    else:
        raise ArchiveError(f"graph description missing or of unknown encoding {encoding!r}")
    description = expect(parse_json(text, "graph description"), dict, "graph description")
    keys = set(description)
    if not _DESCRIPTION_KEYS <= keys <= _DESCRIPTION_KEYS | {"encoded"}:
        raise ArchiveError(f"graph description has entries {sorted(keys)}, expected {sorted(_DESCRIPTION_KEYS)}")
    return description


def _inflate(blob: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(blob, MAX_HEADER_BYTES + 1)
    except zlib.error as exc:
        raise ArchiveError(f"the compressed graph description is corrupt ({exc})") from None
    if len(text) > MAX_HEADER_BYTES or inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
        raise ArchiveError(f"the compressed graph description is truncated, padded or over {MAX_HEADER_BYTES} bytes")
    return text


def _decode_entropy(encoded, tensors: dict[str, torch.Tensor], file_size: int) -> dict[str, torch.Tensor]:
    """Entropy-coded tensors, decoded within a budget proportional to the file's size."""
    expect(encoded, dict, "entropy-coded tensor table")
    if not encoded:
        return tensors
    from . import entropy  # imported only for archives that use it

    budget = DECODED_BYTES_FLOOR + DECODED_BYTES_PER_FILE_BYTE * file_size
    for key, entry in encoded.items():
        where = f"entropy-coded tensor {key!r}"
        tensor_key(key, where)
        blob = tensors.get(key)
        if blob is None or blob.dtype != torch.uint8 or blob.dim() != 1:
            raise ArchiveError(f"{where} has no uint8 byte string in the file")
        expect(entry, dict, where)
        if set(entry) != {"dtype", "shape", "meta"}:
            raise ArchiveError(f"{where}: entries {sorted(entry)} are not dtype, shape, meta")
        dtype, shape = decode_dtype(entry["dtype"], where), int_list(entry["shape"], f"{where}: shape")
        numel = 1
        for dim in shape:
            numel *= dim
        budget -= numel * dtype.itemsize
        if budget < 0:
            raise ArchiveError(f"{where}: decoded tensors would exceed {DECODED_BYTES_PER_FILE_BYTE}x the file size")
        try:
            t = entropy.decode_tensor(blob.numpy().tobytes(), expect(entry["meta"], dict, where), max_numel=numel)
        except ArchiveError as exc:
            raise ArchiveError(f"{where}: {exc}") from None
        except Exception as exc:  # the decoder must reject bad input itself; never let a bug surface raw
            raise ArchiveError(f"{where} could not be decoded ({type(exc).__name__}: {exc})") from None
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or list(t.shape) != shape:
            raise ArchiveError(f"{where} decoded to {getattr(t, 'dtype', type(t))} {list(getattr(t, 'shape', []))}, "
                               f"declared {dtype} {shape}")
        tensors[key] = t
    return tensors


def _rebuild(description: dict, tensors: dict[str, torch.Tensor], device: torch.device) -> fx.GraphModule:
    import slimgraph  # noqa: F401 - registers every torch.ops.slimgraph.* op the graph may call

    used: set[str] = set()
    root, attributes = _install_attributes(description["attributes"], tensors, device, used)
    graph, placeholders = _build_graph(description["nodes"], attributes)
    _set_codegen(graph, description["inputs"], description["output"], placeholders)
    gm = fx.GraphModule(root, graph, class_name="SlimGraphModule")
    gm.graph.lint()
    args, kwargs, dynamic = _examples(description["examples"], tensors, device, used)
    unused = set(tensors) - used
    if unused:
        raise ArchiveError(f"tensors {sorted(unused)[:5]} are stored but not referenced by the graph")
    gm.meta[GRAPH_KEY] = GraphInfo(example_args=args, example_kwargs=kwargs, source="archive",
                                   **_decode_info(description["info"], attributes))
    _seed_placeholder_values(gm, dynamic)
    try:
        refresh(gm, only_missing=False)
    except SlimgraphError as exc:
        if not any(dynamic):
            raise
        # the graph itself is unchanged and still accepts every shape it did; only its shape metadata falls back
        # to the example shapes, and the user is told. Values the failed attempt left belong to its fake mode:
        # the retry starts from none
        for node in gm.graph.nodes:
            node.meta.pop("val", None)
        _seed_placeholder_values(gm, [[] for _ in dynamic])
        refresh(gm, only_missing=False)  # a graph that fails this too is invalid: that error propagates
        note = (f"archive reload: shape propagation with symbolic input dims failed ({str(exc)[:200]}); node "
                "metadata holds the example shapes")
        gm.meta[GRAPH_KEY].shape_notes.append(note)
        _warn(note)
    return gm


def _decode_info(info, attributes: set[str]) -> dict:
    expect(info, dict, "graph info")
    if set(info) != _INFO_KEYS:
        raise ArchiveError(f"graph info has entries {sorted(info)}, expected {sorted(_INFO_KEYS)}")
    sparsity = {attribute_path(k, "sparsity entry"): sparsity_pattern(v, f"sparsity of {k!r}")
                for k, v in expect(info["sparsity"], dict, "sparsity").items()}
    missing = set(sparsity) - attributes
    if missing:
        raise ArchiveError(f"sparsity names {sorted(missing)}, which are not attributes of the graph")
    policy = info["shape_policy"]
    if policy not in _SHAPE_POLICIES:
        raise ArchiveError(f"shape_policy {str(policy)[:40]!r} is not one of {sorted(_SHAPE_POLICIES)}")
    return {
        "dynamic_batch": expect(info["dynamic_batch"], bool, "dynamic_batch"),
        "applied": [bounded_str(a, "applied pass", MAX_PASS_SPEC) for a in expect(info["applied"], list, "applied")],
        "sparsity": sparsity,
        "shape_policy": policy,
        "shape_notes": [bounded_str(n, "shape note") for n in expect(info["shape_notes"], list, "shape notes")],
        "dynamic_dims": {bounded_str(k, "dynamic input name", MAX_NAME): tuple(int_list(v, f"dynamic dims of {k!r}"))
                         for k, v in expect(info["dynamic_dims"], dict, "dynamic dims").items()},
    }


def _install_attributes(attributes, tensors, device, used: set[str]) -> tuple[nn.Module, set[str]]:
    root = nn.Module()
    installed: dict[str, torch.Tensor] = {}  # per tensor key, so tied attributes share one Parameter
    for target, entry in expect(attributes, dict, "attribute table").items():
        where = f"attribute {target!r}"
        attribute_path(target, "attribute")
        if not isinstance(entry, list) or len(entry) != 3 or entry[1] not in ("p", "b") or entry[2] not in (0, 1):
            raise ArchiveError(f"{where}: entry {str(entry)[:80]} is not [tensor key, 'p'|'b', 0|1]")
        key = entry[0]
        if not isinstance(key, str) or key not in tensors or key.startswith(("@", EXAMPLE_PREFIX)):
            raise ArchiveError(f"{where}: its tensor {str(key)[:80]!r} is not in the file")
        used.add(key)
        t = installed.get(key)
        if t is None:
            t = tensors[key].to(device)
            if entry[1] == "p":
                t = nn.Parameter(t, requires_grad=bool(entry[2]) and (t.is_floating_point() or t.is_complex()))
            installed[key] = t
        _install(root, target, t, parameter=entry[1] == "p")
    return root, set(attributes)


def _install(root: nn.Module, target: str, tensor: torch.Tensor, *, parameter: bool) -> None:
    owner = root
    *parents, name = target.split(".")
    for part in parents:
        child = owner._modules.get(part)
        if child is None:
            if part in owner._parameters or part in owner._buffers:
                raise ArchiveError(f"attribute {target!r}: {part!r} is both a tensor and a submodule")
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    if name in owner._modules or name in owner._parameters or name in owner._buffers:
        raise ArchiveError(f"attribute {target!r} is defined twice")
    if parameter and isinstance(tensor, nn.Parameter):
        owner.register_parameter(name, tensor)
    else:
        owner.register_buffer(name, tensor)


def _build_graph(nodes, attributes: set[str]) -> tuple[fx.Graph, list[fx.Node]]:
    graph, env, placeholders, done = fx.Graph(), {}, [], False
    for i, entry in enumerate(expect(nodes, list, "node list")):
        if done:
            raise ArchiveError(f"node {i} follows the output node")
        if not isinstance(entry, list) or not 3 <= len(entry) <= 5:
            raise ArchiveError(f"node {i} is not [name, op, target, args, kwargs]")
        name = identifier(entry[0], f"node {i} name")
        where, op, target = f"node '{name}'", entry[1], entry[2]
        if name in env:
            raise ArchiveError(f"{where} is defined twice")
        args = tuple(decode_arg(a, env, where) for a in expect(entry[3] if len(entry) > 3 else [], list, where))
        kwargs = {identifier(k, f"{where}: keyword"): decode_arg(v, env, where)
                  for k, v in expect(entry[4] if len(entry) > 4 else {}, dict, where).items()}
        if op == "output":
            if target is not None or len(args) != 1 or kwargs:
                raise ArchiveError(f"{where}: the output node takes exactly one argument")
            graph.output(args[0])
            done = True
            continue
        if op == "placeholder":
            target = identifier(target, f"{where}: input name")
        elif op == "get_attr":
            if attribute_path(target, f"{where}: attribute") not in attributes:
                raise ArchiveError(f"{where} reads attribute {target!r}, which the file does not define")
        elif op == "call_function":
            target = decode_call_target(target, where)
        else:
            raise ArchiveError(f"{where}: node kind {str(op)[:40]!r} is not allowed (placeholder, get_attr, "
                               "call_function, output)")
        if op != "call_function" and (args or kwargs):
            raise ArchiveError(f"{where}: a {op} node takes no arguments")
        node = graph.create_node(op, target, args, kwargs, name=name)
        if node.name != name:
            raise ArchiveError(f"{where}: name clashes with a name fx reserves")
        env[name] = node
        if op == "placeholder":
            placeholders.append(node)
    if not done:
        raise ArchiveError("the graph has no output node")
    return graph, placeholders


def _set_codegen(graph: fx.Graph, inputs, output, placeholders: list[fx.Node]) -> None:
    if inputs is None:
        if output is not None:
            raise ArchiveError("an output structure without an input structure")
        return
    from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

    expect(inputs, dict, "input structure")
    if set(inputs) != {"names", "spec"}:
        raise ArchiveError(f"input structure has entries {sorted(inputs)}, expected names, spec")
    names = [identifier(n, "input name") for n in expect(inputs["names"], list, "input names")]
    spec = decode_spec(inputs["spec"], "input structure", warn=_warn)
    # fx pastes the keyword names of the (args, kwargs) spec into source: they must be identifiers too
    top = spec_children(spec)
    if spec.type is not tuple or len(top) != 2 or top[0].type is not tuple or top[1].type is not dict:
        raise ArchiveError("input structure is not (positional args, keyword args)")
    keys = [identifier(k, "keyword input") for k in top[1].context]
    if len(set(names)) != len(names) or len(names) != top[0].num_children + len(keys):
        raise ArchiveError(f"input names {names} do not match the input structure")
    if spec.num_leaves != len(placeholders):
        raise ArchiveError(f"the input structure holds {spec.num_leaves} tensors, the graph {len(placeholders)} inputs")
    out_spec = decode_spec(output, "output structure", warn=_warn) if output is not None else None
    if out_spec is not None:
        out = next(iter(reversed(graph.nodes))).args[0]
        count = len(out) if isinstance(out, (list, tuple)) else 1
        if out_spec.num_leaves != count:
            raise ArchiveError(f"the output structure holds {out_spec.num_leaves} values, the graph returns {count}")
    graph.set_codegen(_PyTreeCodeGen(_PyTreeInfo(names, spec, out_spec)))


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=4)


def _examples(examples, tensors, device, used: set[str]) -> tuple[tuple, dict, list]:
    """Example inputs: stored tensors, or broadcast zeros of the declared shape (no memory) for spec-only ones."""
    expect(examples, dict, "example inputs")
    if set(examples) != {"args", "kwargs"}:
        raise ArchiveError(f"example inputs have entries {sorted(examples)}, expected args, kwargs")
    dynamic = []

    def value(entry, where):
        expect(entry, dict, where)
        if set(entry) == {"value"}:
            return decode_arg(entry["value"], {}, where)
        if set(entry) != {"tensor"}:
            raise ArchiveError(f"{where}: entries {sorted(entry)} are not 'tensor' or 'value'")
        spec = expect(entry["tensor"], dict, where)
        if not {"shape", "dtype"} <= set(spec) <= {"shape", "dtype", "key", "dynamic"}:
            raise ArchiveError(f"{where}: entries {sorted(spec)} are not shape, dtype, key, dynamic")
        shape, dtype = int_list(spec["shape"], f"{where}: shape"), decode_dtype(spec["dtype"], where)
        dims = int_list(spec.get("dynamic", []), f"{where}: dynamic dims", limit=max(len(shape) - 1, 0))
        dynamic.append(dims)
        if "key" in spec:
            key = spec["key"]
            if not isinstance(key, str) or not key.startswith(EXAMPLE_PREFIX) or key not in tensors:
                raise ArchiveError(f"{where}: its tensor {str(key)[:80]!r} is not in the file")
            t = tensors[key]
            if t.dtype != dtype or list(t.shape) != shape:
                raise ArchiveError(f"{where}: stored as {t.dtype} {list(t.shape)}, declared {dtype} {shape}")
            used.add(key)
            return t.to(device)
        numel = 1
        for dim in shape:
            numel *= dim
        if numel > MAX_EXAMPLE_NUMEL:
            raise ArchiveError(f"{where}: shape {shape} has more than {MAX_EXAMPLE_NUMEL} elements")
        return torch.zeros((), dtype=dtype, device=device).expand(shape)

    args = tuple(value(e, f"example input {i}") for i, e in enumerate(expect(examples["args"], list, "example args")))
    kwargs = {identifier(k, "example keyword"): value(e, f"example input {k!r}")
              for k, e in expect(examples["kwargs"], dict, "example kwargs").items()}
    return args, kwargs, dynamic


def _seed_placeholder_values(gm: fx.GraphModule, dynamic: list[list[int]]) -> None:
    """Give the inputs fake values before propagation: dims capture made symbolic stay symbolic after a reload,
    and spec-only examples get contiguous fakes (their broadcast zeros have stride 0)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    info = gm.meta[GRAPH_KEY]
    flat = pytree.tree_leaves((tuple(info.example_args), dict(info.example_kwargs)))
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    if len(flat) != len(placeholders) or len(tensors) != len(dynamic):
        raise ArchiveError(f"{len(flat)} example inputs for {len(placeholders)} graph inputs")
    mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
    dims_of = iter(dynamic)
    for node, example in zip(placeholders, flat):
        if not isinstance(example, torch.Tensor):
            continue
        dims = next(dims_of)
        if 0 in example.stride() and example.numel() > 1:
            with mode:
                node.meta["val"] = torch.empty(example.shape, dtype=example.dtype, device=example.device)
            continue
        context = StatelessSymbolicContext(
            dynamic_sizes=[DimDynamic.DYNAMIC if d in dims else DimDynamic.STATIC for d in range(example.dim())])
        node.meta["val"] = mode.from_tensor(example, symbolic_context=context)

