"""PassManager: runs a pipeline of passes over a captured GraphModule.

After each pass it re-derives metadata for new nodes, verifies the graph (lint + IR invariants), and,
when asked, runs the graph on sample inputs and compares with the graph before the pass: a lossless
pass must stay within its tolerance, a lossy pass has its error recorded. A failure names the pass and
the passes that ran before it. ``SLIMGRAPH_DUMP=dir`` writes the graph after every pass.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.fx as fx

from ..errors import PassError, SlimgraphError
from ..ir import dynamic
from ..ir.info import graph_info
from ..ir.propagate import refresh
from ..ir.verify import verify
from ..numerics import OutputError, compare_outputs, run_module
from .base import Pass, parse_pipeline

log = logging.getLogger("slimgraph")


@dataclass
class PassRecord:
    name: str
    seconds: float
    modified: bool
    stats: dict[str, Any]
    notes: list[str]
    nodes_before: int
    nodes_after: int
    error_vs_previous: OutputError | None = None
    error_vs_input: OutputError | None = None
    # the same comparison with every dynamic input dim one longer than the example's: a pass that baked an
    # example size into the graph fails there
    error_at_other_shape: OutputError | None = None


@dataclass
class PipelineResult:
    gm: fx.GraphModule
    records: list[PassRecord] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.records)

    def table(self) -> str:
        """A readable per-pass summary."""
        rows = [("pass", "time", "changed", "nodes", "error vs input", "stats")]
        for r in self.records:
            stats = ", ".join(f"{k}={v}" for k, v in r.stats.items() if isinstance(v, (int, float, str, bool)))
            err = str(r.error_vs_input) if r.error_vs_input is not None else "-"
            rows.append((r.name, f"{r.seconds * 1e3:.0f} ms", "yes" if r.modified else "no",
                         f"{r.nodes_before}->{r.nodes_after}", err, stats))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines = []
        for row in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        return "\n".join(lines)


class PassManager:
    """Run ``passes`` (Pass objects or a pipeline string) over a GraphModule.

    Args:
        check_numerics: run the graph on its sample inputs before and after every pass and compare;
            lossless passes must stay within their tolerance or the run fails.
        sample_inputs: ``(args, kwargs)`` to check with; defaults to the inputs recorded at capture.
        verify: lint the graph and check IR invariants after every pass.
        dump_dir: write the graph after every pass there (default: ``$SLIMGRAPH_DUMP``).
    """

    def __init__(
        self,
        passes: str | Sequence[str | Pass],
        *,
        check_numerics: bool = False,
        sample_inputs: tuple[tuple, dict] | None = None,
        verify: bool = True,
        dump_dir: str | os.PathLike | None = None,
    ):
        self.passes = parse_pipeline(passes)
        self.check_numerics = check_numerics
        self.sample_inputs = sample_inputs
        self.verify = verify
        dump = dump_dir if dump_dir is not None else os.environ.get("SLIMGRAPH_DUMP")
        self.dump_dir = Path(dump) if dump else None

    def __repr__(self) -> str:
        return f"PassManager({','.join(str(p) for p in self.passes)!r})"

    def run(self, gm: fx.GraphModule) -> PipelineResult:
        result = PipelineResult(gm)
        args, kwargs = self._inputs(gm)
        reference = previous = run_module(gm, args, kwargs) if self.check_numerics else None
        other, previous_other = self._other_shape(gm, args, kwargs) if self.check_numerics else (None, None)
        self._dump(gm, 0, "input")
        done: list[str] = []
        for index, p in enumerate(self.passes, start=1):
            before = len(gm.graph.nodes)
            start = time.perf_counter()
            try:
                out = p.run(gm)
                gm = out.gm
                if out.modified:
                    if self.verify:  # structure first: a broken graph would fail to propagate or compile
                        verify(gm, require_meta=False)
                    refresh(gm)
                    gm.recompile()
                if self.verify:
                    verify(gm)
            except PassError:
                raise
            except SlimgraphError as exc:
                raise PassError(str(exc), pass_name=str(p), predecessors=tuple(done)) from exc
            except Exception as exc:
                raise PassError(f"{type(exc).__name__}: {exc}", pass_name=str(p),
                                predecessors=tuple(done)) from exc
            seconds = time.perf_counter() - start
            record = PassRecord(str(p), seconds, out.modified, dict(out.stats), list(out.notes), before,
                                len(gm.graph.nodes))
            if self.check_numerics and out.modified:
                current = self._run_checked(gm, args, kwargs, p, done)
                record.error_vs_previous = compare_outputs(current, previous)
                record.error_vs_input = compare_outputs(current, reference)
                tol = type(p).tolerance
                if tol is not None and record.error_vs_previous.max_rel > tol:
                    raise PassError(
                        f"lossless rewrite changed the outputs: {record.error_vs_previous} "
                        f"(tolerance {tol:g} relative)", pass_name=str(p), predecessors=tuple(done))
                previous = current
                if other is not None:
                    current_other = self._run_checked(gm, *other, p, done, shape=" at other input shapes")
                    record.error_at_other_shape = compare_outputs(current_other, previous_other)
                    if tol is not None and record.error_at_other_shape.max_rel > tol:
                        raise PassError(
                            f"lossless rewrite changed the outputs at input shapes other than the example's: "
                            f"{record.error_at_other_shape} (tolerance {tol:g} relative)", pass_name=str(p),
                            predecessors=tuple(done))
                    previous_other = current_other
            if out.modified:
                graph_info(gm).applied.append(str(p))
            for note in out.notes:
                log.info("%s: %s", p.name, note)
            result.records.append(record)
            graph_info(gm).history.append(record)
            result.gm = gm
            done.append(str(p))
            self._dump(gm, index, p.name)
        return result

    def _inputs(self, gm: fx.GraphModule) -> tuple[tuple, dict]:
        if self.sample_inputs is not None:
            return self.sample_inputs
        info = graph_info(gm)
        return tuple(info.example_args), dict(info.example_kwargs)

    @staticmethod
    def _run_checked(gm, args, kwargs, p: Pass, done: list[str], shape: str = ""):
        try:
            return run_module(gm, args, kwargs)
        except Exception as exc:
            raise PassError(f"the rewritten graph no longer runs{shape}: {type(exc).__name__}: {exc}",
                            pass_name=str(p), predecessors=tuple(done)) from exc

    def _other_shape(self, gm: fx.GraphModule, args: tuple, kwargs: dict):
        """Inputs with every dynamic dim one longer, and the input graph's outputs there; (None, None) when the
        graph has no dynamic dim or does not run there itself (e.g. a length at the model's maximum)."""
        other = dynamic.grown_inputs(gm, args, kwargs, graph_info(gm).dynamic_dims)
        if other is None:
            return None, None
        try:
            return other, run_module(gm, *other)
        except Exception as exc:  # noqa: BLE001 - the model's own limit, not a pass's fault: say so, check less
            note = (f"numeric checks at other input shapes skipped: the input graph does not run with its dynamic "
                    f"dims one longer ({type(exc).__name__}: {str(exc)[:160]})")
            log.warning(note)
            graph_info(gm).shape_notes.append(note)
            return None, None

    def _dump(self, gm: fx.GraphModule, index: int, name: str) -> None:
        if self.dump_dir is None:
            return
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        path = self.dump_dir / f"{index:02d}-{name}.txt"
        path.write_text(f"# after {name}\n{gm.graph}\n\n# generated code\n{gm.code}\n")


def run_pipeline(gm: fx.GraphModule, pipeline: str | Sequence[str | Pass], **kwargs) -> PipelineResult:
    return PassManager(pipeline, **kwargs).run(gm)
