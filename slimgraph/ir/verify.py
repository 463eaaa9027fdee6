"""Invariants of the slimgraph IR, checked by the PassManager after every pass.

On top of ``graph.lint()`` (well-formed SSA, targets exist):

1. every get_attr node resolves to a tensor or module on the GraphModule;
2. every call_function target is an ATen/slimgraph op overload, a known Python builtin
   (``operator.getitem``, arithmetic on symbolic sizes) or a higher-order op;
3. every node that produces a value carries fake-tensor metadata (``meta["val"]``) once propagated;
4. the output node exists and is last.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..errors import VerificationError
from .graph_utils import _getattr_path

_ALLOWED_BUILTINS = {
    operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
    operator.mod, operator.neg, operator.pow, operator.eq, operator.ne, operator.lt, operator.le,
    operator.gt, operator.ge, operator.and_, operator.or_, operator.not_,
}


def _allowed_target(target) -> bool:
    if isinstance(target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
        return True
    if target in _ALLOWED_BUILTINS:
        return True
    module = getattr(target, "__module__", "") or ""
    return module.startswith("torch.fx.experimental.sym_node") or module.startswith("torch._sym")


def verify(gm: fx.GraphModule, *, require_meta: bool = True) -> None:
    """Raise VerificationError naming the first offending node."""
    try:
        gm.graph.lint()
    except Exception as exc:
        raise VerificationError(f"graph is malformed: {exc}") from exc
    nodes = list(gm.graph.nodes)
    if not nodes or nodes[-1].op != "output":
        raise VerificationError("graph has no output node at its end")
    for node in nodes:
        if node.op == "get_attr":
            if _getattr_path(gm, node.target) is None:
                raise VerificationError(f"get_attr node '{node.name}' refers to missing attribute {node.target!r}")
        elif node.op == "call_function":
            if not _allowed_target(node.target):
                raise VerificationError(
                    f"node '{node.name}' calls {node.target!r}, which is not an op overload; "
                    "passes must insert torch.ops.* overloads so the graph stays exportable"
                )
            if require_meta and node.users and "val" not in node.meta:
                raise VerificationError(f"node '{node.name}' has no meta['val']; the pass must call refresh()")
