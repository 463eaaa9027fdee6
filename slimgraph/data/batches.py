"""The user's data for the main job: batches in one normal form, a deterministic train/eval split, and loaders
for ``--data FILE`` and ``package.module:attr`` specs.

A batch, as users hand it over, is one of

* a tensor (one positional input),
* a tuple/list of positional inputs,
* a pair ``(args, kwargs)`` whose second item is a dict,
* a dict ``{"args": ..., "kwargs": ..., "labels": ...}`` (the ``sg.distill`` format; labels feed its task loss).

Input files (``.npz`` or ``.safetensors``) hold one array per model input, first dimension = samples; they are
cut into batches of ``batch_size`` samples. Array names map to inputs like this:

* ``arg0, arg1, ...`` / ``arr_0, arr_1, ...`` (numpy's names for unnamed ``np.savez`` arrays) / ``0, 1, ...``:
  positional inputs in that order;
* any other name must be a parameter of the model's ``forward``: such arrays are passed positionally in the
  order of the signature when they fill its leading parameters (so they line up with the example inputs),
  otherwise by keyword.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError

DATA_SUFFIXES = (".npz", ".safetensors")
_POSITIONAL = re.compile(r"^(?:arg|arr_)?(\d+)$")


@dataclass(frozen=True)
class Batch:
    args: tuple
    kwargs: dict = field(default_factory=dict)
    labels: torch.Tensor | None = None

    def for_calibration(self) -> tuple[tuple, dict]:
        return self.args, self.kwargs

    def for_distill(self) -> dict:
        d: dict = {"args": self.args, "kwargs": self.kwargs}
        if self.labels is not None:
            d["labels"] = self.labels
        return d

    def samples(self) -> int:
        first = next((t for t in (*self.args, *self.kwargs.values()) if isinstance(t, torch.Tensor)), None)
        return int(first.shape[0]) if first is not None and first.dim() else 1


def as_batch(item, index: int = 0) -> Batch:
    """One user batch in normal form; a clear error naming the batch for anything else."""
    if isinstance(item, Batch):
        return item
    if isinstance(item, torch.Tensor):
        return Batch((item,))
    if isinstance(item, dict):
        if not set(item) <= {"args", "kwargs", "labels"}:
            raise InputError(f"data batch {index}: a dict batch has the keys 'args', 'kwargs' and 'labels'; got "
                             f"{sorted(item)}")
        args = item.get("args", ())
        args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
        return Batch(args, dict(item.get("kwargs") or {}), item.get("labels"))
    if isinstance(item, (tuple, list)):
        if len(item) == 2 and isinstance(item[1], dict) and isinstance(item[0], (tuple, list)):
            return Batch(tuple(item[0]), dict(item[1]))
        return Batch(tuple(item))
    raise InputError(f"data batch {index} is a {type(item).__name__}: a batch is a tensor, a tuple of inputs, "
                     "an (args, kwargs) pair or a dict with 'args'/'kwargs'/'labels'")


def as_batches(data: Iterable) -> list[Batch]:
    if isinstance(data, (str, bytes, torch.Tensor)) or not isinstance(data, Iterable):
        raise InputError(f"data must be an iterable of batches (a list of input tuples, a DataLoader, ...), got "
                         f"{type(data).__name__}")
    batches = [as_batch(b, i) for i, b in enumerate(data)]
    if not batches:
        raise InputError("data is empty: give at least two batches (one to train/calibrate on, one held out)")
    return batches


@dataclass(frozen=True)
class DataSplit:
    """Which of the user's batches train (calibrate, score, refit, distill) and which evaluate."""

    train: list[Batch]
    eval: list[Batch]
    train_index: tuple[int, ...]
    eval_index: tuple[int, ...]
    every: int

    def describe(self) -> str:
        samples = sum(b.samples() for b in self.eval)
        return (f"{len(self.train) + len(self.eval)} batches: every {_ordinal(self.every)} batch held out for "
                f"evaluation ({len(self.eval)} batches, {samples} samples: batch {_ranges(self.eval_index)}), "
                f"the other {len(self.train)} used for calibration, importance, refit and distillation")


def split_batches(batches: list[Batch], eval_fraction: float) -> DataSplit:
    """Hold out every k-th batch (k = round(1 / eval_fraction)), counting from the k-th: spread over the data,
    so ordered data (by source, length or label) is represented on both sides, and the same on every run."""
    if not 0.0 < eval_fraction < 1.0:
        raise InputError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if len(batches) < 2:
        raise InputError(f"data has {len(batches)} batch: give at least 2 so that one can be held out for "
                         "evaluation and never trained or calibrated on (smaller batches give more of them)")
    every = max(2, min(round(1.0 / eval_fraction), len(batches)))
    eval_index = tuple(i for i in range(len(batches)) if i % every == every - 1)
    train_index = tuple(i for i in range(len(batches)) if i % every != every - 1)
    return DataSplit([batches[i] for i in train_index], [batches[i] for i in eval_index], train_index, eval_index,
                     every)


# ---------------------------------------------------------------------------------------------- loaders


def resolve_attr(spec: str, what: str):
    """Import ``package.module:attr`` with the current directory importable (as ``python -m`` would have it)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(f"{what} {spec!r}: expected package.module:name")
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"{what} {spec!r}: cannot import {module_name!r} ({exc}); run from the directory that "
                         "holds it or install its package") from exc
    finally:
        if added:
            sys.path.remove(cwd)
    value = getattr(module, attr, None)
    if value is None:
        raise InputError(f"{what} {spec!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
                         f"attribute {attr!r}")
    return value


def load_data(spec: str, model=None, *, batch_size: int = 8) -> list[Batch]:
    """``--data``: an ``.npz``/``.safetensors`` file of input arrays, or ``package.module:batches`` (a callable
    returning the batches, or the iterable itself)."""
    if spec.lower().endswith(DATA_SUFFIXES) or os.path.isfile(spec):
        return load_data_file(spec, model, batch_size=batch_size)
    source = resolve_attr(spec, "--data")
    data = source() if callable(source) else source
    try:
        return as_batches(data)
    except InputError as exc:
        raise InputError(f"--data {spec}: {exc}") from None


def load_data_file(path: str | Path, model=None, *, batch_size: int = 8) -> list[Batch]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--data {path}: no such file")
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    tensors = _read_arrays(path)
    if not tensors:
        raise InputError(f"--data {path}: the file holds no arrays")
    counts = {name: (int(t.shape[0]) if t.dim() else -1) for name, t in tensors.items()}
    if len(set(counts.values())) != 1 or -1 in counts.values():
        raise InputError(f"--data {path}: every array needs the same first dimension (samples); got {counts}")
    positional, keyword = _assign_inputs(list(tensors), model, path)
    n = next(iter(counts.values()))
    batches = []
    for start in range(0, n, batch_size):
        cut = slice(start, start + batch_size)
        batches.append(Batch(tuple(tensors[k][cut] for k in positional), {k: tensors[k][cut] for k in keyword}))
    return batches


def _read_arrays(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        if suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files}
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file: say which and why
        raise InputError(f"--data {path}: cannot read it as {suffix} ({type(exc).__name__}: {exc})") from exc
    raise InputError(f"--data {path}: unsupported file type {suffix!r}; use .npz or .safetensors, or "
                     "package.module:batches")


def _assign_inputs(names: list[str], model, path: Path) -> tuple[list[str], list[str]]:
    """(positional names in order, keyword names): see the module docstring for the rule."""
    numbered = {n: _POSITIONAL.match(n) for n in names}
    if all(numbered.values()):
        order = sorted(names, key=lambda n: int(numbered[n].group(1)))
        if [int(numbered[n].group(1)) for n in order] != list(range(len(order))):
            raise InputError(f"--data {path}: positional arrays must be numbered 0..{len(order) - 1}, got {names}")
        return order, []
    if any(numbered.values()):
        raise InputError(f"--data {path}: mix of numbered ({[n for n in names if numbered[n]]}) and named "
                         "arrays; name all of them after forward()'s parameters, or number all of them")
    params = _forward_params(model)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise InputError(f"--data {path}: arrays {unknown} are not parameters of the model's forward"
                         f"({', '.join(params) or '?'}); rename them, or number them arg0, arg1, ...")
    leading = params[: len(names)]
    if set(leading) == set(names):
        return leading, []
    return [], [n for n in params if n in names]


def _forward_params(model) -> list[str]:
    if model is None:
        return []
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _ordinal(n: int) -> str:
    return {2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _ranges(index: tuple[int, ...], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in index[:limit])
    return shown + (f", ... ({len(index)} in all)" if len(index) > limit else "")
