"""Per-layer int8-or-float choice by measurement: the torch.compile backend's ``autotune`` option and
:func:`keep_profitable` (``sg.quantize`` that keeps only the int8 layers that pay off on this device).

(Not to be confused with Triton's tile-config autotuning, which lives with each kernel in ``kernels/``: this
module chooses, per layer, *whether* to use int8 at all.)

int8 loses to fp16 on small GEMMs (launch and quantization overhead dominate), so "quantize everything"
can make a model slower. For each layer the ``quant`` pass would rewrite, this module builds a one-layer
graph, quantizes it with the very same pass, times float and int8 on the actual device at the layer's
real shapes, and keeps the faster. Decisions are cached on disk per (device, int8 CPU backend, torch
version, scheme, op, input shape with M rounded up to a power of two, weight shape, activation), so recompiles
and later processes do not re-measure; decode (M = 1..16) and prefill shapes get separate entries.

Per-layer timing misses what only the whole graph shows (a static int8 chain passes int8 between layers; a
float island costs extra quantize steps), so :func:`keep_profitable` also times the whole quantized model
against the float one, interleaved, and returns the float graph when int8 does not win overall.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.fx as fx

from .ir.graph_utils import get_attr_tensor, op_name
from .ir.info import GRAPH_KEY, GraphInfo

log = logging.getLogger("slimgraph")
CACHE_VERSION = 2  # 2: CPU keys name the int8 backend (oneDNN or the torch reference)
Timer = Callable[[Callable[[], object]], float]  # returns milliseconds


@dataclass(frozen=True)
class LayerTiming:
    name: str
    key: str
    float_ms: float
    int8_ms: float
    cached: bool

    @property
    def choice(self) -> str:
        return "int8" if self.int8_ms < self.float_ms else "float"


def default_timer(fn: Callable[[], object]) -> float:
    """Median milliseconds: triton's do_bench on CUDA, a small wall-clock loop on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        import triton

        return float(triton.testing.do_bench(fn, warmup=10, rep=40))
    with torch.no_grad():
        for _ in range(2):
            fn()
        times = []
        for _ in range(7):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cache_path() -> Path:
    root = os.environ.get("SLIMGRAPH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "slimgraph")
    return Path(root) / f"autotune-v{CACHE_VERSION}.json"


def _load_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(path: Path, cache: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _bucket(m: int) -> int:
    return 1 << max(0, (m - 1).bit_length())


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from .quant import cpu_int8

    if not cpu_int8.available():
        return f"cpu-{os.cpu_count()}-reference"
    # dynamic Linears run torch._int_mm where it is exact, oneDNN's uint8 GEMM elsewhere: timings differ, so do keys
    return f"cpu-{os.cpu_count()}-{'intmm-' if cpu_int8.int_mm_exact() else ''}onednn"


def _layer_key(node: fx.Node, x: torch.Tensor, w: torch.Tensor, scheme: str) -> str:
    rows = 1
    for s in x.shape[:-1]:
        rows *= s
    shape = (_bucket(rows), *x.shape[-1:]) if node.target in _LINEARS else tuple(x.shape)
    act = next((a for a in node.args if isinstance(a, str)), "none")
    return "|".join([_device_name(x.device), torch.__version__, scheme, op_name(node.target), str(shape),
                     str(tuple(w.shape)), act])


_LINEARS = {torch.ops.aten.linear.default, torch.ops.slimgraph.linear_act.default}


def _mini_name(target: str) -> str:
    """The attribute name a weight gets in the one-layer graph: ``<owner>.weight`` keeps its owner module (the
    quant pass names a layer, and the attributes it adds for it, after a ``.weight``'s owner), with the
    owner's path flattened to one level; any other tensor gets one flat name."""
    owner, _, leaf = target.rpartition(".")
    if leaf == "weight" and owner:
        return f"{owner.replace('.', '_')}.weight"
    return target.replace(".", "_")


def _one_layer_graph(gm: fx.GraphModule, node: fx.Node, x: torch.Tensor) -> fx.GraphModule:
    """A graph holding just ``node`` (its weights shared with ``gm``, not copied), fed by one input like its own."""
    root = torch.nn.Module()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    x_node = node.args[0]
    env[x_node] = graph.placeholder("x")
    for arg in node.all_input_nodes:
        if arg is x_node:
            continue
        t = get_attr_tensor(gm, arg)
        if t is None:
            raise ValueError(f"{node.name} reads a non-constant tensor besides its input")
        name = _mini_name(str(arg.target))
        owner_name, _, leaf = name.rpartition(".")
        if owner_name and not hasattr(root, owner_name):
            root.add_module(owner_name, torch.nn.Module())
        (getattr(root, owner_name) if owner_name else root).register_buffer(leaf, t)
        env[arg] = graph.get_attr(name)
    out = graph.node_copy(node, lambda a: env[a])
    graph.output(out)
    mini = fx.GraphModule(root, graph)
    mini.meta[GRAPH_KEY] = GraphInfo(example_args=(x,))
    from .ir.propagate import refresh

    refresh(mini, only_missing=False)
    return mini


def choose_layers(
    gm: fx.GraphModule,
    scheme: str,
    *,
    timer: Timer | None = None,
    use_cache: bool = True,
) -> tuple[dict[str, str], list[LayerTiming]]:
    """Time every quantizable layer of ``gm`` float vs int8; returns (per_layer overrides, timings).

    The overrides map layer names to "float" where float was faster; pass them to the quant pass's
    ``per_layer``.
    """
    from .passes.manager import PassManager
    from .quant.quant_pass import Quantize
    from .quant.targets import find_targets

    timer = timer or default_timer
    path = cache_path()
    cache = _load_cache(path) if use_cache else {}
    overrides: dict[str, str] = {}
    timings: list[LayerTiming] = []
    dirty = False
    for target in find_targets(gm):
        node = target.node
        if target.unsupported or target.weight is None or not isinstance(node.args[0], fx.Node):
            continue
        val = node.args[0].meta.get("val")
        w = get_attr_tensor(gm, target.weight)
        if not isinstance(val, torch.Tensor) or w is None:
            continue
        shape = [int(s) if isinstance(s, int) else int(s.node.hint or 1) for s in val.shape]
        x = torch.randn(shape, dtype=val.dtype, device=w.device)
        key = _layer_key(node, x, w, scheme)
        hit = cache.get(key)
        was_cached = hit is not None
        if hit is None:
            try:
                mini = _one_layer_graph(gm, node, x)
                quantized = PassManager([Quantize(scheme=scheme, progress=False)]).run(_copy(mini)).gm
                with torch.no_grad():
                    float_ms = timer(partial(mini, x))
                    int8_ms = timer(partial(quantized, x))
            except Exception as exc:  # noqa: BLE001 - a layer we cannot time keeps the requested scheme
                log.debug("autotune: %s not timed (%s)", target.name, exc)
                continue
            hit = {"float_ms": float_ms, "int8_ms": int8_ms}
            cache[key] = hit
            dirty = True
        timing = LayerTiming(target.name, key, hit["float_ms"], hit["int8_ms"], cached=was_cached)
        timings.append(timing)
        if timing.choice == "float":
            overrides[target.name] = "float"
    if dirty and use_cache:
        _save_cache(path, cache)
    kept = sum(1 for t in timings if t.choice == "int8")
    log.info("autotune (%s): %d of %d layers faster in int8", scheme, kept, len(timings))
    return overrides, timings


def _copy(gm: fx.GraphModule) -> fx.GraphModule:
    import copy

    return copy.deepcopy(gm)


@dataclass(frozen=True)
class ProfitableResult:
    """What :func:`keep_profitable` decided: per-layer timings, the layers kept in float, whole-model timing."""

    model: fx.GraphModule
    layers: list[LayerTiming]
    kept_float: list[str]
    float_ms: float | None  # whole model, when checked
    int8_ms: float | None
    used_int8: bool  # False: int8 lost on the whole model, ``model`` is the float graph


def keep_profitable(
    model: torch.nn.Module,
    example_inputs,
    scheme: str = "w8a8-dynamic",
    *,
    example_kwargs: dict | None = None,
    timer: Timer | None = None,
    use_cache: bool = True,
    check_model: bool = True,
    **quantize_options,
) -> ProfitableResult:
    """``sg.quantize`` keeping in float every layer that is not faster in int8 on the current device.

    Each quantizable layer is timed float vs int8 at its real shapes (see :func:`choose_layers`); the slower
    int8 layers become ``per_layer={name: "float"}`` entries (the caller's own ``per_layer`` patterns come
    first and win). With ``check_model`` the whole quantized model is then timed against the float one on
    ``example_inputs`` and, if it is not faster, the float graph is returned (``used_int8=False``) with a
    warning: never slower than what it started from. ``timer(fn) -> ms`` replaces the wall clock (tests).
    ``model`` is not modified. Other keyword arguments go to :func:`slimgraph.quantize`.
    """
    from .ir.capture import capture_or_copy
    from .passes.manager import PassManager
    from .quant.api import PREPARE, quantize

    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    prepared = PassManager(PREPARE.split(",")).run(capture_or_copy(model, args, example_kwargs)).gm
    overrides, timings = choose_layers(prepared, scheme, timer=timer, use_cache=use_cache)
    per_layer = dict(quantize_options.pop("per_layer", None) or {})
    for name, choice in overrides.items():
        per_layer.setdefault(name, choice)
    # the prepared graph is quantized (copied first): the same layer names the timings refer to
    quantized = quantize(prepared, args, scheme, example_kwargs=example_kwargs, per_layer=per_layer,
                         **quantize_options)
    result = ProfitableResult(quantized, timings, sorted(overrides), None, None, True)
    if not check_model:
        return result
    kwargs = dict(example_kwargs or {})
    timer = timer or default_timer
    with torch.no_grad():
        float_ms, int8_ms = _interleaved_pair(timer, partial(prepared, *args, **kwargs),
                                              partial(quantized, *args, **kwargs))
    if int8_ms < float_ms:
        return ProfitableResult(quantized, timings, sorted(overrides), float_ms, int8_ms, True)
    log.warning("keep_profitable: the %s model is not faster than float on this device (%.3f vs %.3f ms); "
                "keeping the float graph", scheme, int8_ms, float_ms)
    return ProfitableResult(prepared, timings, sorted(overrides), float_ms, int8_ms, False)


def _interleaved_pair(timer: Timer, a: Callable[[], object], b: Callable[[], object], rounds: int = 3):
    """Medians of ``rounds`` alternating timings (ABAB...): load drifts on a shared machine hit both alike."""
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(timer(a))
        tb.append(timer(b))
    return statistics.median(ta), statistics.median(tb)
