"""The ``sparsify`` pass: zero GEMM weights by importance in a pattern, verify it, record it, lower what pays.

    sparsify{sparsity=0.9,pattern=unstructured,scope=global,importance=l1,ignore=[head],lower=auto}
    sparsify{pattern=2:4}          sparsify{sparsity=0.75,pattern=32x32,scope=local}

Before / after (90% unstructured, lowered where a measurement says CSR beats the dense GEMM)::

    w = get_attr[fc1.weight]                          crow, col, vals = get_attr[fc1.weight_csr0/1/2]
    y = aten.linear(x, w, b)                   =>     y = slimgraph.sparse_linear(x, crow, col, vals, N, K, b, "none")

Steps: find the candidate weights (:mod:`.layers`), score them (l1 / l2 / act), compute keep masks for the pattern
(:func:`.patterns.keep_masks`), write the masked weights as new tensors (the input graph's tensors are never written
to), verify every weight against its pattern and planned sparsity, record ``graph_info(gm).sparsity[weight] =
pattern`` for fine-tuning to keep, then lower (:mod:`.lowering`). The
:class:`~slimgraph.sparse.report.SparsityReport` lands in the pass record's ``stats["report"]``.

Calibration data for ``importance=act`` is not an option: ``sg.sparsify(..., data=batches)`` attaches it with
:meth:`Sparsify.with_data`; in a pipeline string the pass calibrates on the example inputs recorded at capture.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.fx as fx

from ..errors import InputError
from ..ir.graph_utils import get_attr_tensor, set_attr_tensor
from ..ir.info import graph_info
from ..passes.base import Pass, PassResult, register_pass
from .layers import IMPORTANCE, find_layers, importance, select
from .lowering import LOWER_MODES, lower_layers
from .patterns import keep_masks, nm_problem, parse_pattern, verify_pattern
from .report import REPORT_KEY, LayerSparsity, SparsityReport

SCOPES = ("global", "local")


@register_pass
@dataclass(frozen=True)
class Sparsify(Pass):
    name: ClassVar[str] = "sparsify"
    summary: ClassVar[str] = "weight sparsity (unstructured, N:M, blocks) by importance; lowered to sparse ops"
    tolerance: ClassVar[float | None] = None  # lossy: its error is reported, never a failure

    sparsity: float = 0.5
    pattern: str = "unstructured"
    scope: str = "global"
    importance: str = "l1"
    ignore: tuple[str, ...] = ()
    lower: str = "auto"
    # Calibration batches for importance="act": attached by sg.sparsify through with_data(), never an option.
    data: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        pattern = parse_pattern(self.pattern)
        object.__setattr__(self, "pattern", str(pattern))
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise InputError(f"sparsity must be a number in [0, 1), got {type(self.sparsity).__name__}")
        if not 0.0 <= self.sparsity < 1.0:
            raise InputError(f"sparsity must be in [0, 1) (the fraction of weights set to zero), got {self.sparsity}")
        fixed = pattern.fixed_sparsity
        if fixed is not None and abs(self.sparsity - fixed) > 1e-9:
            raise InputError(f"pattern {pattern} fixes the sparsity at {fixed:g} (N of every M kept); "
                             f"pass sparsity={fixed:g}, got {self.sparsity}")
        if self.scope not in SCOPES:
            raise InputError(f"unknown scope {self.scope!r}; expected one of {', '.join(SCOPES)}")
        if self.importance not in IMPORTANCE:
            raise InputError(f"unknown importance {self.importance!r}; expected one of {', '.join(IMPORTANCE)}")
        if self.lower not in LOWER_MODES:
            raise InputError(f"unknown lower mode {self.lower!r}; expected one of {', '.join(LOWER_MODES)}")
        if isinstance(self.ignore, str):
            object.__setattr__(self, "ignore", (self.ignore,))
        else:
            object.__setattr__(self, "ignore", tuple(self.ignore))

    def with_data(self, data) -> Sparsify:
        """A copy of the pass that ranks ``importance="act"`` on ``data`` (an iterable of input batches)."""
        if isinstance(data, (str, bytes, torch.Tensor)):
            raise InputError("data must be an iterable of input batches (tuples or (args, kwargs)), "
                             "e.g. [(x1,), (x2,)]")
        copy = dataclasses.replace(self)
        object.__setattr__(copy, "data", None if data is None else tuple(data))
        return copy

    def run(self, gm: fx.GraphModule) -> PassResult:
        pattern = parse_pattern(self.pattern)
        report = SparsityReport(self.sparsity, str(pattern), self.scope, self.importance, self.lower)
        layers = find_layers(gm)  # graph order, the report's row order
        kept, ignored, notes = select(layers, self.ignore)
        report.notes.extend(notes)
        if self.data is not None and self.importance != "act":
            report.notes.append(f"data was given but importance={self.importance!r} ranks by magnitude only; "
                                "pass importance='act' to use it")
        if pattern.kind == "n:m":
            for layer in kept:
                shape = get_attr_tensor(gm, layer.nodes[0].args[1]).shape
                if problem := nm_problem(shape, pattern):
                    raise InputError(f"layer {layer.name!r} (weight {layer.weight} {tuple(shape)}) cannot take "
                                     f"pattern {pattern}: {problem}; add it to ignore=[{layer.name!r}] to keep it "
                                     "dense")
            if self.scope == "global":
                report.notes.append(f"scope has no effect on {pattern}: every group of {pattern.m} keeps {pattern.n}")
        rows: dict[str, LayerSparsity] = {}
        for layer in ignored:
            w = get_attr_tensor(gm, layer.nodes[0].args[1])
            rows[layer.weight] = LayerSparsity.of(layer, w, "-", reason="ignored")
        if not kept:
            report.layers = list(rows.values())
            report.notes.append("nothing to sparsify: no linear/conv weight (or all of them ignored); "
                                "the model is unchanged")
            return PassResult(gm, False, {"sparsified": 0, REPORT_KEY: report}, list(report.notes))

        scores = importance(gm, kept, self.importance, self.data)
        masks = keep_masks(scores, pattern, self.sparsity, self.scope)
        info = graph_info(gm)
        for layer in kept:
            w = get_attr_tensor(gm, layer.nodes[0].args[1])
            keep = masks[layer.weight]
            sparse_w = torch.where(keep, w.detach(), torch.zeros((), dtype=w.dtype, device=w.device))
            planned = float((~keep).sum()) / keep.numel()
            verify_pattern(sparse_w, pattern, name=f"layer {layer.name!r} weight {layer.weight}",
                           min_sparsity=planned)
            set_attr_tensor(gm, layer.weight, sparse_w)  # a new tensor: the input graph's weight is not written
            info.sparsity[layer.weight] = str(pattern)
            rows[layer.weight] = LayerSparsity.of(layer, sparse_w, str(pattern))
        lowered = lower_layers(gm, kept, rows, pattern, self.lower)
        report.layers = [rows[layer.weight] for layer in layers]
        stats = {"sparsified": len(kept), "sparsity": round(report.sparsity, 6), "lowered": lowered,
                 REPORT_KEY: report}
        return PassResult(gm, True, stats, list(report.notes))

