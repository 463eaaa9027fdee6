"""The archive's explicit schema: identifier grammar, allow-lists, bounded JSON, and typed values.

Everything the loader takes from a file passes through this module before it reaches torch.fx: fx pastes node
names, placeholder targets, attribute paths and keyword names into Python source it then executes, and
resolves attribute paths with ``getattr`` chains, so a string that is not a plain identifier is code. Nothing
here imports a module or looks up an attribute whose name comes from the file, except ``torch.ops.aten`` /
``torch.ops.slimgraph`` overloads, which are checked against their schema after the lookup.
"""

from __future__ import annotations

import collections
import json
import keyword
import math
import operator
import re

import torch
import torch.fx as fx
import torch.nn as nn
import torch.utils._pytree as pytree

from ..errors import ArchiveError

# ------------------------------------------------------------------------------------------------ limits
# Sane bounds, checked before anything is allocated. A file can make the loader allocate at most its own size
# (raw tensors) plus a bounded multiple for entropy-coded tensors; everything else is small.
MAX_HEADER_BYTES = 64 * 2**20
MAX_JSON_DEPTH = 64
MAX_NDIM = 32
MAX_DIM = 2**40
MAX_NAME = 256
MAX_STRING = 4096
MAX_PASS_SPEC = 2**20  # an applied pass with per-layer options names every layer of a big model
MAX_ENTRIES = 2**20  # nodes, attributes, tensors
MAX_EXAMPLE_NUMEL = 2**40  # examples stored as specs are broadcast zeros: no memory, only a sane bound
DECODED_BYTES_PER_FILE_BYTE = 1024  # entropy-coded tensors may expand at most this much ...
DECODED_BYTES_FLOOR = 64 * 2**20  # ... plus this, over the whole archive

# ------------------------------------------------------------------------------------------------ grammar
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_QUALNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")
_INDEX = re.compile(r"(0|[1-9][0-9]{0,8})\Z")
TENSOR_KEY = re.compile(r"@?[A-Za-z0-9_][A-Za-z0-9_.:/]{0,255}\Z")
_SPARSITY = re.compile(r"(unstructured|[1-9][0-9]{0,2}:[1-9][0-9]{0,2}|[1-9][0-9]{0,3}x[1-9][0-9]{0,3})\Z")
# attribute names a saved path may not use: they would shadow the module machinery fx and nn rely on
_ROOT_RESERVED = frozenset(dir(fx.GraphModule))
_CHILD_RESERVED = frozenset(dir(nn.Module))


def identifier(value, what: str) -> str:
    """A Python identifier that is not a keyword, not ``self`` and not a dunder (``__x__`` names interpreter
    internals). A leading double underscore alone is allowed: fx names an ``aten.__and__`` node ``__and___tensor``,
    and the generated code is a plain function, where such names are ordinary locals."""
    if not isinstance(value, str) or len(value) > MAX_NAME or not _IDENT.match(value):
        raise ArchiveError(f"{what} {_show(value)} is not a plain identifier")
    if keyword.iskeyword(value) or value.startswith("__") and value.endswith("__") or value == "self":
        raise ArchiveError(f"{what} {_show(value)} is a reserved name")
    return value


def attribute_path(value, what: str) -> str:
    """A dotted path of identifiers or list indices (``layers.0.weight``) naming a tensor attribute."""
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise ArchiveError(f"{what} {_show(value)} is not an attribute path")
    for i, part in enumerate(value.split(".")):
        if _INDEX.match(part):
            continue
        if not _IDENT.match(part) or keyword.iskeyword(part) or part.startswith("__"):
            raise ArchiveError(f"{what} {_show(value)}: segment {_show(part)} is not a plain identifier")
        if part in (_CHILD_RESERVED if i else _ROOT_RESERVED):
            raise ArchiveError(f"{what} {_show(value)}: segment {part!r} would shadow a module attribute")
    return value


def tensor_key(value, what: str) -> str:
    if not isinstance(value, str) or not TENSOR_KEY.match(value):
        raise ArchiveError(f"{what} {_show(value)} is not a valid tensor key")
    return value


def sparsity_pattern(value, what: str) -> str:
    if not isinstance(value, str) or not _SPARSITY.match(value):
        raise ArchiveError(f"{what}: sparsity pattern {_show(value)} is not 'unstructured', 'N:M' or 'RxC'")
    return value


def bounded_str(value, what: str, limit: int = MAX_STRING) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ArchiveError(f"{what} must be a string of at most {limit} characters, got {_show(value)}")
    return value


def int_list(value, what: str, *, limit: int = MAX_DIM, max_len: int = MAX_NDIM) -> list[int]:
    if not isinstance(value, list) or len(value) > max_len:
        raise ArchiveError(f"{what} must be a list of at most {max_len} integers, got {_show(value)}")
    for v in value:
        if type(v) is not int or not 0 <= v <= limit:
            raise ArchiveError(f"{what} {_show(value)} holds {_show(v)}, not an integer in [0, {limit}]")
    return value


def expect(value, kind: type | tuple, what: str):
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ArchiveError(f"{what} must be a {names}, got {type(value).__name__}")
    if isinstance(value, (list, dict)) and len(value) > MAX_ENTRIES:
        raise ArchiveError(f"{what} has {len(value)} entries (limit {MAX_ENTRIES})")
    return value


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------------------------------ bounded JSON
# strings (closing quote optional so an unterminated one is consumed in one linear match, never rescanned)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def parse_json(text: str | bytes, what: str, *, limit: int = MAX_HEADER_BYTES):
    """``json.loads`` after checking size and nesting depth, so neither the parser nor our decoders recurse deep."""
    if len(text) > limit:
        raise ArchiveError(f"{what} is {len(text)} bytes (limit {limit}); the file is corrupt or not an archive")
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii")
        if brackets:
            steps = torch.frombuffer(bytearray(brackets.translate(_DEPTH_STEPS)), dtype=torch.int8)
            depth = int(steps.cumsum(0).max())
            if depth > MAX_JSON_DEPTH:
                raise ArchiveError(f"{what} is nested {depth} levels deep (limit {MAX_JSON_DEPTH})")
        return json.loads(text, parse_constant=_refuse_constant)
    except ArchiveError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, huge ints
        raise ArchiveError(f"{what} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None


def _refuse_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


# ------------------------------------------------------------------------------------------------ call targets
_BUILTINS = {f"operator.{name}": getattr(operator, name) for name in (
    "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pos", "abs", "pow", "eq", "ne", "lt",
    "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift")}
_BUILTINS.update({f"torch.{name}": getattr(torch, name) for name in (
    "sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sum", "sym_sqrt")
    if hasattr(torch, name)})
_BUILTINS.update({f"math.{name}": getattr(math, name) for name in ("ceil", "floor", "trunc", "sqrt")})
_BUILTIN_NAMES = {id(fn): name for name, fn in _BUILTINS.items()}
OP_NAMESPACES = ("aten", "slimgraph")
_OP_NAME = re.compile(r"(__[a-z_]+__|[A-Za-z_][A-Za-z0-9_]*)\Z")
# ATen ops that reach outside the tensors they are given: files (from_file, save) and raw storages (set_)
_DENIED_OPS = frozenset({"aten::from_file", "aten::save", "aten::set", "aten::set_", "aten::_print", "aten::warn"})
# Ops that older archives name and that now live under another name with the same schema and arithmetic
# (slimgraph.ops): old -> current. slimgraph::quantize_per_token was a kernel-level op, now a plain function.
OP_ALIASES = {"slimgraph::quantize_per_token": "slimgraph::dynamic_quantize_per_token"}


def encode_target(node: fx.Node) -> str | None:
    t = node.target
    if node.op in ("placeholder", "get_attr"):
        return str(t)
    if node.op == "output":
        return None
    if node.op != "call_function":
        raise ArchiveError(f"node '{node.name}' is a {node.op} node; slimgraph archives hold call_function "
                           "graphs only (capture the model with sg.capture first)")
    if isinstance(t, torch._ops.OpOverload) and t.namespace in OP_NAMESPACES:
        return f"{t._schema.name}.{t._overloadname}"
    name = _BUILTIN_NAMES.get(id(t))
    if name is None:
        raise ArchiveError(f"node '{node.name}' calls {t!r}, which cannot be stored: archives hold torch.ops.aten "
                           f"/ torch.ops.slimgraph ops and the builtins {sorted(_BUILTINS)}")
    return name


def decode_call_target(target, where: str):
    """An allow-listed builtin or an ATen / slimgraph op overload; anything else is refused."""
    target = bounded_str(target, f"{where}: call target", MAX_NAME)
    if target in _BUILTINS:
        return _BUILTINS[target]
    namespace, sep, rest = target.partition("::")
    name, dot, overload = rest.rpartition(".")
    if not sep or not dot or namespace not in OP_NAMESPACES:
        raise ArchiveError(f"{where}: call target {_show(target)} is not allowed; archives may call "
                           f"torch.ops.{{{','.join(OP_NAMESPACES)}}}.* overloads and {sorted(_BUILTINS)}")
    if not _OP_NAME.match(name) or not _IDENT.match(overload) or overload.startswith("__"):
        raise ArchiveError(f"{where}: call target {_show(target)} is not an op name")
    if f"{namespace}::{name}" in _DENIED_OPS:
        raise ArchiveError(f"{where}: op {namespace}::{name} reaches outside its tensors and is never loaded")
    namespace, _, name = OP_ALIASES.get(f"{namespace}::{name}", f"{namespace}::{name}").partition("::")
    try:
        op = getattr(getattr(getattr(torch.ops, namespace), name), overload)
    except (AttributeError, RuntimeError):
        op = None
    # the lookup went through the op registry; confirm it came back as exactly the op the file named
    if not isinstance(op, torch._ops.OpOverload) or op._schema.name != f"{namespace}::{name}" \
            or op._overloadname != overload:
        raise ArchiveError(f"{where}: op {_show(target)} is not registered in this process; update slimgraph / "
                           "torch to the versions that wrote the archive")
    if any("Storage" in str(a.type) for a in op._schema.arguments):
        raise ArchiveError(f"{where}: op {target} takes a raw storage and is never loaded")
    return op


# ------------------------------------------------------------------------------------------------ argument values
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int16, torch.int32,
    torch.int64, torch.bool, torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2)}
_MEMORY_FORMATS = {str(m).removeprefix("torch."): m for m in (
    torch.contiguous_format, torch.channels_last, torch.channels_last_3d, torch.preserve_format)}
_LAYOUTS = {str(m).removeprefix("torch."): m for m in (torch.strided, torch.sparse_coo)}
_DEVICE = re.compile(r"(cpu|cuda|meta)(:[0-9]{1,3})?\Z")
_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_ENUMS = {"$dtype": _DTYPES, "$memory_format": _MEMORY_FORMATS, "$layout": _LAYOUTS}


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ArchiveError(f"dtype {dtype} cannot be stored in an archive")
    return name


def decode_dtype(value, what: str) -> torch.dtype:
    if not isinstance(value, str) or value not in _DTYPES:
        raise ArchiveError(f"{what}: dtype {_show(value)} is not one of {sorted(_DTYPES)}")
    return _DTYPES[value]


def encode_arg(a, where: str):
    if isinstance(a, fx.Node):
        return {"$node": a.name}
    if a is None or isinstance(a, (bool, int, str)):
        return a
    if isinstance(a, float):
        return a if math.isfinite(a) else {"$float": repr(a)}
    if isinstance(a, tuple):
        return {"$tuple": [encode_arg(x, where) for x in a]}
    if isinstance(a, list):
        return [encode_arg(x, where) for x in a]
    if isinstance(a, dict):
        return {"$dict": [[encode_arg(k, where), encode_arg(v, where)] for k, v in a.items()]}
    if isinstance(a, torch.dtype):
        return {"$dtype": dtype_name(a)}
    if isinstance(a, torch.device):
        return {"$device": str(a)}
    if isinstance(a, (torch.memory_format, torch.layout)):
        is_format = isinstance(a, torch.memory_format)
        tag, table = ("$memory_format", _MEMORY_FORMATS) if is_format else ("$layout", _LAYOUTS)
        if str(a).removeprefix("torch.") in table:
            return {tag: str(a).removeprefix("torch.")}
    if isinstance(a, slice):
        return {"$slice": [encode_arg(a.start, where), encode_arg(a.stop, where), encode_arg(a.step, where)]}
    if a is Ellipsis:
        return {"$ellipsis": True}
    raise ArchiveError(f"node '{where}' has an argument of type {type(a).__name__} that cannot be stored")


def decode_arg(a, env: dict[str, fx.Node], where: str):
    """Rebuild one argument from its JSON form; only the value kinds :func:`encode_arg` writes exist."""
    if a is None or isinstance(a, (bool, int, float)):
        return a
    if isinstance(a, str):
        return bounded_str(a, f"{where}: string argument")
    if isinstance(a, list):
        return [decode_arg(x, env, where) for x in expect(a, list, f"{where}: list argument")]
    if not isinstance(a, dict) or len(a) != 1:
        raise ArchiveError(f"{where}: argument {_show(a)} is not a tagged value")
    (tag, v), = a.items()
    if tag == "$node":
        if not isinstance(v, str) or v not in env:
            raise ArchiveError(f"{where}: argument refers to node {_show(v)}, which is not defined before it")
        return env[v]
    if tag == "$tuple":
        return tuple(decode_arg(x, env, where) for x in expect(v, list, f"{where}: tuple argument"))
    if tag == "$dict":
        out = {}
        for pair in expect(v, list, f"{where}: dict argument"):
            if not isinstance(pair, list) or len(pair) != 2 or type(pair[0]) not in (str, int):
                raise ArchiveError(f"{where}: dict argument entry {_show(pair)} is not a [str|int key, value] pair")
            out[bounded_str(pair[0], f"{where}: dict key", MAX_NAME) if isinstance(pair[0], str) else pair[0]] = \
                decode_arg(pair[1], env, where)
        return out
    if tag == "$float" and v in _FLOATS:
        return _FLOATS[v]
    if tag in _ENUMS and isinstance(v, str) and v in _ENUMS[tag]:
        return _ENUMS[tag][v]
    if tag == "$device" and isinstance(v, str) and _DEVICE.match(v):
        return torch.device(v)
    if tag == "$slice" and isinstance(v, list) and len(v) == 3:
        return slice(*(decode_arg(x, env, where) for x in v))
    if tag == "$ellipsis" and v is True:
        return Ellipsis
    raise ArchiveError(f"{where}: argument {_show(a)} is not a known value encoding")


def decode_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ArchiveError(f"cannot load onto device {device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArchiveError(f"cannot load onto device {str(device)!r}: this process has no CUDA device; load with "
                           "device='cpu'")
    return device


# ------------------------------------------------------------------------------------------------ pytree specs
# Input/output structures are stored as nested lists naming an allow-listed container; they are rebuilt by
# flattening a dummy value of that structure, so no serialized type name is ever imported or looked up.
_MODEL_OUTPUT = "model_output"


LEAF = "*"


def encode_spec(spec, where: str):
    if spec.is_leaf():
        return LEAF
    t, children = spec.type, [encode_spec(c, where) for c in spec_children(spec)]
    if t is tuple:
        return ["tuple", children]
    if t in (list, fx.immutable_collections.immutable_list):
        return ["list", children]
    if t is type(None):
        return ["none"]
    if t in (dict, collections.OrderedDict, fx.immutable_collections.immutable_dict):
        return ["odict" if t is collections.OrderedDict else "dict", list(spec.context), children]
    if t is collections.namedtuple:
        return ["namedtuple", spec.context.__name__, list(spec.context._fields), children]
    if _is_model_output(t):
        return [_MODEL_OUTPUT, f"{t.__module__}.{t.__qualname__}", list(spec.context), children]
    raise ArchiveError(f"{where} contains a {t.__module__}.{t.__qualname__}, which archives cannot hold; "
                       "return tuples, lists, dicts, namedtuples or transformers ModelOutputs")


def spec_children(spec) -> list:
    # recent torch replaced the TreeSpec.children_specs attribute by children(); older releases have only the former
    return list(spec.children()) if hasattr(spec, "children") else list(spec.children_specs)


def decode_spec(value, where: str, *, warn):
    """A TreeSpec from its stored form; ``warn(message)`` is told when a ModelOutput type is replaced by a dict."""
    leaf = torch.empty(0)

    def dummy(v, depth):
        if v == LEAF:
            return leaf
        if depth > MAX_JSON_DEPTH or not isinstance(v, list) or not v or not isinstance(v[0], str):
            raise ArchiveError(f"{where}: structure entry {_show(v)} is malformed")
        kind, rest = v[0], v[1:]
        if kind == "none" and not rest:
            return None
        if kind in ("tuple", "list") and len(rest) == 1:
            items = [dummy(c, depth + 1) for c in expect(rest[0], list, f"{where}: {kind} children")]
            return tuple(items) if kind == "tuple" else items
        if kind in ("dict", "odict", _MODEL_OUTPUT) and len(rest) == 2 + (kind == _MODEL_OUTPUT):
            keys, children = expect(rest[-2], list, f"{where}: {kind} keys"), expect(rest[-1], list, where)
            if len(keys) != len(children) or len(set(map(repr, keys))) != len(keys) or not all(
                    type(k) in (str, int) and (type(k) is int or len(k) <= MAX_NAME) for k in keys):
                raise ArchiveError(f"{where}: {kind} keys {_show(keys)} are not unique str/int keys of its children")
            items = dict(zip(keys, (dummy(c, depth + 1) for c in children)))
            if kind == _MODEL_OUTPUT:
                return _model_output(rest[0], items, where, warn)
            return collections.OrderedDict(items) if kind == "odict" else items
        if kind == "namedtuple" and len(rest) == 3:
            name = identifier(rest[0], f"{where}: namedtuple name")
            fields = [identifier(f, f"{where}: namedtuple field") for f in expect(rest[1], list, where)]
            children = expect(rest[2], list, f"{where}: namedtuple children")
            if len(fields) != len(children) or len(set(fields)) != len(fields):
                raise ArchiveError(f"{where}: namedtuple {name} fields {fields} do not match its children")
            # a fresh class with validated field names stands in for the user's type
            return collections.namedtuple(name, fields)(*(dummy(c, depth + 1) for c in children))
        raise ArchiveError(f"{where}: container kind {_show(kind)} is not allowed (tuple, list, dict, odict, "
                           "namedtuple, model_output, none)")

    _, spec = pytree.tree_flatten(dummy(value, 0))
    return spec


def _is_model_output(t: type) -> bool:
    return any(b.__name__ == "ModelOutput" and b.__module__.startswith("transformers.") for b in t.__mro__)


def _model_output(name, items: dict, where: str, warn):
    """The ModelOutput class named ``name`` if this process already registered it, else a plain dict."""
    name = bounded_str(name, f"{where}: output type name", MAX_NAME)
    if not _QUALNAME.match(name) or "__" in name:
        raise ArchiveError(f"{where}: output type name {_show(name)} is not a dotted module.Class name")
    for t in list(pytree.SUPPORTED_NODES):  # types registered in this process; nothing is imported here
        if isinstance(t, type) and f"{t.__module__}.{t.__qualname__}" == name and _is_model_output(t):
            if not all(isinstance(k, str) and k in getattr(t, "__dataclass_fields__", {}) for k in items):
                raise ArchiveError(f"{where}: {name} has no fields {sorted(map(str, items))}")
            return t(**items)
    warn(f"the archive's output type {name} is not loaded in this process, so the model returns a plain dict with "
         f"the same keys; import {name.rpartition('.')[0]} before sg.load to get {name.rpartition('.')[2]} back")
    return items
