"""``torch.compile(model, backend="slimgraph")``: slimgraph's passes inside torch.compile.

    torch.compile(model, backend="slimgraph")                                   # lossless fusion
    torch.compile(model, backend="slimgraph", options={"quant": "w8a8-dynamic"})
    torch.compile(model, backend=sg.backend(quant="w8a16", inner="eager"))

The backend is registered through the ``torch_dynamo_backends`` entry point, so after ``pip install`` it
works without importing slimgraph. For every graph dynamo hands over it:

1. turns the parameters and buffers dynamo lifted to inputs back into constants (inference freezing), and
   watches them: every call compares each frozen tensor's identity, storage and version counter (a few
   attribute reads per weight) with what was compiled. A weight changed since (``load_state_dict``, an
   optimizer step, ``p.data = ...``) triggers a recompilation of that graph with a warning, so the compiled
   model never returns results of weights it no longer has; with ``frozen=True`` it raises instead;
2. captures the graph at slimgraph's canonical ATen level, keeping symbolic the dims dynamo made dynamic,
   so prefill and decode shapes share one compiled graph instead of recompiling per length;
3. runs the lossless passes (fold constants, fold BN, fuse epilogues) and, when asked, calibration-free
   int8 quantization (``w8a8-dynamic`` or ``w8a16``); with ``autotune`` each int8 layer is timed against its
   float version on the actual device and keeps the faster (results cached on disk);
4. hands the graph to the inner compiler: Inductor by default (ops slimgraph does not own still get its
   code generation; ``torch.ops.slimgraph.*`` run their Triton kernels on CUDA, references on CPU), or
   eager. On CPU, for Inductor, the dynamic int8 ops are first written out in ATen ops
   (:func:`lower_int8_for_inductor`): the per-token quantizer and the scale/bias/activation epilogue become
   pointwise and reduction code Inductor fuses with its neighbours, around ``torch._int_mm``'s exact int8 GEMM;
   as opaque custom ops each would be its own passes over memory plus a Python call.

It never breaks the user: if anything in steps 1-3 fails, it logs a warning naming the pass and node and
compiles the unmodified graph with the inner compiler. Graph breaks are handled by dynamo as usual. When
gradients will flow (grad mode on and parameters requiring grad) the graph is compiled without slimgraph's
passes; when only the inputs require grad, the lossless passes run but int8 is left out with a warning (the
int8 ops have no gradient), so ``backward()`` works.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch.fx.graph import CodeGen

from . import defaults
from .errors import InputError, SlimgraphError
from .ir.info import graph_info
from .passes.base import parse_bool

log = logging.getLogger("slimgraph")

QUANT_SCHEMES = (None, "w8a8-dynamic", "w8a16")  # calibration-free: no data is available at compile time
INNER = ("inductor", "eager")


@dataclass(frozen=True)
class BackendOptions:
    quant: str | None = None
    fuse: bool = True
    inner: str = "inductor"
    autotune: bool = False
    check: bool = False  # compare every pass's output with the graph before it (slow; for debugging)
    frozen: bool = False  # raise instead of recompiling when a frozen weight changes after compilation
    extra_passes: tuple[str, ...] = field(default=())

    def __post_init__(self):
        for name in ("fuse", "autotune", "check", "frozen"):  # "no" must mean False, junk must be an error
            object.__setattr__(self, name, parse_bool(getattr(self, name), f"backend option {name}", InputError))
        if self.quant not in QUANT_SCHEMES:
            raise InputError(f"backend option quant={self.quant!r}: choose one of {QUANT_SCHEMES} (static w8a8 "
                             "needs calibration data: use sg.quantize before compiling)")
        if self.inner not in INNER:
            raise InputError(f"backend option inner={self.inner!r}: choose 'inductor' or 'eager'")

    @classmethod
    def from_dict(cls, options: dict | None) -> BackendOptions:
        options = dict(options or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(options) - known
        if unknown:
            raise InputError(f"unknown slimgraph backend option(s) {sorted(unknown)}; known: {sorted(known)}")
        if "extra_passes" in options and isinstance(options["extra_passes"], str):
            options["extra_passes"] = (options["extra_passes"],)
        return cls(**options)

    def pipeline(self, *, quant: bool = True) -> list[str]:
        passes = ["fold-constants", "fold-bn"]
        if self.fuse:
            passes.append("fuse")
        passes.extend(self.extra_passes)
        if quant and self.quant is not None:
            passes.append(quant_pass_spec(self.quant))
        passes.append("dce")
        return passes


@dataclass
class CompileRecord:
    """What the backend did with one dynamo graph (newest last in :data:`COMPILED`)."""

    nodes_before: int
    options: BackendOptions
    nodes_after: int = 0
    applied: list[str] = field(default_factory=list)
    fallback: str | None = None  # why the unmodified graph was compiled instead
    seconds: float = 0.0
    autotune: list = field(default_factory=list)  # LayerTimings when autotune ran
    notes: list[str] = field(default_factory=list)  # documented fallbacks taken (e.g. int8 left out for grads)
    recompiles: int = 0  # times frozen weights changed and the graph was compiled again
    graph: fx.GraphModule | None = field(default=None, repr=False)


COMPILED: deque[CompileRecord] = deque(maxlen=64)


def quant_pass_spec(scheme: str, per_layer: str = "") -> str:
    """The quant pass for a backend scheme; activation schemes smooth LayerNorm-fed Linears, calibrated on the
    compile-time inputs (as sg.quantize's "auto" default does)."""
    alpha = defaults.resolve_smoothquant(defaults.SMOOTHQUANT, scheme)
    smooth = f",smoothquant={alpha}" if alpha is not None and scheme == "w8a8-dynamic" else ""
    return f"quant{{scheme={scheme}{smooth}{per_layer}}}"


def slimgraph_backend(gm: fx.GraphModule, example_inputs: Sequence, **kwargs) -> Callable:
    """The dynamo backend. ``torch.compile(..., options={...})`` arrives here as ``options``."""
    return compile_graph(gm, example_inputs, BackendOptions.from_dict(kwargs.get("options")))


def backend(**options) -> Callable:
    """A backend callable with fixed options: ``torch.compile(model, backend=sg.backend(quant="w8a16"))``."""
    opts = BackendOptions.from_dict(options)

    def _backend(gm: fx.GraphModule, example_inputs: Sequence, **kwargs) -> Callable:
        merged = {**{k: getattr(opts, k) for k in opts.__dataclass_fields__}, **(kwargs.get("options") or {})}
        return compile_graph(gm, example_inputs, BackendOptions.from_dict(merged))

    _backend.__name__ = "slimgraph"
    return _backend


# ------------------------------------------------------------------------------------------------- compile


def compile_graph(gm: fx.GraphModule, example_inputs: Sequence, options: BackendOptions) -> Callable:
    example_inputs = list(example_inputs)
    if _is_training(gm, example_inputs):
        log.info("slimgraph backend: gradients are on and parameters require grad; compiling without slimgraph "
                 "passes (they freeze weights for inference)")
        return _inner_compile(gm, example_inputs, options)
    start = time.perf_counter()
    record = CompileRecord(nodes_before=len(gm.graph.nodes), options=options)
    COMPILED.append(record)
    effective = options
    if options.quant is not None and _inputs_need_grad(example_inputs):
        effective = dataclasses.replace(options, quant=None)
        record.notes.append(f"int8 ({options.quant}) left out: inputs require grad and the int8 ops have no "
                            "gradient; the lossless passes still ran")
        log.warning("slimgraph backend: %s", record.notes[-1])
    try:
        # export runs its own fake-tensor tracing: keep it away from dynamo's tracing context and shape env
        with torch._guards.tracing(None):
            optimized, keep = _optimize(gm, example_inputs, effective)
    except Exception as exc:  # noqa: BLE001 - never break the user: fall back to the unmodified graph
        record.fallback = _describe(exc)
        log.warning("slimgraph backend: %s; compiling the unmodified graph instead", record.fallback)
        return _inner_compile(gm, example_inputs, options)
    kept_inputs = [example_inputs[i] for i in keep]
    try:
        compiled = _inner_compile(optimized, kept_inputs, options)
    except Exception as exc:  # noqa: BLE001
        record.fallback = f"the {options.inner} compiler rejected the optimized graph: {_describe(exc)}"
        log.warning("slimgraph backend: %s; compiling the unmodified graph instead", record.fallback)
        return _inner_compile(gm, example_inputs, options)
    record.graph = optimized
    record.nodes_after = len(optimized.graph.nodes)
    record.applied = list(graph_info(optimized).applied)
    record.seconds = time.perf_counter() - start
    return _FrozenGraph(gm, options, record, compiled, keep, example_inputs)


class _FrozenGraph:
    """The compiled graph plus a watch on the weights it froze: a changed weight means compile again."""

    def __init__(self, gm, options, record, compiled, keep, example_inputs):
        self.gm, self.options, self.record = gm, options, record
        self._install(compiled, keep, example_inputs)

    def _install(self, compiled, keep, inputs) -> None:
        self.compiled, self.keep = compiled, keep
        kept = set(keep)
        self.frozen = [(i, _fingerprint(t)) for i, t in enumerate(inputs)
                       if i not in kept and isinstance(t, torch.Tensor)]

    def __call__(self, *args):
        for i, seen in self.frozen:
            if _fingerprint(args[i]) != seen:
                self._recompile(args, i)
                break
        return self.compiled(*[args[i] for i in self.keep])

    def _recompile(self, args, index: int) -> None:
        what = f"frozen weight input {index} (shape {tuple(args[index].shape)}) changed after compilation"
        if self.options.frozen:
            raise SlimgraphError(f"slimgraph backend: {what}, and frozen=True was asked for; compile the model "
                                 "again after changing its weights, or drop frozen=True to recompile automatically")
        log.warning("slimgraph backend: %s; compiling the graph again with the new weights", what)
        fresh = compile_graph(self.gm, args, self.options)
        self.record.recompiles += 1
        if isinstance(fresh, _FrozenGraph):
            self._install(fresh.compiled, fresh.keep, args)
        else:  # the new compilation fell back to the unmodified graph, which reads every weight each call
            self.compiled, self.keep, self.frozen = fresh, list(range(len(args))), []


def _fingerprint(t: torch.Tensor) -> tuple[int, int, int]:
    """Identity, storage address and version counter: any in-place update or replacement changes one of them."""
    return id(t), t.data_ptr(), t._version


def _inputs_need_grad(example_inputs) -> bool:
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter) and t.requires_grad
        for t in example_inputs)


def _is_training(gm: fx.GraphModule, example_inputs) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(isinstance(t, torch.nn.Parameter) and t.requires_grad for t in example_inputs)


def _optimize(gm: fx.GraphModule, example_inputs: list, options: BackendOptions) -> tuple[fx.GraphModule, list[int]]:
    from .ir.capture import capture, dynamo_constant_inputs
    from .passes.manager import PassManager

    gm, sizes = _sizes_from_tensors(gm, example_inputs)
    tensors_only = [t for i, t in enumerate(example_inputs) if i not in sizes]
    constants = dynamo_constant_inputs(gm, tensors_only)
    kept_tensors = [i for i in range(len(tensors_only)) if i not in set(constants)]
    keep = [i for i in range(len(example_inputs)) if i not in sizes]
    keep = [keep[i] for i in kept_tensors]
    # detached aliases: export may tag its example tensors (e.g. dynamic dims), and dynamo guards on the real ones
    aliases = tuple(t.detach() if not isinstance(t, torch.nn.Parameter) else t for t in tensors_only)
    spec = _dynamo_dynamic_dims(gm, kept_tensors)
    captured = capture(gm, aliases, constant_inputs=constants, share_weights=True, dynamic_batch=False,
                       dynamic_shapes=spec)
    tuned = options.autotune and options.quant is not None
    result = PassManager(options.pipeline(quant=not tuned), check_numerics=options.check).run(captured)
    if tuned:  # time each int8 candidate against its float version on this device; keep the faster
        from .layer_choice import choose_layers
        from .quant.quant_pass import Quantize

        overrides, timings = choose_layers(result.gm, options.quant)
        COMPILED[-1].autotune = timings
        alpha = defaults.resolve_smoothquant(defaults.SMOOTHQUANT, options.quant)
        quantize = Quantize(scheme=options.quant, per_layer=overrides, progress=False,
                            smoothquant=alpha if options.quant == "w8a8-dynamic" else None)
        result = PassManager([quantize, "dce"], check_numerics=options.check).run(result.gm)
    optimized = result.gm
    for record in graph_info(optimized).history:
        for note in record.notes:
            log.debug("slimgraph backend: %s: %s", record.name, note)
    if options.inner == "inductor":
        lowered = lower_int8_for_inductor(optimized)
        if lowered:
            COMPILED[-1].notes.append(f"{lowered} dynamic int8 op(s) written out in ATen ops for Inductor (CPU)")
    _flatten_calling_convention(optimized)
    return optimized, keep


# ------------------------------------------------------------------------------ int8 ops as ATen ops for Inductor


def lower_int8_for_inductor(gm: fx.GraphModule) -> int:
    """Rewrite, in place, the dynamic int8 ops of a CPU graph as calls that trace to ATen ops (see step 4 of the
    module docstring). Only where ``torch._int_mm`` sums exactly on this CPU (``cpu_int8.int_mm_exact``) and every
    int8 weight is a CPU constant; returns how many ops were rewritten (0: the graph is unchanged)."""
    from .ir.graph_utils import get_attr_tensor
    from .kernels.quantize import layernorm_quantize_reference, quantize_rows_reference
    from .quant import cpu_int8

    sgops = torch.ops.slimgraph
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (
        sgops.dynamic_quantize_per_token.default, sgops.layer_norm_quantize_per_token.default,
        sgops.qlinear_dynamic.default)]
    if not nodes or not cpu_int8.int_mm_exact() or not _all_on_cpu(nodes):
        return 0
    count = 0
    for node in nodes:
        if node.target is sgops.qlinear_dynamic.default:
            w_node = node.args[2]
            w = get_attr_tensor(gm, w_node) if isinstance(w_node, fx.Node) and w_node.op == "get_attr" else None
            if w is None or w.dim() != 2 or w.device.type != "cpu":
                continue  # a weight computed in the graph keeps the custom op
            name = f"{w_node.target.replace('.', '_')}_int8_kn"
            if not hasattr(gm, name):
                gm.register_buffer(name, w.t().contiguous())  # [K, N] row-major: _int_mm's fast layout, made once
            with gm.graph.inserting_before(node):
                kn = gm.graph.get_attr(name)
            node.target = cpu_int8.int_mm_rows
            node.args = (node.args[0], node.args[1], kn, *node.args[3:])
        elif node.target is sgops.dynamic_quantize_per_token.default:
            node.target = quantize_rows_reference
        else:  # layer_norm_quantize_per_token(x, normalized_shape, weight, bias, eps): the norm over the last dim
            x, _, weight, bias, eps = node.args
            node.target, node.args = layernorm_quantize_reference, (x, weight, bias, eps)
        count += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return count


def _all_on_cpu(nodes: list[fx.Node]) -> bool:
    for node in nodes:
        val = node.meta.get("val")
        vals = val if isinstance(val, (tuple, list)) else (val,)
        if any(not isinstance(v, torch.Tensor) or v.device.type != "cpu" for v in vals):
            return False
    return True


def _placeholders(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def _sizes_from_tensors(gm: fx.GraphModule, example_inputs: list) -> tuple[fx.GraphModule, set[int]]:
    """Dynamic-shape dynamo graphs take symbolic sizes (``s0: SymInt``) as inputs; read each from the tensor
    input whose shape carries it (``sym_size(x, d)``) so the graph takes tensors only. Returns the rewritten
    copy and the input positions that were sizes."""
    places = _placeholders(gm)
    sizes = {i for i, (n, v) in enumerate(zip(places, example_inputs)) if not isinstance(v, torch.Tensor)}
    if not sizes:
        return gm, sizes
    graph = fx.Graph()
    env = graph.graph_copy(gm.graph, {})
    graph.output(env)
    copy_gm = fx.GraphModule(gm, graph)
    places = _placeholders(copy_gm)
    first = next(n for n in copy_gm.graph.nodes if n.op != "placeholder")
    for i in sorted(sizes):
        node = places[i]
        symbol = str(node.meta.get("example_value", example_inputs[i]))
        source = None
        for j, other in enumerate(places):
            val = other.meta.get("example_value")
            if j in sizes or not isinstance(val, torch.Tensor):
                continue
            dims = [d for d, s in enumerate(val.shape) if str(s) == symbol]
            if dims:
                source = (other, dims[0])
                break
        if source is None:
            raise InputError(f"dynamic size input {node.name} ({symbol}) is not the size of any tensor input")
        with copy_gm.graph.inserting_before(first):
            size_node = copy_gm.graph.call_function(torch.ops.aten.sym_size.int, source)
        node.replace_all_uses_with(size_node)
        copy_gm.graph.erase_node(node)
    copy_gm.recompile()
    return copy_gm, sizes


def _dynamo_dynamic_dims(gm: fx.GraphModule, kept: list[int]):
    """dynamic_shapes for torch.export: the dims dynamo made symbolic stay symbolic (Dim.AUTO)."""
    from torch.export import Dim

    places = [n for n in _placeholders(gm)]
    spec = []
    dynamic = False
    for i in kept:
        val = places[i].meta.get("example_value")
        dims = {d: Dim.AUTO for d, s in enumerate(getattr(val, "shape", ())) if not isinstance(s, int)}
        dynamic = dynamic or bool(dims)
        spec.append(dims or None)
    return tuple(spec) if dynamic else None


def _flatten_calling_convention(gm: fx.GraphModule) -> None:
    """Plain positional inputs and a tuple output, the convention dynamo and Inductor expect."""
    gm.graph._codegen = CodeGen()
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    value = output.args[0]
    if not isinstance(value, (tuple, list)):
        output.args = ((value,),)
    gm.recompile()


def _inner_compile(gm: fx.GraphModule, example_inputs: list, options: BackendOptions) -> Callable:
    if options.inner == "eager":
        return gm.forward
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs)


def _describe(exc: BaseException) -> str:
    from .errors import PassError

    if isinstance(exc, PassError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
