"""Save and load captured/optimized models without pickle.

A slimgraph archive is one safetensors file: the tensors are the module's parameters, buffers and
constants (int8 weights stay int8), and the safetensors header's metadata holds a JSON description of
the fx graph (ops by qualified name, arguments as typed JSON), the input/output pytree specs, and the
example inputs' specs. Loading never executes code from the file: op names are resolved against the
registered ``torch.ops`` namespaces and a fixed set of Python builtins, anything else is refused.

Writes are atomic (temporary file in the same directory, fsync, rename): an interrupted save never
leaves a half-written archive under the final name.
"""

from __future__ import annotations

import json
import math
import operator
import os
import tempfile
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from .errors import ArchiveError
from .ir.info import GRAPH_KEY, GraphInfo, graph_info
from .ir.propagate import refresh

FORMAT = "slimgraph"
FORMAT_VERSION = 1
_EXAMPLE_PREFIX = "__example__."
_EXAMPLE_LIMIT_BYTES = 16 * 2**20  # example inputs larger than this are stored as specs only

_BUILTINS = {f"operator.{name}": getattr(operator, name) for name in (
    "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "eq", "ne", "lt", "le",
    "gt", "ge", "and_", "or_", "not_")}
_BUILTINS.update({
    "torch.sym_int": torch.sym_int, "torch.sym_float": torch.sym_float, "torch.sym_max": torch.sym_max,
    "torch.sym_min": torch.sym_min, "torch.sym_not": torch.sym_not, "math.ceil": math.ceil,
    "math.floor": math.floor, "math.sqrt": math.sqrt,
})
_BUILTIN_NAMES = {id(fn): name for name, fn in _BUILTINS.items()}
# Packages whose pytree output types (e.g. transformers' ModelOutput) may be imported at load time.
_TRUSTED_PYTREE_PACKAGES = ("transformers", "torchvision", "timm", "diffusers")


# ------------------------------------------------------------------------------------------------ save


def save(module: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``module`` (a GraphModule from slimgraph, or any model: it is captured first) to ``path``."""
    path = Path(path)
    gm = _as_graph_module(module)
    tensors, attributes = _collect_tensors(gm)
    info = graph_info(gm)
    examples = _example_entries(info, tensors)
    description = {
        "nodes": [_encode_node(n) for n in gm.graph.nodes],
        "attributes": attributes,
        "codegen": _encode_codegen(gm.graph),
        "examples": examples,
        "graph_info": {"source": info.source, "applied": list(info.applied),
                       "dynamic_batch": info.dynamic_batch},
    }
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "torch_version": torch.__version__,
        "graph": json.dumps(description, separators=(",", ":")),
    }
    _atomic_write(path, tensors, metadata)
    return path


def _as_graph_module(module) -> fx.GraphModule:
    if isinstance(module, fx.GraphModule) and GRAPH_KEY in module.meta:
        return module
    if isinstance(module, fx.GraphModule):
        return module
    raise ArchiveError(
        f"save() needs a module produced by slimgraph (capture/optimize/prune/quantize), got "
        f"{type(module).__name__}; run sg.optimize(model, example_inputs, pipeline='') first"
    )


def _collect_tensors(gm: fx.GraphModule) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Every tensor a get_attr node reads, once per distinct tensor (tied weights stay tied)."""
    tensors: dict[str, torch.Tensor] = {}
    attributes: dict[str, dict] = {}
    by_identity: dict[int, str] = {}
    storages: dict[tuple, str] = {}
    for node in gm.graph.nodes:
        if node.op != "get_attr" or node.target in attributes:
            continue
        value = _resolve(gm, node.target)
        if not isinstance(value, torch.Tensor):
            raise ArchiveError(
                f"node '{node.name}' reads attribute {node.target!r} of type {type(value).__name__}; "
                "only tensor attributes can be saved"
            )
        kind = "parameter" if isinstance(value, nn.Parameter) else "buffer"
        key = by_identity.get(id(value))
        if key is None:
            key = node.target
            by_identity[id(value)] = key
            t = value.detach()
            if t.is_cuda or t.device.type != "cpu":
                t = t.cpu()
            t = t.contiguous()
            storage_key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
            if t.numel() and storage_key[0] and any(
                k[0] == storage_key[0] for k in storages
            ):  # a view of another saved tensor: safetensors stores each storage once, so copy
                t = t.clone()
            storages[(t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())] = key
            tensors[key] = t
        attributes[node.target] = {
            "key": key,
            "kind": kind,
            "requires_grad": bool(getattr(value, "requires_grad", False)),
        }
    return tensors, attributes


def _resolve(root, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _example_entries(info: GraphInfo, tensors: dict[str, torch.Tensor]) -> dict:
    flat_args = list(info.example_args)
    kwargs = dict(info.example_kwargs)
    total = sum(t.numel() * t.element_size() for t in [*flat_args, *kwargs.values()]
                if isinstance(t, torch.Tensor))
    store = total <= _EXAMPLE_LIMIT_BYTES

    def entry(name: str, value):
        if isinstance(value, torch.Tensor):
            spec = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
            if store:
                tensors[_EXAMPLE_PREFIX + name] = value.detach().cpu().contiguous().clone()
                spec["key"] = _EXAMPLE_PREFIX + name
            return {"tensor": spec}
        return {"value": _encode_arg(value, f"example input {name}")}

    return {
        "args": [entry(f"arg{i}", a) for i, a in enumerate(flat_args)],
        "kwargs": {k: entry(f"kw.{k}", v) for k, v in kwargs.items()},
    }


def _encode_codegen(graph: fx.Graph) -> dict | None:
    info = getattr(graph._codegen, "pytree_info", None)
    if info is None:
        return None
    try:
        return {
            "orig_args": list(info.orig_args),
            "in_spec": pytree.treespec_dumps(info.in_spec) if info.in_spec is not None else None,
            "out_spec": pytree.treespec_dumps(info.out_spec) if info.out_spec is not None else None,
        }
    except Exception as exc:
        raise ArchiveError(
            f"the model's input/output structure cannot be serialized ({exc}); register its container "
            "types with torch.utils._pytree.register_pytree_node(..., serialized_type_name=...)"
        ) from exc


def _target_name(node: fx.Node) -> str:
    t = node.target
    if node.op in ("placeholder", "get_attr", "output"):
        return str(t)
    if node.op != "call_function":
        raise ArchiveError(f"node '{node.name}' is a {node.op} node; slimgraph archives hold call_function "
                           "graphs only (capture the model with sg.capture first)")
    if isinstance(t, torch._ops.OpOverload):
        return f"op:{t.namespace}::{t._schema.name.split('::')[-1]}.{t._overloadname}"
    name = _BUILTIN_NAMES.get(id(t))
    if name is not None:
        return f"builtin:{name}"
    raise ArchiveError(f"node '{node.name}' calls {t!r}, which cannot be stored; only torch ops and "
                       "arithmetic builtins can be")


def _encode_node(node: fx.Node) -> dict:
    return {
        "name": node.name,
        "op": node.op,
        "target": _target_name(node),
        "args": _encode_arg(node.args, node.name),
        "kwargs": _encode_arg(node.kwargs, node.name),
    }


def _encode_arg(a, where: str):
    if isinstance(a, fx.Node):
        return {"$node": a.name}
    if a is None or isinstance(a, (bool, str)):
        return a
    if isinstance(a, int):
        return a
    if isinstance(a, float):
        return a if math.isfinite(a) else {"$float": repr(a)}
    if isinstance(a, tuple):
        return {"$tuple": [_encode_arg(x, where) for x in a]}
    if isinstance(a, list):
        return [_encode_arg(x, where) for x in a]
    if isinstance(a, dict):
        return {"$dict": [[k, _encode_arg(v, where)] for k, v in a.items()]}
    if isinstance(a, torch.dtype):
        return {"$dtype": str(a).removeprefix("torch.")}
    if isinstance(a, torch.device):
        return {"$device": str(a)}
    if isinstance(a, torch.memory_format):
        return {"$memory_format": str(a).removeprefix("torch.")}
    if isinstance(a, torch.layout):
        return {"$layout": str(a).removeprefix("torch.")}
    if isinstance(a, slice):
        return {"$slice": [_encode_arg(a.start, where), _encode_arg(a.stop, where), _encode_arg(a.step, where)]}
    if a is Ellipsis:
        return {"$ellipsis": True}
    raise ArchiveError(f"node '{where}' has an argument of type {type(a).__name__} that cannot be stored")


def _atomic_write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ArchiveError(f"could not write {path}: {exc}") from exc


# ------------------------------------------------------------------------------------------------ load


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> fx.GraphModule:
    """Load an archive written by :func:`save` into a runnable GraphModule on ``device``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ArchiveError(
                    f"{path} is a safetensors file but not a slimgraph archive (no slimgraph metadata); "
                    "load plain state dicts with safetensors.torch.load_file"
                )
            # clone: tensors viewed from the file buffer can sit at any alignment, and CPU kernels (oneDNN
            # convolutions) then pick other code paths whose rounding differs in the last bit; fresh
            # allocations make a loaded model reproduce the saved one bit for bit
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    except ArchiveError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArchiveError(
            f"{path} is not a readable slimgraph archive ({exc}). It may be truncated or corrupt, or a "
            "file of another format (torch.save/pickle files are never loaded, for safety)"
        ) from exc
    version = int(metadata.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise ArchiveError(f"{path} uses archive format {version}; this slimgraph reads up to "
                           f"{FORMAT_VERSION}: upgrade slimgraph")
    try:
        description = json.loads(metadata["graph"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ArchiveError(f"{path}: graph description is missing or corrupt ({exc})") from exc
    try:
        return _rebuild(description, tensors)
    except ArchiveError as exc:
        raise ArchiveError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArchiveError(f"{path}: graph description is malformed ({type(exc).__name__}: {exc})") from exc


def _rebuild(description: dict, tensors: dict[str, torch.Tensor]) -> fx.GraphModule:
    import slimgraph  # noqa: F401 - registers every torch.ops.slimgraph.* op (kernels and int8 graph ops)

    root = nn.Module()
    installed: dict[str, torch.Tensor] = {}  # per tensor key, so tied attributes share one Parameter
    for target, attr in description["attributes"].items():
        if attr["key"] not in tensors:
            raise ArchiveError(f"tensor {attr['key']!r} for attribute {target!r} is missing")
        installed[attr["key"]] = _install(root, target, installed.get(attr["key"], tensors[attr["key"]]), attr)
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for spec in description["nodes"]:
        op, name = spec["op"], spec["name"]
        args = _decode_arg(spec["args"], env)
        kwargs = _decode_arg(spec["kwargs"], env)
        if op == "output":
            graph.output(args[0])
            continue
        target = _decode_target(op, spec["target"])
        node = graph.create_node(op, target, tuple(args), dict(kwargs), name=name)
        if node.name != name:
            raise ArchiveError(f"duplicate node name {name!r}")
        env[name] = node
    codegen = description.get("codegen")
    if codegen:
        from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

        graph._codegen = _PyTreeCodeGen(_PyTreeInfo(
            codegen["orig_args"], _load_spec(codegen["in_spec"]), _load_spec(codegen["out_spec"])))
    gm = fx.GraphModule(root, graph, class_name="SlimGraphModule")
    args, kwargs = _decode_examples(description.get("examples", {}), tensors)
    gi = description.get("graph_info", {})
    gm.meta[GRAPH_KEY] = GraphInfo(example_args=args, example_kwargs=kwargs, source="archive",
                                   dynamic_batch=bool(gi.get("dynamic_batch", False)),
                                   applied=list(gi.get("applied", [])))
    refresh(gm, only_missing=False)
    return gm


def _install(root: nn.Module, target: str, tensor: torch.Tensor, attr: dict) -> torch.Tensor:
    owner = root
    *parents, name = target.split(".")
    for part in parents:
        child = getattr(owner, part, None)
        if child is None:
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    if attr.get("kind") == "parameter":
        if not isinstance(tensor, nn.Parameter):
            tensor = nn.Parameter(tensor, requires_grad=bool(attr.get("requires_grad")) and tensor.is_floating_point())
        owner.register_parameter(name, tensor)
    else:
        owner.register_buffer(name, tensor)
    return tensor


def _decode_target(op: str, target: str):
    if op in ("placeholder", "get_attr"):
        return target
    if op != "call_function":
        raise ArchiveError(f"unsupported node kind {op!r}")
    kind, _, name = target.partition(":")
    if kind == "builtin":
        if name not in _BUILTINS:
            raise ArchiveError(f"unknown builtin {name!r}")
        return _BUILTINS[name]
    if kind == "op":
        namespace, _, rest = name.partition("::")
        opname, _, overload = rest.rpartition(".")
        try:
            return getattr(getattr(getattr(torch.ops, namespace), opname), overload)
        except (AttributeError, RuntimeError):
            raise ArchiveError(
                f"the graph uses op {namespace}::{opname}.{overload}, which is not registered in this "
                "process; import the package that defines it before loading"
            ) from None
    raise ArchiveError(f"unknown target {target!r}")


def _decode_arg(a, env: dict[str, fx.Node]):
    if isinstance(a, list):
        return [_decode_arg(x, env) for x in a]
    if not isinstance(a, dict):
        return a
    if "$node" in a:
        return env[a["$node"]]
    if "$tuple" in a:
        return tuple(_decode_arg(x, env) for x in a["$tuple"])
    if "$dict" in a:
        return {k: _decode_arg(v, env) for k, v in a["$dict"]}
    if "$float" in a:
        return float(a["$float"])
    if "$dtype" in a:
        return _torch_attr(a["$dtype"], torch.dtype)
    if "$device" in a:
        return torch.device(a["$device"])
    if "$memory_format" in a:
        return _torch_attr(a["$memory_format"], torch.memory_format)
    if "$layout" in a:
        return _torch_attr(a["$layout"], torch.layout)
    if "$slice" in a:
        return slice(*(_decode_arg(x, env) for x in a["$slice"]))
    if "$ellipsis" in a:
        return Ellipsis
    raise ArchiveError(f"unknown argument encoding {sorted(a)}")


def _torch_attr(name: str, kind: type):
    value = getattr(torch, name, None)
    if not isinstance(value, kind):
        raise ArchiveError(f"{name!r} is not a torch {kind.__name__}")
    return value


def _load_spec(text: str | None):
    if text is None:
        return None
    try:
        return pytree.treespec_loads(text)
    except Exception as first:
        # Output containers such as transformers' ModelOutput register their pytree type on import.
        import importlib

        for entry in json.loads(text)[1:]:
            for type_name in _type_names(entry):
                package = type_name.split(".")[0]
                if package in _TRUSTED_PYTREE_PACKAGES:
                    try:
                        importlib.import_module(type_name.rpartition(".")[0])
                    except ImportError:
                        pass
        try:
            return pytree.treespec_loads(text)
        except Exception:
            raise ArchiveError(f"cannot rebuild the model's input/output structure ({first}); import the "
                               "package that defines its output type before loading") from first


def _type_names(entry) -> list[str]:
    names = []
    if isinstance(entry, dict):
        if isinstance(entry.get("type"), str):
            names.append(entry["type"])
        for child in entry.get("children_spec", []) or []:
            names.extend(_type_names(child))
    return names


def _decode_examples(examples: dict, tensors: dict[str, torch.Tensor]) -> tuple[tuple, dict]:
    def value(entry):
        if "tensor" in entry:
            spec = entry["tensor"]
            if "key" in spec and spec["key"] in tensors:
                return tensors[spec["key"]]
            dtype = _torch_attr(spec["dtype"], torch.dtype)
            return torch.zeros(spec["shape"], dtype=dtype)
        return _decode_arg(entry["value"], {})

    args = tuple(value(e) for e in examples.get("args", []))
    kwargs = {k: value(e) for k, e in examples.get("kwargs", {}).items()}
    return args, kwargs
