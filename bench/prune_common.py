"""Helpers shared by the pruning benchmarks: measurement helpers and Torch-Pruning adapters (run metadata and
result files come from :mod:`bench.harness`).

Torch-Pruning (``torch_pruning``) is installed in the bench environment only, never a slimgraph dependency:
everything that touches it imports it lazily, here, so the slimgraph side of each benchmark runs without it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.utils._pytree as pytree

# the prune benches' metadata and writers are the harness's (re-exported: several scripts import them from here)
from bench.harness import (  # noqa: F401
    human,
    md_table,
    meta_lines,
    run_metadata,
    save_figure,
    target_line,
    version,
    write_results,
)
from bench.harness import load_average as load  # noqa: F401

# ----------------------------------------------------------------------------------------- run metadata


def run_meta(module: str, argv: list[str] | None) -> dict[str, Any]:
    """The harness's run metadata plus the Torch-Pruning version the side-by-side runs used."""
    return run_metadata(module, argv, torch_pruning=version("torch_pruning") or "not installed")


# ------------------------------------------------------------------------------------------ measurement


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def param_count(model: nn.Module) -> int:
    """Distinct parameters (tied tensors once); buffers such as BN running statistics do not count."""
    return sum(t.numel() for t in {id(t): t for t in model.parameters()}.values())


def macs(model: nn.Module, args: tuple, kwargs: dict | None = None) -> int | None:
    """MACs at the given inputs with slimgraph's counter (same rules for every model, whichever tool pruned it)."""
    import slimgraph as sg
    from slimgraph.report import totals

    try:
        return int(totals(sg.capture(model, args, kwargs or {})).macs)
    except Exception:  # a model slimgraph cannot capture: the caller reports None
        return None


def leaves(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def first_tensor(out) -> torch.Tensor:
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits
    if hasattr(out, "last_hidden_state") and isinstance(out.last_hidden_state, torch.Tensor):
        return out.last_hidden_state
    return leaves(out)[0]


class CachedTeacher(nn.Module):
    """The teacher's outputs on a fixed list of batches, computed once.

    ``slimgraph.distill`` runs the (frozen, eval-mode) teacher on every step; on a small shared CPU that costs
    as much as the student's forward. The teacher is deterministic, so looking its output up is the same
    computation. Batches are recognised by the identity of their first tensor and checked for equality.
    """

    def __init__(self, teacher: nn.Module, batches: list[tuple]):
        super().__init__()
        self.teacher = teacher
        self._cache: dict[int, tuple[torch.Tensor, Any]] = {}
        teacher.eval()
        with torch.no_grad():
            for batch in batches:
                self._cache[batch[0].data_ptr()] = (batch[0].clone(), teacher(*batch))

    def forward(self, *args):
        hit = self._cache.get(args[0].data_ptr())
        if hit is not None and torch.equal(hit[0], args[0]):
            return hit[1]
        with torch.no_grad():
            return self.teacher(*args)


# ------------------------------------------------------------------------------- Torch-Pruning adapters


def tp_prune(model: nn.Module, example_inputs, *, ratio: float, ignored_layers: list[nn.Module] = (),
             num_heads: dict[nn.Module, int] | None = None, head_ratio: float = 0.0, round_to: int | None = None,
             pruning_ratio_dict: dict | None = None, forward_fn: Callable | None = None,
             output_transform: Callable | None = None, p: int = 2):
    """Torch-Pruning's MetaPruner with GroupMagnitudeImportance(p); prunes ``model`` in place.

    Whole heads only (``prune_num_heads=True, prune_head_dims=False``) when ``num_heads`` is given, as
    slimgraph does. Returns the pruner (its ``num_heads`` holds the head counts after pruning).
    """
    import torch_pruning as tp

    kwargs = dict(importance=tp.importance.GroupMagnitudeImportance(p=p), pruning_ratio=ratio,
                  ignored_layers=list(ignored_layers), round_to=round_to, pruning_ratio_dict=pruning_ratio_dict)
    if num_heads:
        kwargs.update(num_heads=dict(num_heads), prune_num_heads=True, prune_head_dims=False,
                      head_pruning_ratio=head_ratio)
    if forward_fn is not None:
        kwargs["forward_fn"] = forward_fn
    if output_transform is not None:
        kwargs["output_transform"] = output_transform
    pruner = tp.pruner.MetaPruner(model, example_inputs, **kwargs)
    pruner.step()
    return pruner


def args_kwargs_forward(model: nn.Module, inputs):
    """forward_fn for TP when the example is ``(args, kwargs)``."""
    args, kwargs = inputs
    return model(*args, **kwargs)


def sum_of_outputs(out) -> torch.Tensor:
    """output_transform for TP: one scalar that depends on every float output (ModelOutputs, tuples...)."""
    return sum(t.float().sum() for t in leaves(out) if t.is_floating_point())


def hf_attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """num_heads for TP, written the way its users must: q/k/v Linears of every self-attention module whose
    class is known (BERT/ViT-style query/key/value; Llama/Swin-style q/k/v_proj, with GQA head counts)."""
    heads: dict[nn.Module, int] = {}
    for m in model.modules():
        if all(isinstance(getattr(m, a, None), nn.Linear) for a in ("query", "key", "value")) and \
                hasattr(m, "num_attention_heads"):
            for lin in (m.query, m.key, m.value):
                heads[lin] = m.num_attention_heads
        elif all(isinstance(getattr(m, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj")) and \
                isinstance(getattr(m, "head_dim", None), int):
            heads[m.q_proj] = m.q_proj.out_features // m.head_dim  # GQA: k/v have fewer heads than q
            heads[m.k_proj] = m.k_proj.out_features // m.head_dim
            heads[m.v_proj] = m.v_proj.out_features // m.head_dim
    return heads


def hf_patch_heads(model: nn.Module) -> list[str]:
    """What a TP user patches by hand after head pruning; returns what was patched."""
    patched = []
    for name, m in model.named_modules():
        if all(isinstance(getattr(m, a, None), nn.Linear) for a in ("query", "key", "value")) and \
                hasattr(m, "num_attention_heads") and hasattr(m, "attention_head_size"):
            m.all_head_size = m.query.out_features
            m.num_attention_heads = m.all_head_size // m.attention_head_size
            patched.append(f"{name}: num_attention_heads={m.num_attention_heads}, all_head_size={m.all_head_size}")
        elif all(isinstance(getattr(m, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj")) and \
                hasattr(m, "head_dim"):
            q, kv = m.q_proj.out_features // m.head_dim, m.k_proj.out_features // m.head_dim
            if hasattr(m, "num_key_value_groups") and kv:
                m.num_key_value_groups = q // kv
            for attr, value in (("num_heads", q), ("num_attention_heads", q), ("num_key_value_heads", kv)):
                if isinstance(getattr(m, attr, None), int):
                    setattr(m, attr, value)
            patched.append(f"{name}: q heads {q}, kv heads {kv}, num_key_value_groups={q // kv if kv else '-'}")
    return patched


class EvalModeForward(nn.Module):
    """Trains the wrapped module's weights while its layers keep their eval-mode behaviour.

    A slimgraph GraphModule is captured in eval mode: BatchNorm uses its running statistics and dropout is
    gone, whatever ``.train()`` says. Wrapping a plain nn.Module in this gives ``slimgraph.distill`` the same
    forward semantics on both sides, so "the same distillation" is the same computation.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.eval()

    def train(self, mode: bool = True):
        self.training = mode
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
