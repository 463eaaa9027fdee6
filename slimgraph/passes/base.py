"""The pass contract, the pass registry and the pipeline-string parser.

A pass is a small frozen dataclass registered under a ``name``; its fields are its options::

    @register_pass
    @dataclass(frozen=True)
    class FoldBatchNorm(Pass):
        name: ClassVar[str] = "fold-bn"
        def run(self, gm): ... return PassResult(gm, modified=True, stats={"folded": 3})

Pipelines are lists of passes or strings such as ``"fold-bn,fuse"`` or ``"prune{ratio=0.5,round_to=8}"``;
option values are converted to the field's declared type (int, float, bool, str, tuple of str/float).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch.fx as fx

from ..errors import PipelineError


@dataclass
class PassResult:
    gm: fx.GraphModule
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # rewrites left out and why, warnings


@dataclass(frozen=True)
class Pass:
    """Base class. Subclasses set ``name`` and implement :meth:`run`."""

    name: ClassVar[str] = ""
    # Lossless passes must reproduce their input graph's outputs within ``tolerance`` (relative);
    # lossy passes (pruning, int8) have tolerance None: their error is measured and reported only.
    tolerance: ClassVar[float | None] = 1e-4
    summary: ClassVar[str] = ""

    def run(self, gm: fx.GraphModule) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __str__(self) -> str:
        opts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.repr and value != f.default and not _is_default_factory_value(f, value):
                opts.append(f"{f.name}={_format_value(value)}")
        return f"{self.name}{{{','.join(opts)}}}" if opts else self.name


def pass_options(cls: type[Pass]) -> dict[str, Any]:
    """A pass's options with their defaults: exactly the fields a pipeline string can set.

    Data a pass learns from (calibration batches, a loss callable) is never a field, so it never shows here
    (see :class:`slimgraph.ir.calibration.UsesData`).
    """
    options = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            options[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            options[f.name] = f.default
    return options


def _is_default_factory_value(f: dataclasses.Field, value) -> bool:
    if f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        return False
    return value == f.default_factory()  # type: ignore[misc]


def _format_value(value) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "[" + ",".join(f"{k}:{_format_value(v)}" for k, v in value.items()) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"pass name {cls.name!r} is taken by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise PipelineError(f"unknown pass {name!r}; known passes: {known}") from None


# ---------------------------------------------------------------------------------------- parsing

_ITEM = re.compile(r"\s*([A-Za-z0-9_\-]+)\s*(?:\{(.*)\})?\s*$", re.S)


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"unbalanced brackets in {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise PipelineError(f"unbalanced brackets in {text!r}")
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_pipeline(spec: str | Sequence[str | Pass] | None) -> list[Pass]:
    """Turn ``"fold-bn,prune{ratio=0.5}"`` (or a list of strings/Pass objects) into Pass instances."""
    if spec is None or spec == "":
        return []
    items = _split_top_level(spec) if isinstance(spec, str) else list(spec)
    passes: list[Pass] = []
    for item in items:
        if isinstance(item, Pass):
            passes.append(item)
            continue
        if not isinstance(item, str):
            raise PipelineError(f"pipeline items must be strings or Pass objects, got {type(item).__name__}")
        m = _ITEM.match(item)
        if not m:
            raise PipelineError(f"cannot parse pipeline item {item!r}; expected name or name{{key=value,...}}")
        cls = get_pass(m.group(1))
        options = _parse_options(cls, m.group(2) or "")
        try:
            passes.append(cls(**options))
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"bad options for pass {cls.name!r}: {exc}") from exc
    return passes


def _parse_options(cls: type[Pass], text: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    options: dict[str, Any] = {}
    for part in _split_top_level(text):
        if "=" not in part:
            raise PipelineError(f"option {part!r} of pass {cls.name!r} needs the form key=value")
        key, raw = (s.strip() for s in part.split("=", 1))
        key = key.replace("-", "_")
        if key not in fields:
            valid = ", ".join(fields) or "(none)"
            raise PipelineError(f"pass {cls.name!r} has no option {key!r}; its options: {valid}")
        options[key] = _convert(raw, hints.get(key, str), f"{cls.name}.{key}")
    return options


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(raw, where: str, error: type[Exception] = PipelineError) -> bool:
    """A boolean option given as a bool or a word (true/false, yes/no, on/off, 1/0); anything else is an error."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        low = raw.strip().lower()
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
    raise error(f"{where}: expected true/false, got {raw!r}")


def _convert(raw: str, hint, where: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(raw, arg, where)
            except PipelineError as exc:
                errors.append(str(exc))
        raise PipelineError(f"{where}: cannot read {raw!r} ({'; '.join(errors)})")
    if origin in (tuple, list):
        inner = raw.strip()
        if inner.startswith("[") and inner.endswith("]"):
            inner = inner[1:-1]
        item_type = args[0] if args else str
        return tuple(_convert(v, item_type, where) for v in _split_top_level(inner))
    if origin is dict:
        inner = raw.strip()
        if inner.startswith("[") and inner.endswith("]"):
            inner = inner[1:-1]
        key_t, val_t = args if args else (str, str)
        out = {}
        for item in _split_top_level(inner):
            k, sep, v = item.rpartition(":")
            if not sep:
                raise PipelineError(f"{where}: dict entries need key:value, got {item!r}")
            out[_convert(k, key_t, where)] = _convert(v, val_t, where)
        return out
    if hint is bool:
        return parse_bool(raw, where)
    if hint is int:
        try:
            return int(raw)
        except ValueError:
            raise PipelineError(f"{where}: expected an integer, got {raw!r}") from None
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise PipelineError(f"{where}: expected a number, got {raw!r}") from None
    if hint is typing.Any:
        return raw
    return raw.strip().strip("'\"")
