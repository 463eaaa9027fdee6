"""The four CPU speed targets of issue 12, measured side by side in one run on this machine's CPU.

    python -m bench.cpu_speed [--rounds 15] [--threads N] [--skip onnx,torchao,widths] [--out bench/results]

Results go to a scratch directory unless ``--out`` is given (``--out bench/results`` replaces the committed ones).

Targets (all against baselines timed in the same run, interleaved):
  1. ResNet-18 (hand-written here, torchvision's layout; batch 1, 3x224x224) pruned to 0.5 of its channels by
     ``sg.prune``: >= 1.3x faster than the original in eager PyTorch.
  2. the same ResNet-18 quantized by ``sg.quantize(scheme="w8a8")``: >= 1.5x faster than fp32 eager. Quantized
     ``sg.quantize(..., residual_outputs=True)``: the convs feeding residual adds and the stem
     write int8 too (ORT runs all 20 convs as QLinearConv; ResNet-18's cosine to fp32 0.99992 against 0.99993).
  3. all-MiniLM-L6-v2 (real weights, held-out text, batch 8 x 32 tokens) quantized by
     ``sg.quantize(scheme="w8a8-dynamic")``: latency <= torchao's Int8DynamicActivationInt8WeightConfig, compared
     like for like: both eager, and both under Inductor (the way torchao is meant to run). Ours goes through
     ``torch.compile(model, backend="slimgraph")``, whose inner compiler is Inductor and which first writes the
     dynamic int8 ops out in ATen ops on CPU so Inductor fuses them (``sg-w8a8-dynamic+sg-backend``); plain
     ``torch.compile(model)`` (``sg-w8a8-dynamic+inductor``, our ops opaque there) is timed beside it.
  4. both models exported by ``sg.export_onnx`` (fp32 and int8): the int8 ONNX >= 1.5x faster than the fp32 ONNX in
     onnxruntime (CPU provider, all graph optimizations); the int8 ops ORT's optimizer fused to are listed. The int8
     file is exported ``with for_onnxruntime(target="auto")``: for this CPU (the md says which form, "vnni" or
     "avx2"; a vnni file is exact only on CPUs with AVX-512 VNNI / AVX-VNNI).

Timing (:func:`bench.harness.time_variants`): every variant of a model is called in turn, in an order that rotates
from round to round (ABC BCA CAB ...), after a warm-up, so load from other processes falls on all of them alike;
the median and the interquartile range of each are reported, and a ratio counts as met only when the ratio of
medians reaches the target. The load average is recorded before and after: on a
shared machine it is what makes figures move. Also measured: latency of one conv and one linear layer against
their output width (fp32 and int8), the evidence for the pruning width rounding.

Outputs ``cpu-speed.json``, ``cpu-speed.md`` and ``cpu-speed.png`` under ``--out``.
"""

from __future__ import annotations

import copy
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import harness

SUITE = "cpu-speed"

TARGETS = [
    # (id, model, candidate, baseline, needed ratio, text)
    ("1", "resnet18", "pruned-0.5", "fp32-eager", 1.3, "pruned ResNet-18 (0.5 channels) >= 1.3x the original"),
    ("2", "resnet18", "int8-w8a8", "fp32-eager", 1.5, "int8 ResNet-18 >= 1.5x fp32 eager"),
    ("3", "minilm", "sg-w8a8-dynamic", "torchao-int8-dynamic", 1.0,
     "MiniLM w8a8-dynamic >= torchao int8-dynamic (eager) on latency"),
    ("3", "minilm", "sg-w8a8-dynamic+sg-backend", "torchao-int8-dynamic+inductor", 1.0,
     "MiniLM w8a8-dynamic >= torchao int8-dynamic, both under Inductor, on latency"),
    ("4", "resnet18", "onnx-int8", "onnx-fp32", 1.5, "ResNet-18 int8 ONNX >= 1.5x fp32 ONNX in onnxruntime"),
    ("4", "minilm", "onnx-int8", "onnx-fp32", 1.5, "MiniLM int8 ONNX >= 1.5x fp32 ONNX in onnxruntime"),
]


# ----------------------------------------------------------------------------------------------------- models


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 layout (torchvision does not import with the CPU torch wheel)."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1)
        return self.fc(torch.flatten(x, 1))


def resnet18() -> ResNet18:
    """Random weights with non-trivial BatchNorm statistics (seeded), in eval mode."""
    torch.manual_seed(0)
    model = ResNet18().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model


# ----------------------------------------------------------------------------------------------------- timing


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> harness.TimingRun:
    """Every fn timed ``rounds`` times, in rotating order (ABC BCA ...) so that load drifts hit all of them."""
    # min_rounds = rounds: a loaded machine must not quietly cut the rounds the result states
    return harness.time_variants(fns, warmup=warmup, rounds=rounds, min_rounds=rounds, max_seconds=float("inf"))


def summary(t: harness.Timing) -> dict:
    return {"median_ms": t.median_ms, "q1_ms": t.q1_ms, "q3_ms": t.q3_ms, "min_ms": t.min_ms, "max_ms": t.max_ms,
            "n": len(t.samples_ms)}


def speedup(base: dict, cand: dict) -> dict:
    """Ratio of medians, with the range the interquartile ranges allow (worst and best pairing)."""
    return {"ratio": base["median_ms"] / cand["median_ms"], "low": base["q1_ms"] / cand["q3_ms"],
            "high": base["q3_ms"] / cand["q1_ms"]}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


# ----------------------------------------------------------------------------------------------------- onnx


def onnx_session(path: Path, threads: int, optimized: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def op_counts(path: Path) -> dict[str, int]:
    """Node types of an ONNX file (the optimized one: what ORT will run), integer ops and Q/DQ only."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = Counter(node.op_type for node in model.graph.node)
    keep = ("QLinear", "Integer", "Quantize", "Dequantize", "Conv", "MatMul", "Gemm", "FusedConv", "FusedGemm")
    return {op: n for op, n in sorted(counts.items()) if any(k in op for k in keep)}


def onnx_variants(name: str, fp32: nn.Module, int8: nn.Module, args: tuple, threads: int, work: Path):
    """Export fp32 and int8, open both in ORT; returns ({variant: callable}, {variant: outputs}, {variant: ops})."""
    import slimgraph as sg
    from slimgraph.quant.onnx_ops import for_onnxruntime

    fns, outputs, ops = {}, {}, {}
    for variant, model in (("onnx-fp32", fp32), ("onnx-int8", int8)):
        # the int8 forms ORT runs as integer kernels (the default is TensorRT's QDQ), for this CPU (target auto)
        with for_onnxruntime(ORT_TARGET):
            path = sg.export_onnx(model, args, work / f"{name}-{variant}.onnx")
        optimized = work / f"{name}-{variant}.opt.onnx"
        session = onnx_session(path, threads, optimized)
        names = [i.name for i in session.get_inputs()]
        feeds = {n: a.numpy() for n, a in zip(names, args, strict=True)}
        fns[variant] = lambda s=session, f=feeds: s.run(None, f)
        outputs[variant] = torch.from_numpy(session.run(None, feeds)[0])
        ops[variant] = op_counts(optimized)
    return fns, outputs, ops


# ----------------------------------------------------------------------------------------------------- cases


def resnet_case(rounds: int, threads: int, skip: set, work: Path, round_to: int) -> dict:
    import slimgraph as sg

    model = resnet18()
    x = torch.randn(1, 3, 224, 224)
    calib = [(torch.randn(1, 3, 224, 224),) for _ in range(8)]
    pruned = sg.prune(model, (x,), ratio=0.5, round_to=round_to)
    # residual-feeding convs and the stem write int8 (module docstring, targets 2 and 4)
    int8 = sg.quantize(model, (x,), scheme="w8a8", calib=calib, residual_outputs=True)
    pruned_int8 = sg.quantize(pruned, (x,), scheme="w8a8", calib=calib, residual_outputs=True)
    models = {"fp32-eager": model, "pruned-0.5": pruned, "int8-w8a8": int8, "pruned-0.5+int8": pruned_int8}
    fns = {name: (lambda m=m: m(x)) for name, m in models.items()}
    with torch.no_grad():
        outputs = {name: m(x) for name, m in models.items()}
    ops = {}
    if "onnx" not in skip:
        onnx_fns, onnx_out, ops = onnx_variants("resnet18", model, int8, (x,), threads, work)
        fns.update(onnx_fns)
        outputs.update(onnx_out)
    return _measure("resnet18", "batch 1 x 3 x 224 x 224, random weights, BN statistics randomized", fns, outputs,
                    "fp32-eager", rounds, ops)


def minilm_case(rounds: int, threads: int, skip: set, work: Path) -> dict:
    import slimgraph as sg
    from slimgraph.demos.minilm import load_encoder, text_batches

    encoder = load_encoder()
    ids, mask = text_batches("heldout", batch_size=8)[0]
    calib = text_batches("train", batch_size=8, limit=64)
    int8 = sg.quantize(encoder, (ids, mask), scheme="w8a8-dynamic", calib=calib)
    models: dict[str, nn.Module] = {"fp32-eager": encoder, "sg-w8a8-dynamic": int8}
    torch._dynamo.reset()
    models["sg-w8a8-dynamic+inductor"] = torch.compile(int8)
    models["sg-w8a8-dynamic+sg-backend"] = torch.compile(int8, backend="slimgraph")
    notes = {}
    if "torchao" not in skip:
        try:
            import torchao
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            ao = copy.deepcopy(encoder)
            quantize_(ao, Int8DynamicActivationInt8WeightConfig())
            models["torchao-int8-dynamic"] = ao
            models["torchao-int8-dynamic+inductor"] = torch.compile(ao)
            notes["torchao"] = torchao.__version__
        except Exception as exc:  # noqa: BLE001 - the bench reports torchao as missing instead of failing
            notes["torchao"] = f"not run: {type(exc).__name__}: {exc}"
    fns = {name: (lambda m=m: m(ids, mask)) for name, m in models.items()}
    with torch.no_grad():
        outputs = {name: m(ids, mask) for name, m in models.items()}  # also compiles the Inductor variant
    ops = {}
    if "onnx" not in skip:
        onnx_fns, onnx_out, ops = onnx_variants("minilm", encoder, int8, (ids, mask), threads, work)
        fns.update(onnx_fns)
        outputs.update(onnx_out)
    from slimgraph.backend import COMPILED

    notes["slimgraph backend"] = "; ".join(dict.fromkeys(
        note for record in COMPILED for note in ([f"fell back: {record.fallback}"] if record.fallback else [])
        + record.notes)) or "no notes"
    result = _measure("minilm", "all-MiniLM-L6-v2, real weights, held-out text, batch 8 x 32 tokens", fns, outputs,
                      "fp32-eager", rounds, ops)
    result["notes"] = notes
    return result


def _measure(name, inputs, fns, outputs, base, rounds, ops) -> dict:
    print(f"[{name}] timing {', '.join(fns)} ({rounds} interleaved rounds)", flush=True)
    run = interleaved(fns, rounds)
    stats = {v: summary(t) for v, t in run.timings.items()}
    reference = outputs[base]
    rows = {v: {**stats[v], "vs_fp32_eager": speedup(stats[base], stats[v]),
                "cosine_vs_fp32": cosine(outputs[v], reference)} for v in fns}
    return {"model": name, "inputs": inputs, "rows": rows, "onnx_ops": ops,
            "load": [list(run.load_before), list(run.load_after)], "seconds": run.seconds}


def width_case(rounds: int) -> dict:
    """Latency of one 3x3 conv (28x28, 128 -> C) and one linear (256 rows, 384 -> N) against the output width."""
    from slimgraph.quant.ops import quantize_tensor_reference, quantize_weight

    sgops = torch.ops.slimgraph
    widths = [56, 63, 64, 65, 96, 120, 127, 128]
    x = torch.randn(1, 128, 28, 28)
    xs = (x.abs().max() / 127).reshape(())
    qx = quantize_tensor_reference(x, xs)
    a = torch.randn(256, 384)
    a_s = (a.abs().max() / 127).reshape(())
    qa = quantize_tensor_reference(a, a_s)
    fns = {}
    for c in widths:
        w = torch.randn(c, 128, 3, 3)
        wq, ws = quantize_weight(w)
        lw = torch.randn(c * 4, 384)
        lq, ls = quantize_weight(lw)
        fns[f"conv-fp32-{c}"] = lambda w=w: F.conv2d(x, w, None, 1, 1)
        fns[f"conv-int8-{c}"] = lambda wq=wq, ws=ws: sgops.qconv_static(
            qx, xs, wq, ws, None, [1, 1], [1, 1], [1, 1], 1, "none", None, torch.float32)
        fns[f"linear-fp32-{c * 4}"] = lambda lw=lw: F.linear(a, lw)
        fns[f"linear-int8-{c * 4}"] = lambda lq=lq, ls=ls: sgops.qlinear_static(
            qa, a_s, lq, ls, None, "none", None, torch.float32)
    print(f"[widths] timing {len(fns)} layer variants ({rounds} interleaved rounds)", flush=True)
    run = interleaved(fns, rounds)
    return {"widths": widths, "rows": {k: summary(t) for k, t in run.timings.items()},
            "load": [list(run.load_before), list(run.load_after)]}


# ----------------------------------------------------------------------------------------------------- report


def _fmt_ratio(r: dict) -> str:
    spread = f"{r['low']:.2f}-{r['high']:.2f}"
    if r["low"] <= 1.0 <= r["high"]:
        return f"no change ({r['ratio']:.2f}x, IQR range {spread})"
    return f"{r['ratio']:.2f}x ({spread})"


def evaluate_targets(cases: dict) -> list[dict]:
    out = []
    for tid, model, cand, base, needed, text in TARGETS:
        rows = cases.get(model, {}).get("rows", {})
        if cand not in rows or base not in rows:
            out.append({"target": tid, "model": model, "text": text, "needed": needed, "measured": None,
                        "met": None})
            continue
        r = speedup(rows[base], rows[cand])
        out.append({"target": tid, "model": model, "text": text, "needed": needed, "measured": r["ratio"],
                    "low": r["low"],
                    "high": r["high"], "met": r["ratio"] >= needed})
    return out


def _short(t: dict) -> str:
    """How far a missed target is: the median ratio, the needed one, and the factor still missing."""
    return (f"median {t['measured']:.2f}x (IQR range {t['low']:.2f}-{t['high']:.2f}) against {t['needed']:.2f}x "
            f"needed: short by {t['needed'] - t['measured']:.2f}x, a further {t['needed'] / t['measured']:.2f}x")


ORT_TARGET = "auto"  # for_onnxruntime's target: "vnni" on a CPU with AVX-512 VNNI / AVX-VNNI, else "avx2"


def _ort_target() -> str:
    from slimgraph.quant.onnx_ops import resolve_ort_target

    return resolve_ort_target(ORT_TARGET)


def _cpu_note() -> str:
    from slimgraph.quant import cpu_int8

    return ("this CPU (AVX-512 VNNI) sums uint8 x int8 products exactly" if not cpu_int8.saturates()
            else "this CPU's uint8 x int8 kernels saturate int16 pair sums (x86 without VNNI)")


def analysis(result: dict) -> list[str]:
    """Why a missed target was missed, from what this run saw (ORT's fused ops) and what the graphs hold."""
    notes = []
    meta = result["meta"]
    if meta["threads"] < (meta["cores"] or 1):
        notes.append(f"- Run with {meta['threads']} torch/ORT thread(s) on {meta['cores']} cores: on this shared "
                     "machine (load above), multi-threaded kernels spend much of their time waiting for a second "
                     "core at every parallel-region barrier, which swamps the differences measured here.")
    minilm = result["cases"].get("minilm", {}).get("rows", {})
    if {"sg-w8a8-dynamic+inductor", "torchao-int8-dynamic+inductor"} <= set(minilm):
        r = speedup(minilm["torchao-int8-dynamic+inductor"], minilm["sg-w8a8-dynamic+inductor"])
        notes.append(
            f"- Target 3 under Inductor is read on `torch.compile(model, backend=\"slimgraph\")` (inner compiler "
            "Inductor), which on CPU writes the dynamic int8 ops out in ATen ops (per-token quantizer, "
            "`torch._int_mm`, fp32 scale/bias/activation epilogue) so that Inductor fuses the quantizer and the "
            "epilogue with their neighbours, as it does for torchao's traced ops. Plain `torch.compile(model)` of "
            "the sg.quantize output keeps our int8 ops opaque (a Python custom-op call, and separate passes over "
            f"memory for the quantizer and the epilogue, around each GEMM): {_fmt_ratio(r)} against torchao under "
            "Inductor in this run.")
    for t in result["targets"]:
        if t["met"] is not False:
            continue
        ops = result["cases"].get(t["model"], {}).get("onnx_ops", {})
        int8_ops = ops.get("onnx-int8", {})
        if t["target"] == "4" and t["model"] == "resnet18":
            form = result["meta"].get("ort_target", "avx2")
            integer, floats = int8_ops.get("QLinearConv", 0), int8_ops.get("Conv", 0) + int8_ops.get("FusedConv", 0)
            why_signed = (
                "In this form (vnni: exact on CPUs with AVX-512 VNNI / AVX-VNNI only) every conv that writes int8 "
                "runs as QLinearConv, signed int8 inputs included"
                if form == "vnni" else
                "In this form (avx2: exact on every x86 CPU) a conv reading a signed int8 input (the image, a block "
                "input) stays float, since ORT's uint8 x int8 kernels saturate int16 pair sums on CPUs without "
                f"VNNI ({_cpu_note()}; `for_onnxruntime(target=\"vnni\")` lifts this)")
            notes.append(
                f"- Target 4, ResNet-18: {_short(t)}. int8 ONNX in the `for_onnxruntime(target=\"{form}\")` form; "
                f"ORT's optimized graph: {int8_ops}: {integer} integer convs (QLinearConv), {floats} float convs. "
                f"{why_signed}. The int8 model is quantized with int8 residual outputs (the convs feeding residual "
                "adds and the stem write int8, read back by DequantizeLinear before the add), so no conv has to stay "
                "float for want of an int8 output; what is left is the float work around them (adds, the "
                "DequantizeLinear/QuantizeLinear pairs at each add, pooling, the classifier) and load.")
        elif t["target"] == "4":
            form = result["meta"].get("ort_target", "avx2")
            weights = ("int8 weights (uint8 x int8: exact with VNNI only, about twice as fast as uint8 x uint8)"
                       if form == "vnni" else
                       "uint8 weights + 128 (uint8 x uint8: exact on every x86 CPU; uint8 x int8 would saturate "
                       "int16 pair sums without VNNI)")
            notes.append(
                f"- Target 4, MiniLM: {_short(t)}. int8 ONNX in the `for_onnxruntime(target=\"{form}\")` form; "
                f"ORT's optimized graph: {int8_ops}. The Linears run as MatMulIntegerToFloat with {weights}; the "
                "per-token quantizer (Abs/ReduceMax/Div/QuantizeLinear) and the per-row rescale (one Mul) and bias "
                "(one Add) run as separate ORT nodes, since ORT's fused dynamic GEMMs take one activation scale "
                "per tensor, not per row; attention (MatMul / FusedMatMul) stays float.")
        elif t["target"] == "3":
            notes.append(
                f"- Target 3 ({t['text']}): {_short(t)}. The GEMMs are the same `torch._int_mm` calls on both sides "
                "in eager and under Inductor; what differs is the work around them (quantizer, epilogue, Python "
                "custom-op calls in eager) and, on this shared machine, load: see the spread.")
        elif t["target"] in ("1", "2"):
            notes.append(f"- Target {t['target']}: {_short(t)} at this load; see the spread in the table.")
    return notes


def write_markdown(result: dict) -> list[str]:
    meta = result["meta"]
    lines = [
        "# CPU speed targets (issue 12)", "", *harness.meta_lines(meta),
        f"- {meta['cpu']}, {meta['cores']} cores, {meta['threads']} torch/ORT threads; int8 Linear/Conv through "
        f"oneDNN: {meta['onednn_int8']}; int8 ONNX exported in the "
        f"`for_onnxruntime(target=\"{meta.get('ort_target', 'avx2')}\")` form (auto: vnni on a CPU with AVX-512 VNNI / "
        "AVX-VNNI, exact only on such CPUs; avx2 elsewhere)", "",
        "The machine is shared: other processes run during the measurement, so every variant of a model is timed in "
        "turn (rotating order) and the spread is shown. A target is met when the ratio of MEDIANS reaches it; the "
        "range in brackets pairs the two variants' quartiles worst and best. Load per model: the 1-minute load "
        "average before and after its timing.", "",
        "## Targets", "",
        "| # | target | needed | measured: median (IQR range) | load | met |", "|---|---|---|---|---|---|",
    ]
    for t in result["targets"]:
        if t["measured"] is None:
            lines.append(f"| {t['target']} | {t['text']} | {t['needed']}x | not measured | - | - |")
            continue
        met = "yes" if t["met"] else f"**no** (short by {t['needed'] - t['measured']:.2f}x)"
        load = result["cases"][t["model"]].get("load")
        load = f"{load[0][0]:.2f} / {load[1][0]:.2f}" if load else "-"
        lines.append(f"| {t['target']} | {t['text']} | {t['needed']}x | {t['measured']:.2f}x "
                     f"({t['low']:.2f}-{t['high']:.2f}) | {load} | {met} |")
    for case in result["cases"].values():
        lines += ["", f"## {case['model']}: {case['inputs']}", "",
                  "| variant | median ms | IQR ms | min-max ms | vs fp32 eager | cosine vs fp32 eager |",
                  "|---|---|---|---|---|---|"]
        for name, row in case["rows"].items():
            lines.append(f"| {name} | {row['median_ms']:.2f} | {row['q1_ms']:.2f}-{row['q3_ms']:.2f} | "
                         f"{row['min_ms']:.2f}-{row['max_ms']:.2f} | {_fmt_ratio(row['vs_fp32_eager'])} | "
                         f"{row['cosine_vs_fp32']:.5f} |")
        if case.get("onnx_ops"):
            lines += ["", "Ops in ONNX Runtime's optimized graphs (integer kernels, Q/DQ, GEMM/conv):", ""]
            for variant, ops in case["onnx_ops"].items():
                lines.append(f"- {variant}: " + (", ".join(f"{k} {v}" for k, v in ops.items()) or "-"))
        for key, note in case.get("notes", {}).items():
            lines.append(f"\n{key}: {note}")
    if "widths" in result:
        w = result["widths"]
        lines += ["", "## Layer latency against output width (median ms)", "",
                  "3x3 conv 128 -> C on 1x128x28x28; linear 384 -> N (N = 4C) on 256 rows.", "",
                  "| C | conv fp32 | conv int8 | N | linear fp32 | linear int8 |", "|---|---|---|---|---|---|"]
        for c in w["widths"]:
            r = w["rows"]
            lines.append(f"| {c} | {r[f'conv-fp32-{c}']['median_ms']:.3f} | {r[f'conv-int8-{c}']['median_ms']:.3f} | "
                         f"{4 * c} | {r[f'linear-fp32-{4 * c}']['median_ms']:.3f} | "
                         f"{r[f'linear-int8-{4 * c}']['median_ms']:.3f} |")
    if result.get("analysis"):
        lines += ["", "## Notes", "", *result["analysis"]]
    return lines


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(result["cases"].values())
    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 4.5), squeeze=False)
    for ax, case in zip(axes[0], cases, strict=True):
        names = list(case["rows"])
        med = [case["rows"][n]["median_ms"] for n in names]
        err = [[m - case["rows"][n]["q1_ms"] for n, m in zip(names, med, strict=True)],
               [case["rows"][n]["q3_ms"] - m for n, m in zip(names, med, strict=True)]]
        ax.barh(names, med, xerr=err, color="tab:blue")
        ax.invert_yaxis()
        ax.set_xlabel("latency, ms (median, bars: interquartile range)")
        ax.set_title(f"{case['model']} on CPU ({result['meta']['threads']} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _versions() -> dict:
    import onnxruntime

    try:
        import torchao

        ao = torchao.__version__
    except ImportError:
        ao = "not installed"
    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "torchao": ao}


def rewrite_report(json_path: str | Path) -> None:
    """Re-derive the notes, markdown and plot of a committed result from its JSON (same measurements): for when
    the report's wording changes, not its numbers."""
    import json

    json_path = Path(json_path)
    result = json.loads(json_path.read_text())
    result["analysis"] = analysis(result)
    harness.write_results(json_path.parent, json_path.stem, result, write_markdown(result))
    write_plot(result, json_path.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    parser = harness.script_parser(__doc__, SUITE)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed calls per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch and ORT threads (default: torch's)")
    parser.add_argument("--skip", default="", help="comma-separated: resnet18,minilm,onnx,torchao,widths")
    parser.add_argument("--round-to", type=int, default=8, help="sg.prune round_to for target 1")
    parser.add_argument("--name", default="cpu-speed", help="file stem of the outputs")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    from slimgraph.quant import cpu_int8

    start = time.perf_counter()
    versions = _versions()
    meta = harness.run_metadata("bench.cpu_speed", argv, cpu=f"{platform.machine()} {platform.processor() or ''}"
                                .strip(), cores=os.cpu_count(), threads=threads, onednn_int8=cpu_int8.available(),
                                ort_target=_ort_target(),
                                **versions)
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "resnet18" not in skip:
            cases["resnet18"] = resnet_case(args.rounds, threads, skip, Path(tmp), args.round_to)
        if "minilm" not in skip:
            cases["minilm"] = minilm_case(args.rounds, threads, skip, Path(tmp))
    result = {"meta": meta, "cases": cases}
    if "widths" not in skip:
        result["widths"] = width_case(args.rounds)
    harness.finish_metadata(meta, start)
    result["targets"] = evaluate_targets(cases)
    result["analysis"] = analysis(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    harness.write_results(out, args.name, result, write_markdown(result))
    if cases:
        write_plot(result, out / f"{args.name}.png")
    for t in result["targets"]:
        print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
