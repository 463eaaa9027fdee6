"""Per-layer tables and model totals, for ``slimgraph inspect`` and the compression reports.

The one table formatter (:func:`format_table`) and what the per-pass reports share: :class:`PassReport` (summary
line, layer table, notes, JSON form), :func:`last_pass_report` (the newest report of a kind in a graph's pass
history) and :class:`WeightCoverage` (the "honest coverage" figure of quant and prune).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import ClassVar, NamedTuple, TypeVar

import torch
import torch.fx as fx

from .ir.graph_utils import get_attr_tensor, op_name
from .ir.info import graph_info, node_info


@dataclass(frozen=True)
class LayerRow:
    node: str
    op: str
    module: str
    shape: str
    dtype: str
    params: int
    macs: int


@dataclass(frozen=True)
class ModelTotals:
    params: int  # distinct tensor elements read by the graph (tied weights counted once)
    bytes: int  # storage of those tensors
    macs: int
    nodes: int
    gemm_nodes: int

    def as_dict(self) -> dict:
        return asdict(self)


def layer_rows(gm: fx.GraphModule, *, all_nodes: bool = False) -> list[LayerRow]:
    """One row per call node; by default only nodes that compute MACs or read parameters."""
    rows = []
    for node in gm.graph.nodes:
        info = node_info(node)
        if node.op != "call_function" or info is None:
            continue
        if not all_nodes and not (info.macs or info.params):
            continue
        spec = info.spec
        rows.append(LayerRow(
            node=node.name,
            op=op_name(node.target),
            module=info.module or "-",
            shape="x".join(str(s) for s in spec.shape) if spec else "-",
            dtype=str(spec.dtype).removeprefix("torch.") if spec else "-",
            params=info.params,
            macs=info.macs,
        ))
    return rows


def totals(gm: fx.GraphModule) -> ModelTotals:
    seen: dict[int, torch.Tensor] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            t = get_attr_tensor(gm, node)
            if t is not None:
                seen[id(t)] = t
    params = sum(t.numel() for t in seen.values())
    size = sum(t.numel() * t.element_size() for t in seen.values())
    infos = [node_info(n) for n in gm.graph.nodes if n.op == "call_function"]
    macs = sum(i.macs for i in infos if i is not None)
    gemms = sum(1 for i in infos if i is not None and i.macs)
    return ModelTotals(params, size, macs, len(gm.graph.nodes), gemms)


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def format_table(headers: list[str], rows: list[list[str]], align_right: set[int] = frozenset()) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(row):
        cells = [str(c).rjust(w) if i in align_right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    line = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), line, *(fmt(r) for r in rows)])


def inspect_table(gm: fx.GraphModule, *, all_nodes: bool = False, limit: int | None = None) -> str:
    rows = layer_rows(gm, all_nodes=all_nodes)
    shown = rows if limit is None else rows[:limit]
    body = format_table(
        ["node", "op", "module", "output", "dtype", "params", "MACs"],
        [[r.node, r.op, r.module, r.shape, r.dtype, human(r.params), human(r.macs)] for r in shown],
        align_right={5, 6},
    )
    t = totals(gm)
    more = f"\n... {len(rows) - len(shown)} more rows (use --all-rows)" if len(shown) < len(rows) else ""
    return (f"{body}{more}\n\ntotal: {human(t.params)} params ({human(t.bytes, 'B')}), {human(t.macs)} MACs, "
            f"{t.gemm_nodes} GEMM/conv nodes, {t.nodes} graph nodes")


# ----------------------------------------------------------------------------------------- per-pass reports


class PassReport:
    """Base of the per-pass report dataclasses (quant, sparsify, share-weights): ``str(report)`` is the table.

    A subclass is a dataclass with ``layers`` (each with ``row() -> list of cells``) and ``notes`` fields, a
    ``summary()`` and the class attributes ``headers`` and ``align_right`` (column indices right-aligned).
    """

    headers: tuple[str, ...] = ()
    align_right: frozenset[int] = frozenset()

    def summary(self) -> str:
        raise NotImplementedError

    def extra_lines(self) -> list[str]:
        """Lines printed after the notes (a subclass's own detail)."""
        return []

    def table(self) -> str:
        body = format_table(list(self.headers), [list(layer.row()) for layer in self.layers],  # type: ignore[attr-defined]
                            align_right=set(self.align_right))
        notes = [f"note: {n}" for n in self.notes]  # type: ignore[attr-defined]
        return "\n".join([self.summary(), body, *notes, *self.extra_lines()])

    def __str__(self) -> str:
        return self.table()

    def as_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]


R = TypeVar("R")


def last_pass_report(gm: fx.GraphModule, kind: type[R], key: str = "report") -> R | None:
    """The newest report of type ``kind`` that a pass left in ``gm``'s history under ``stats[key]``, or None."""
    for record in reversed(graph_info(gm).history):
        report = getattr(record, "stats", {}).get(key)
        if isinstance(report, kind):
            return report
    return None


class LeftOut(NamedTuple):
    """A GEMM weight a compression did not reach."""

    name: str  # the constant's attribute path
    numel: int
    reason: str


@dataclass
class WeightCoverage:
    """How many GEMM weight parameters a compression reaches, of all of them, and the biggest it left out.

    Counted in parameters, not layers: one 4096x4096 Linear weighs more than a hundred small ones. Subclasses
    name what "reached" means (``reached_as``) and what the others are (``left_as``).
    """

    reached_params: int = 0
    total_params: int = 0
    left_out: list[LeftOut] = field(default_factory=list)  # biggest first once sorted by finish()

    reached_as: ClassVar[str] = "reached"
    left_as: ClassVar[str] = "left out"

    @property
    def fraction(self) -> float:
        return self.reached_params / self.total_params if self.total_params else 1.0

    def uncounted_weights(self, gm: fx.GraphModule) -> Iterator[tuple[fx.Node, torch.Tensor]]:
        """The get_attr nodes of rank >= 2 tensors whose attribute is not counted yet, with their tensors: a tied
        weight read through several get_attr nodes counts once, at the first node that :meth:`count` takes."""
        for node in gm.graph.nodes:
            if node.op != "get_attr" or str(node.target) in self._counted():
                continue
            t = get_attr_tensor(gm, node)
            if t is not None and t.dim() >= 2:
                yield node, t

    def _counted(self) -> set[str]:
        # not a field: as_dict() / JSON reports carry the figures, not the bookkeeping
        return self.__dict__.setdefault("_counted_names", set())

    def count(self, name: str, numel: int, reached: bool, reason: str = "") -> None:
        self._counted().add(name)
        self.total_params += numel
        if reached:
            self.reached_params += numel
        else:
            self.left_out.append(LeftOut(name, numel, reason))

    def finish(self):
        self.left_out.sort(key=lambda x: -x.numel)
        return self

    def summary(self, limit: int = 3) -> str:
        """``"93.1% of GEMM weight parameters in int8 (931 of 1,000); biggest left in float: fc (69): why"``."""
        head = (f"{100 * self.fraction:.1f}% of GEMM weight parameters {self.reached_as} "
                f"({self.reached_params:,} of {self.total_params:,})")
        if self.left_out:
            head += f"; biggest {self.left_as}: " + "; ".join(f"{x.name} ({x.numel:,}): {x.reason}"
                                                              for x in self.left_out[:limit])
        return head
