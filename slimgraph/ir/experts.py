"""Mixture-of-experts blocks traced in a form made only of ATen ops: every expert over every token, then weighted.

transformers 5 runs the experts of Mixtral, Qwen2-MoE and their relatives through an "experts implementation"
(``use_experts_implementation``). Its grouped form sorts tokens by expert and calls an op of its own
(``torch.ops.transformers.grouped_mm_fallback`` on CPU), which archives cannot store, ONNX cannot export and the
pruning analysis cannot see into; its eager form loops over the experts a batch happens to hit (data dependent).
While slimgraph captures a model, :func:`dense_experts` swaps every such experts module's forward for
:func:`dense_experts_forward`::

    x [T, H], top_k (index [T, k], weight [T, k])
        =>  routing [E, T] = sum_k weight * (index == e)           (0 for experts a token does not use)
            h = act(x @ Wgu[e].T)... [E, T, I]   (one matmul over the stacked weights, gate/up split as before)
            y = sum_e routing[e, :, None] * (h @ Wd[e].T)  [T, H]

Every token is run through every expert and the experts it does not use are weighted by exactly 0, so the result
is the routed result (up to float summation order): E/k times the expert FLOPs of the routed form, no gather of
per-token weights, and plain ``matmul`` over constant 3-D weights, which the archive stores, ONNX exports as
MatMul, weight-only int8 stores in int8, and the pruning analysis (``prune/analysis/experts.py``) prunes: the
intermediate neurons of all experts of one block are removed at the same positions (one kept set per block, so
the weights stay dense 3-D tensors). The user's module is restored when capture ends.

**Cost.** The dense form multiplies the experts' FLOPs (and their activation memory) by E/k (E experts, k chosen
per token: Mixtral's 8 and 2 make it 4x) against the routed form; the results are the same. Capture therefore
raises a :class:`DenseExpertsWarning` once per captured model that has such blocks, naming E, k and the factor,
so nobody benchmarks a captured MoE model without knowing. The routed form would need a sort/gather op that the
archive, ONNX and the pruning analysis all understand; until then exactness and portability win over speed.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn as nn


class DenseExpertsWarning(UserWarning):
    """The captured graph runs every expert over every token: E/k times the routed form's expert FLOPs."""


def warn_dense_experts(model: nn.Module) -> int:
    """Warn once for ``model`` if it has experts modules that capture runs densely; returns how many it has."""
    blocks = [m for m in model.modules() if is_experts_module(m)]
    if not blocks:
        return 0
    e = int(blocks[0].num_experts)
    k = _top_k(model)
    factor = f"{e / k:g}x" if k else f"E/k (E = {e}; k not found in the model's config)"
    warnings.warn(f"{len(blocks)} mixture-of-experts block(s) captured in the dense form: every token runs through "
                  f"all {e} experts and unused ones are weighted by 0 (exact, and the archive, ONNX and pruning "
                  f"understand it), which costs {factor} the expert FLOPs of the routed form"
                  f"{f' (top-{k} of {e})' if k else ''}; see slimgraph.ir.experts", DenseExpertsWarning, stacklevel=3)
    return len(blocks)


def _top_k(model: nn.Module) -> int | None:
    """k of the top-k routing: from the model's config, else from a router or block that stores it."""
    for owner in (getattr(model, "config", None), *model.modules()):
        for name in ("num_experts_per_tok", "top_k", "moe_topk", "num_selected_experts"):
            value = getattr(owner, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


# attributes transformers' ``use_experts_implementation`` decorator sets on an experts module
_DECORATED = ("has_gate", "has_bias", "is_transposed", "has_post_expert_norm")


def is_experts_module(module: nn.Module) -> bool:
    """A transformers experts module whose forward is ``(hidden_states, top_k_index, top_k_weights)``."""
    if not all(hasattr(module, a) for a in _DECORATED) or not hasattr(module, "num_experts"):
        return False
    up = getattr(module, "gate_up_proj" if module.has_gate else "up_proj", None)
    down = getattr(module, "down_proj", None)
    return isinstance(up, torch.Tensor) and up.dim() == 3 and isinstance(down, torch.Tensor) and down.dim() == 3


def _stacked_linear(x: torch.Tensor, weight: torch.Tensor, bias, transposed: bool) -> torch.Tensor:
    """``x`` [T, K] or [E, T, K] through every expert's weight: [E, T, N]."""
    w = weight if transposed else weight.transpose(1, 2)  # [E, K, N]
    out = torch.matmul(x, w)
    if bias is not None:
        out = out + bias.unsqueeze(1)
    return out


def dense_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """Every expert over every token, weighted by the routing weights (0 for unused experts)."""
    num_experts = self.num_experts
    experts = torch.arange(num_experts, device=hidden_states.device)
    chosen = (top_k_index.unsqueeze(-1) == experts).to(top_k_weights.dtype)  # [T, k, E]
    routing = (chosen * top_k_weights.unsqueeze(-1)).sum(dim=1).transpose(0, 1)  # [E, T]
    x = hidden_states.to(self.down_proj.dtype)
    if self.has_gate:
        bias = self.gate_up_proj_bias if self.has_bias else None
        h = self._apply_gate(_stacked_linear(x, self.gate_up_proj, bias, self.is_transposed))
    else:
        bias = self.up_proj_bias if self.has_bias else None
        h = self.act_fn(_stacked_linear(x, self.up_proj, bias, self.is_transposed))
    bias = self.down_proj_bias if self.has_bias else None
    out = _stacked_linear(h, self.down_proj, bias, self.is_transposed)  # [E, T, H]
    if self.has_post_expert_norm:
        out = self.post_expert_norm(out)
    out = (out * routing.unsqueeze(-1).to(out.dtype)).sum(dim=0)
    return out.to(hidden_states.dtype)


@contextlib.contextmanager
def dense_experts(model: nn.Module):
    """While the block runs, every experts module of ``model`` computes with :func:`dense_experts_forward`."""
    swapped = []
    for module in model.modules():
        if is_experts_module(module):
            had_own = "forward" in module.__dict__
            swapped.append((module, had_own, module.__dict__.get("forward")))
            module.forward = dense_experts_forward.__get__(module)
    try:
        yield len(swapped)
    finally:
        for module, had_own, own in swapped:
            if had_own:
                module.forward = own
            else:
                del module.forward
