"""Dead-code elimination.

    x -> relu -> (unused)          x -> linear -> out
    x -> linear -> out      =>
    bn.running_mean (unused attr)

Removes pure nodes whose results nobody reads, unused ``get_attr`` nodes, and then the parameters,
buffers and submodules no node references any more, so folded weights also leave the state dict and
the saved file. Impure nodes (in-place writes, asserts, prints through custom ops) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.fx as fx

from ..ir.graph_utils import remove_unused_attributes
from .base import Pass, PassResult, register_pass


def tidy(gm: fx.GraphModule) -> tuple[int, int]:
    """DCE + unused-attribute removal. Returns (nodes removed, tensor elements freed)."""
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code()
    removed = before - len(gm.graph.nodes)
    freed = remove_unused_attributes(gm)
    if removed or freed:
        gm.recompile()
    return removed, freed


@register_pass
@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    name: ClassVar[str] = "dce"
    summary: ClassVar[str] = "remove unused nodes, parameters and buffers"

    def run(self, gm: fx.GraphModule) -> PassResult:
        removed, freed = tidy(gm)
        return PassResult(gm, bool(removed or freed), {"nodes_removed": removed, "elements_freed": freed})
