"""Knowledge distillation: recover what pruning (or quantization-aware fine-tuning) cost.

    student = sg.distill(student, teacher, batches, steps=300, temperature=2.0, alpha=0.5)

Loss per step, on the teacher's and the student's outputs for the same inputs:

* ``output_loss="kl"`` (Hinton et al.): KL(softmax(t / T) || softmax(s / T)) * T^2 on the first output
  tensor (a classifier's logits); ``"mse"`` or ``"cosine"`` for regression-like outputs such as sentence
  embeddings;
* mixed with the task loss when a batch carries labels: ``alpha * kd + (1 - alpha) * cross_entropy``;
* plus ``hidden_weight`` x the mean squared error of hidden states: for a student captured by slimgraph
  (a pruned GraphModule) the outputs of its LayerNorm nodes that the teacher's graph has under the same name
  and shape (pruning keeps node names and the residual width: each transformer block's output is matched,
  dense supervision that recovers far more than the final output alone); for other models, every further
  output tensor whose shape matches the teacher's.

AdamW with linear warm-up then cosine decay, gradient clipping, a progress bar. Under ``torchrun`` (an
initialized ``torch.distributed`` process group) the student is wrapped in DistributedDataParallel and
each rank trains on its own shard of the batches; every rank returns the same trained module.

A batch is a tuple of positional inputs, or a dict ``{"args": tuple, "kwargs": dict, "labels": tensor}``.

Fine-tuning keeps what compression made discrete: weights listed in ``graph_info(student).sparsity`` (written
by ``sparsify``) have their gradients masked and their zeros re-applied after every step, so the pattern
survives exactly; a weight-shared student's codes are integer buffers, so only its codebooks (and whatever
else ``trainable`` selects) move. ``trainable`` (fnmatch patterns over parameter names) restricts training to
some tensors, e.g. ``trainable=["*_codebook"]``.

One teacher, several students: :func:`distill_many` (or ``teacher_outputs=TeacherOutputs(teacher)`` shared
between calls) runs the teacher once per batch and reuses its outputs for every student.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
import torch.utils._pytree as pytree

from .errors import InputError
from .ir.info import GRAPH_KEY, graph_info
from .progress import progress

OUTPUT_LOSSES = ("kl", "mse", "cosine")
log = logging.getLogger("slimgraph")


@dataclass
class DistillResult:
    """Loss history of a run (per step), kept on the returned module as ``module.distill_history``."""

    losses: list[float] = field(default_factory=list)
    kd_losses: list[float] = field(default_factory=list)
    task_losses: list[float] = field(default_factory=list)
    hidden_states: list[str] = field(default_factory=list)  # graph nodes matched by the hidden-state loss
    trained: list[str] = field(default_factory=list)  # parameters the optimizer updated
    masked: list[str] = field(default_factory=list)  # sparse weights whose zeros were kept exactly
    notes: list[str] = field(default_factory=list)


class TeacherOutputs:
    """The teacher's outputs per batch, computed once and shared by every student distilled with this object.

    Keyed by batch position and the hidden states tapped (students that tap different LayerNorm states need
    different teacher values). Holds every batch's outputs in memory: meant for classifier logits and
    embeddings, not for huge sequence outputs over thousands of batches.
    """

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher
        self.computed = 0  # teacher forward passes run (tests and reports read it)
        self._values: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def get(self, index: int, runner, args: tuple, kwargs: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        key = (index, tuple(runner.names) if isinstance(runner, _Tapped) else ())
        if key not in self._values:
            with torch.no_grad():
                self._values[key] = _outputs(runner(*args, **kwargs), runner)
            self.computed += 1
        return self._values[key]


def _split_batch(batch) -> tuple[tuple, dict, torch.Tensor | None]:
    if isinstance(batch, dict):
        args = batch.get("args", ())
        return (tuple(args) if isinstance(args, (tuple, list)) else (args,)), dict(batch.get("kwargs", {})), \
            batch.get("labels")
    if isinstance(batch, torch.Tensor):
        return (batch,), {}, None
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}, None
    raise InputError(f"a batch must be a tuple of inputs or a dict with 'args'/'kwargs'/'labels', got "
                     f"{type(batch).__name__}")


def _tensors(out) -> list[torch.Tensor]:
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):  # transformers ModelOutput: logits first
        rest = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t is not out.logits]
        return [out.logits, *rest]
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    s, t = student.float(), teacher.float()
    if kind == "kl":
        log_p = F.log_softmax(s / temperature, dim=-1)
        q = F.softmax(t / temperature, dim=-1)
        return F.kl_div(log_p, q, reduction="batchmean") * temperature**2
    if kind == "mse":
        return F.mse_loss(s, t)
    return (1.0 - F.cosine_similarity(s.flatten(1) if s.dim() > 1 else s, t.flatten(1) if t.dim() > 1 else t,
                                      dim=-1)).mean()


def _schedule(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def distill(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable,
    steps: int = 100,
    temperature: float = 2.0,
    alpha: float = 0.5,
    *,
    output_loss: str = "kl",
    hidden_weight: float = 0.0,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    warmup: float = 0.1,
    max_grad_norm: float = 1.0,
    progress: bool = True,
    seed: int = 0,
    trainable: Iterable[str] | str | None = None,
    teacher_outputs: TeacherOutputs | None = None,
) -> nn.Module:
    """Train a copy of ``student`` to match ``teacher`` on ``batches``; returns the trained copy.

    Args:
        steps: optimizer steps (batches are cycled as needed).
        temperature: softmax temperature T of the KL term.
        alpha: weight of the distillation term against the task loss (used only when batches carry labels).
        output_loss: "kl" (logits), "mse" or "cosine" (embeddings, regressions).
        hidden_weight: weight of the MSE on further same-shaped output tensors.
        warmup: fraction of steps of linear learning-rate warm-up.
        trainable: fnmatch patterns of the parameter names to train (default: every floating-point parameter).
        teacher_outputs: a :class:`TeacherOutputs` of ``teacher`` shared with other students (see distill_many).
    """
    if output_loss not in OUTPUT_LOSSES:
        raise InputError(f"unknown output_loss {output_loss!r}; choose one of {', '.join(OUTPUT_LOSSES)}")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if temperature <= 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    data = list(batches)
    if not data:
        raise InputError("distill() needs at least one batch")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    shard = data[rank::world] if len(data) >= world else data

    torch.manual_seed(seed)
    model = copy.deepcopy(student)  # private tensors: training can touch neither the caller's student nor teacher
    student_run, teacher_run, hidden_names = model, teacher, []
    if hidden_weight and _is_slimgraph(model):
        teacher_graph = teacher if _is_slimgraph(teacher) else _capture_like(teacher, model)
        hidden_names = hidden_state_nodes(model, teacher_graph) if teacher_graph is not None else []
        if hidden_names:
            student_run, teacher_run = _Tapped(model, hidden_names), _Tapped(teacher_graph, hidden_names)
        else:
            log.info("distill: no LayerNorm states shared by student and teacher graphs; hidden_weight applies to "
                     "further same-shaped outputs")
    model.train()
    teacher_was_training = teacher.training
    teacher.eval()
    if teacher_outputs is not None and teacher_outputs.teacher is not teacher:
        raise InputError("teacher_outputs was made for another teacher; pass TeacherOutputs(teacher) of this one")
    named = _trainable(model, trainable)
    params = [p for _, p in named]
    history = DistillResult(trained=[name for name, _ in named])
    masks = _sparsity_masks(model, dict(named), history)
    wrapped = nn.parallel.DistributedDataParallel(student_run) if distributed else student_run
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = int(warmup * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, steps, warm))
    bar = _progress(steps, progress and rank == 0)
    try:
        for step in range(steps):
            args, kwargs, labels = _split_batch(shard[step % len(shard)])
            if teacher_outputs is not None:
                t_out, t_hidden = teacher_outputs.get(step % len(shard), teacher_run, args, kwargs)
            else:
                with torch.no_grad():
                    t_out, t_hidden = _outputs(teacher_run(*args, **kwargs), teacher_run)
            s_out, s_hidden = _outputs(wrapped(*args, **kwargs), student_run)
            kd = kd_loss(s_out[0], t_out[0], output_loss, temperature)
            loss = kd
            task = None
            if labels is not None:
                task = F.cross_entropy(s_out[0].float().flatten(0, -2), labels.flatten())
                loss = alpha * kd + (1.0 - alpha) * task
            if hidden_weight:
                pairs = list(zip(s_hidden, t_hidden)) if hidden_names else [
                    (s, t) for s, t in zip(s_out[1:], t_out[1:]) if s.shape == t.shape and s.is_floating_point()]
                if pairs:
                    loss = loss + hidden_weight * sum(F.mse_loss(s.float(), t.float()) for s, t in pairs) / len(pairs)
            if not torch.isfinite(loss):
                raise InputError(f"distillation loss became {loss.item()} at step {step}: lower lr or check inputs")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for p, keep in masks:
                if p.grad is not None:
                    p.grad.mul_(keep)  # pruned weights get no gradient (and none enters the clipping norm)
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                for p, keep in masks:  # AdamW's decoupled decay and eps cannot move them, but make it exact
                    p.masked_fill_(~keep, 0.0)
            history.losses.append(loss.item())
            history.kd_losses.append(kd.item())
            if task is not None:
                history.task_losses.append(task.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
    finally:
        if bar is not None:
            bar.close()
        teacher.train(teacher_was_training)
    model.eval()
    for p in params:
        p.grad = None
    history.hidden_states = hidden_names
    model.distill_history = history
    return model


def distill_many(students: Iterable[nn.Module], teacher: nn.Module, batches: Iterable, **options) -> list[nn.Module]:
    """Distill every student from one teacher; the teacher runs once per batch, its outputs shared.

    ``options`` are :func:`distill`'s (steps, temperature, output_loss, ...). Students may differ from the
    teacher and from each other in architecture: only their outputs must have the teacher's shapes.
    """
    students = list(students)
    if not students:
        raise InputError("distill_many() needs at least one student")
    if "teacher_outputs" in options:
        raise InputError("distill_many() shares the teacher's outputs itself; do not pass teacher_outputs")
    data = list(batches)
    cache = TeacherOutputs(teacher)
    return [distill(student, teacher, data, teacher_outputs=cache, **options) for student in students]


def _trainable(model: nn.Module, patterns) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of what the optimizer trains; every other parameter is frozen."""
    floating = [(name, p) for name, p in model.named_parameters() if p.is_floating_point()]
    if patterns is None:
        chosen = floating
    else:
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        chosen = [(name, p) for name, p in floating if any(fnmatch.fnmatchcase(name, pat) for pat in patterns)]
        if not chosen:
            names = ", ".join(name for name, _ in floating[:8]) + (", ..." if len(floating) > 8 else "")
            raise InputError(f"trainable={list(patterns)} matches no floating-point parameter of the student "
                             f"(its parameters: {names or 'none'})")
    if not chosen:
        raise InputError("the student has no floating-point parameters to train")
    keep = {id(p) for _, p in chosen}
    for _, p in model.named_parameters():
        p.requires_grad_(id(p) in keep)
    return chosen


def _sparsity_masks(model: nn.Module, trained: dict[str, nn.Parameter], history: DistillResult):
    """(parameter, keep mask) of every trained weight whose zero pattern ``sparsify`` recorded."""
    if not _is_slimgraph(model):
        return []
    masks = []
    for weight, pattern in graph_info(model).sparsity.items():
        param = trained.get(weight)
        if param is not None:
            masks.append((param, param.detach() != 0))
            history.masked.append(weight)
            continue
        try:
            model.get_parameter(weight)
            continue  # frozen by `trainable`: its zeros cannot move
        except AttributeError:
            pass
        # not a parameter (a lowered sparse op's values, a buffer): nothing trains it, so its pattern holds
        history.notes.append(f"sparse weight {weight} ({pattern}) is not a parameter of the student; it is not "
                             "trained")
    return masks


def _is_slimgraph(module) -> bool:
    return isinstance(module, fx.GraphModule) and GRAPH_KEY in module.meta


def _capture_like(teacher: nn.Module, student: fx.GraphModule) -> fx.GraphModule | None:
    """The teacher as a graph, to tap its hidden states; None (and the output-only loss) if it cannot be
    captured, e.g. a Python wrapper torch.export cannot trace."""
    from .errors import SlimgraphError
    from .ir.capture import capture

    info = graph_info(student)
    try:
        return capture(teacher, info.example_args, info.example_kwargs, share_weights=True)
    except SlimgraphError as exc:
        log.warning("distill: cannot capture the teacher to match hidden states (%s); matching outputs only",
                    str(exc).splitlines()[0])
        return None


def hidden_state_nodes(student: fx.GraphModule, teacher: fx.GraphModule) -> list[str]:
    """LayerNorm outputs both graphs have under one name with one shape: the states to match."""
    def norms(gm):
        out = {}
        for n in gm.graph.nodes:
            if n.op == "call_function" and n.target in (torch.ops.aten.layer_norm.default,) and "val" in n.meta:
                out[n.name] = tuple(n.meta["val"].shape)
        return out

    s, t = norms(student), norms(teacher)
    return [name for name, shape in s.items() if t.get(name) == shape]


class _Tapped(nn.Module):
    """Runs a slimgraph GraphModule and also returns the values of some of its nodes.

    The tapped graph is a copy of the graph over the *same* module (parameters shared), so training through
    it trains the original.
    """

    def __init__(self, gm: fx.GraphModule, names: list[str]):
        super().__init__()
        from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        out = graph.graph_copy(gm.graph, env)
        flat = list(out) if isinstance(out, (tuple, list)) else [out]
        by_name = {n.name: env[n] for n in gm.graph.nodes if n in env}
        graph.output(tuple(flat + [by_name[name] for name in names]))
        info = getattr(gm.graph._codegen, "pytree_info", None)
        self.out_spec = info.out_spec if info is not None else None
        if info is not None:
            graph._codegen = _PyTreeCodeGen(_PyTreeInfo(info.orig_args, info.in_spec, None))
        self.n_outputs = len(flat)
        self.names = list(names)
        self.graph_module = fx.GraphModule(gm, graph)

    def forward(self, *args, **kwargs):
        return self.graph_module(*args, **kwargs)


def _outputs(result, runner) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(model output tensors, tapped hidden states) of one forward call."""
    if not isinstance(runner, _Tapped):
        return _tensors(result), []
    flat = list(result)
    main = flat[: runner.n_outputs]
    out = pytree.tree_unflatten(main, runner.out_spec) if runner.out_spec is not None else main
    return _tensors(out), flat[runner.n_outputs:]


def _progress(total: int, enabled: bool):
    return progress(total, "distill", "step", enabled=enabled)
