"""SmoothQuant: migrate activation outliers of Linear inputs into the weights.

Transformer activations have a few channels with outliers 10-100x the rest; a per-tensor (or per-token)
int8 scale sized for them leaves every other channel with a handful of levels. With per-channel factors

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)        (max over calibration tokens / over all output rows)

``X W^T = (X / s) (W * s)^T`` exactly, and ``X / s`` is flat enough to quantize. ``alpha`` moves difficulty
from activations (alpha -> 1) to weights (alpha -> 0); 0.5 is the paper's default.

Where the activation comes out of a LayerNorm, ``1/s`` folds into its affine parameters and costs nothing::

    h -> layer_norm(h, g, b) -> {q_proj, k_proj, v_proj}
      =>  h -> layer_norm(h, g / s, b / s) -> {q_proj(W_q * s), k_proj(W_k * s), v_proj(W_v * s)}

A LayerNorm output that also feeds other ops (BERT's post-LN residual) gets ``mul(ln, s)`` on those edges,
which restores their exact input. Only linears that quantize their activations (w8a8, w8a8-dynamic) and read
a last-dim LayerNorm with constant affine parameters take part. Other activations (a GELU output feeding the
FFN down-projection) would need an explicit ``mul(x, 1/s)`` at run time; on all-MiniLM-L6-v2 that made the
static scheme worse (the GELU outliers sit in one channel *and* one token), so they are left alone: use
``max_error`` or ``per_layer`` for those layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from ..ir.graph_utils import add_constant, get_attr_tensor, set_attr_tensor
from ..ir.propagate import copy_provenance
from .observers import ChannelAbsMax
from .targets import QuantTarget

aten = torch.ops.aten


@dataclass
class SmoothGroup:
    source: fx.Node  # the LayerNorm the linears read
    linears: list[QuantTarget]


def _ln_params(gm: fx.GraphModule, ln: fx.Node) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
    """(weight, bias) of a last-dim LayerNorm with constant (or absent) affine parameters, else None."""
    args = list(ln.args) + [None] * (4 - len(ln.args))
    shape, weight, bias = args[1], args[2], args[3]
    val = ln.meta.get("val")
    if val is None or len(shape) != 1 or val.shape[-1] != shape[0]:
        return None
    tensors = []
    for arg in (weight, bias):
        if arg is None:
            tensors.append(None)
            continue
        t = get_attr_tensor(gm, arg) if isinstance(arg, fx.Node) else None
        if t is None:
            return None
        tensors.append(t)
    return tensors[0], tensors[1]


def _replace_constant(gm: fx.GraphModule, arg, value: torch.Tensor, fallback_name: str, reader: fx.Node) -> fx.Node:
    """A get_attr node holding ``value`` for ``reader``: the same attribute re-registered when nothing else reads
    it (names in reports and files stay the user's), else a new attribute (tied weights stay intact)."""
    if isinstance(arg, fx.Node) and arg.op == "get_attr" and len(arg.users) == 1 and _readers(gm, arg.target) == 1:
        set_attr_tensor(gm, arg.target, value)
        return arg
    target = add_constant(gm, value, fallback_name)
    with gm.graph.inserting_before(reader):
        return gm.graph.get_attr(target)


def _readers(gm: fx.GraphModule, target: str) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "get_attr" and n.target == target)


def smoothing_groups(gm: fx.GraphModule, targets: list[QuantTarget],
                     activation_quantized: set[str]) -> list[SmoothGroup]:
    """Linears grouped by the LayerNorm they read (one factor per LayerNorm output: its quantizer is shared)."""
    groups: dict[fx.Node, SmoothGroup] = {}
    for t in targets:
        x = t.x
        if (t.kind != "linear" or t.node.name not in activation_quantized or not isinstance(x, fx.Node)
                or x.target is not aten.layer_norm.default or _ln_params(gm, x) is None):
            continue
        groups.setdefault(x, SmoothGroup(x, [])).linears.append(t)
    return list(groups.values())


def smoothing_factors(group: SmoothGroup, gm: fx.GraphModule, act: ChannelAbsMax, alpha: float) -> torch.Tensor:
    wmax = None
    for t in group.linears:
        w = get_attr_tensor(gm, t.weight).detach().abs().to(torch.float32).amax(0)
        wmax = w if wmax is None else torch.maximum(wmax, w)
    amax = act.absmax
    s = amax.clamp(min=1e-5).pow(alpha) / wmax.clamp(min=1e-5).pow(1.0 - alpha)
    # Dead channels (never active) keep s = 1; s is bounded so no weight column is blown up or zeroed.
    s = torch.where(amax > 0, s, torch.ones_like(s)).clamp(1e-3, 1e3)
    return s


def apply_smoothing(gm: fx.GraphModule, group: SmoothGroup, s: torch.Tensor) -> None:
    """``s`` into the linears' input channels, ``1/s`` into the LayerNorm's affine parameters."""
    for t in group.linears:
        w = get_attr_tensor(gm, t.weight)
        new_w = _replace_constant(gm, t.weight, (w.to(torch.float32) * s).to(w.dtype), f"{t.weight.target}_smoothed",
                                  t.node)
        t.node.replace_input_with(t.weight, new_w)
        t.weight = new_w
    _fold_into_layer_norm(gm, group, s)


def _constant_node(gm: fx.GraphModule, value: torch.Tensor, name: str, after: fx.Node) -> fx.Node:
    target = add_constant(gm, value, name)
    with gm.graph.inserting_after(after):
        return gm.graph.get_attr(target)


def _fold_into_layer_norm(gm: fx.GraphModule, group: SmoothGroup, s: torch.Tensor) -> None:
    ln = group.source
    weight, bias = _ln_params(gm, ln)
    dtype = (weight if weight is not None else ln.meta["val"]).dtype
    base = ln.args[2].target if isinstance(ln.args[2], fx.Node) else ln.name
    others = [u for u in ln.users if u not in {t.node for t in group.linears}]
    args = list(ln.args) + [None] * (4 - len(ln.args))
    g = weight.to(torch.float32) if weight is not None else torch.ones_like(s)
    for index, value in ((2, g / s), (3, bias.to(torch.float32) / s if bias is not None else None)):
        if value is not None:
            args[index] = _replace_constant(gm, args[index], value.to(dtype), f"{base}_smoothed", ln)
    ln.args = tuple(args)
    if others:  # readers outside the group must still see the original LayerNorm output
        factor = _constant_node(gm, s.to(dtype), f"{base}_unsmooth", ln)
        with gm.graph.inserting_after(factor):
            restored = gm.graph.call_function(aten.mul.Tensor, (ln, factor))
        copy_provenance(restored, ln)
        for user in others:
            user.replace_input_with(ln, restored)
