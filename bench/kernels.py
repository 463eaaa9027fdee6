"""Kernel microbenchmarks: slimgraph's Triton kernels against cuBLAS / cuDNN / torch._int_mm in the same run.

    python -m bench.kernels [--quick] [--ops int8_matmul,w8a16] [--out bench/results]   (default: a scratch dir)

Shapes come from ``bench/shapes.py`` (BERT-base, Llama-7B/8B, ResNet-50 convs, squares, decode). On a GPU every
figure is the median of ``triton.testing.do_bench`` (CUDA events; decode-sized calls through CUDA graphs), inputs
rotated so that weights never sit in L2 between calls; the spread is its 25th-75th percentile. On a CPU the ops of
one shape are timed together by the harness's interleaved timing (bench/harness.py: every op warmed up before
any is timed, then rounds in rotating order; median and IQR), with a probe GEMM in the same rounds that shows
when the thread pool kept them waiting (then the shape is timed again). Rows report ms, TFLOP/s, GB/s of the
fewest bytes the op must move, the floor time of those FLOPs and bytes at the *measured* peaks, speed-up over
cuBLAS fp16 and % of the measured fp16 peak (a large cuBLAS fp16 GEMM timed in the same run; int8 can exceed 100%).

Ops (names usable in ``--ops``):
  fp16_mm, bf16_mm       torch.mm on fp16/bf16 (cuBLAS), the baselines
  int_mm_scaled          torch._int_mm + separate per-row/per-column scaling + bias (the unfused int8 path)
  int8_matmul            ours, W8A8 with the epilogue fused, on pre-quantized activations
  quant+int8_matmul      quantize_per_token + int8_matmul (what a graph runs without a fused norm producer)
  w8a16_matmul           ours, weight-only int8
  bsr50 / bsr75          ours, block-sparse fp16 with 50% / 75% zero blocks (block 64x64; bsr50-128x64,
                         bsr75-128x128, ... the other blocks of bench/shapes.py BSR_BLOCKS)
  semi24                 torch's 2:4 semi-structured sparse fp16 (where it runs)
  int8_conv2d            ours, NHWC implicit GEMM; cudnn_fp16_conv is its baseline (channels_last)
  quantize_per_token     ours, per-token int8 quantization (bandwidth)

Without a GPU the script still runs end to end in seconds: tiny stand-ins of the shapes, timing the torch
reference paths on CPU (which is what graphs run there); the output files say so and list what remains. Under
``TRITON_INTERPRET=1`` (how CI runs the kernels on CPU) nothing changes here: the CPU rows time the torch references
and baselines, never the interpreter. Results: ``<out>/kernels-<device>.{json,md,png}`` (``kernels-cpu.*`` for CPU
runs); the committed CPU run: ``TRITON_INTERPRET=1 python -m bench.kernels --out bench/results``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from bench import harness
from bench.shapes import BSR_BLOCKS, SHAPES, SPARSITIES, Shape, tiny

OPS = (
    "fp16_mm", "bf16_mm", "int_mm_scaled", "int8_matmul", "quant+int8_matmul", "w8a16_matmul", "bsr50", "bsr75",
    "bsr50-128x64", "bsr75-128x64", "bsr50-128x128", "bsr75-128x128",
    "semi24", "int8_conv2d", "cudnn_fp16_conv", "quantize_per_token",
)  # fmt: skip
INT8_OPS = {"int_mm_scaled", "int8_matmul", "quant+int8_matmul", "int8_conv2d"}
SUITE = "kernels"
ATTEMPTS = 5  # CPU: times a shape is timed while its probe GEMM says the thread pool kept the ops waiting

# GUIDE §5 / issue 5 targets on H100 (benchmarks, not tests).
TARGETS = (
    ("int8_matmul (fused epilogue) >= 1.7x cuBLAS fp16 at 4096^3", "int8_vs_fp16_4096", 1.7),
    ("int8_matmul (fused epilogue) >= 1.7x cuBLAS fp16 at 8192^3", "int8_vs_fp16_8192", 1.7),
    ("int8_matmul >= 1.0x torch._int_mm + separate scaling at 4096^3 / 8192^3 (min)", "int8_vs_int_mm", 1.0),
    ("M <= 16, K = N = 4096: best int8 path never slower than fp16 (min over M)", "decode_best_int8", 1.0),
    ("M <= 16, K = N = 4096: w8a16_matmul >= 1.6x fp16 (min over M)", "decode_w8a16", 1.6),
    ("block-sparse fp16, 50% zero blocks >= 1.5x dense torch.mm at 4096^3 (best block)", "bsr50_4096", 1.5),
    ("block-sparse fp16, 75% zero blocks >= 2.8x dense torch.mm at 4096^3 (best block)", "bsr75_4096", 2.8),
)


# ------------------------------------------------------------------------------------------------ environment


def gpu_details(gpu: bool) -> dict:
    """What the harness's run metadata does not say about a GPU run: CUDA, SMs, memory and L2."""
    if not gpu:
        return {"gpu": False}
    props = torch.cuda.get_device_properties(0)
    return dict(gpu=True, cuda=torch.version.cuda, sms=props.multi_processor_count,
                memory_gib=round(props.total_memory / 2**30, 1),
                l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1))  # fmt: skip


# ----------------------------------------------------------------------------------------------------- timing


def _gpu_timer(fn: Callable[[], object], small: bool, repeat: int) -> tuple[float, float, float]:
    """(median, q1, q3) ms of one call. Each timed unit is ``repeat`` calls (one per rotated input set, which a
    CUDA graph would otherwise freeze to the set it captured). Small calls replay a CUDA graph so that launch gaps
    do not dominate."""
    unit = fn if repeat == 1 else (lambda: [fn() for _ in range(repeat)])
    unit()  # compile and autotune outside the timed region (and outside any graph capture)
    torch.cuda.synchronize()
    quantiles = None
    if small and hasattr(triton.testing, "do_bench_cudagraph"):
        try:
            quantiles = triton.testing.do_bench_cudagraph(unit, rep=100, quantiles=[0.5, 0.25, 0.75])
        except Exception:  # noqa: BLE001 - ops that cannot be captured fall back to plain events
            torch.cuda.synchronize()
    if quantiles is None:
        quantiles = triton.testing.do_bench(unit, warmup=25, rep=100, quantiles=[0.5, 0.25, 0.75])
    return tuple(q / repeat for q in quantiles)


def _rotating(make: Callable[[], tuple], nbytes: int, l2_bytes: int) -> Callable[[], tuple]:
    """Several input sets used in turn, so that together they overflow L2 (else we time the cache).
    ``.copies`` says how many; time that many calls as one unit."""
    copies = max(1, min(8, math.ceil(3 * l2_bytes / max(nbytes, 1))))
    sets = [make() for _ in range(copies)]
    state = {"i": 0}

    def next_set():
        state["i"] = (state["i"] + 1) % copies
        return sets[state["i"]]

    next_set.copies = copies
    return next_set


# --------------------------------------------------------------------------------------------------- the runs


class Run:
    """Collects rows; ``peaks`` hold the measured ceilings (fp16 / int8 TFLOP/s, copy GB/s) on the GPU.

    :meth:`add` queues an op of the current shape; :meth:`flush` times the queue: on a GPU each op alone with
    ``do_bench``, on a CPU all of them together with the harness's interleaved timing, so that a change of machine
    load (or the first seconds of the process) hits every op of a shape alike instead of the first ones timed.
    """

    def __init__(self, gpu: bool, ops: set[str], rounds: int):
        self.gpu, self.ops, self.rounds, self.rows, self.peaks = gpu, ops, rounds, [], {}
        self.device = "cuda" if gpu else "cpu"
        self.l2 = torch.cuda.get_device_properties(0).L2_cache_size if gpu else 0
        self.timing_conditions: list[str] = []  # one line per CPU shape: rounds, warm-up, threads, load
        self.disturbed: list[str] = []  # CPU shapes whose every timing attempt saw the thread pool waiting
        self._queue: list[tuple[dict, Callable[[], object], float, float, bool, int]] = []

    def add(self, shape: Shape, op: str, fn: Callable[[], object] | None, flops: float, nbytes: float,
            note: str = "", small: bool = False, repeat: int = 1) -> None:  # fmt: skip
        if op not in self.ops:
            return
        row = dict(shape=shape.name, group=shape.group, M=shape.M, N=shape.N, K=shape.K, op=op, ms=None, note=note)
        self.rows.append(row)
        if fn is None:
            row["note"] = f"not run: {note}"
            return
        self._queue.append((row, fn, flops, nbytes, small, repeat))

    def flush(self) -> None:
        queue, self._queue = self._queue, []
        runnable = []
        for row, fn, flops, nbytes, small, repeat in queue:
            try:
                if self.gpu:
                    self._record(row, _gpu_timer(fn, small, repeat), flops, nbytes)
                else:
                    fn()  # the first warm-up call, alone: an op that fails here is left out of the timed rounds
                    runnable.append((row, fn, flops, nbytes))
            except Exception as err:  # noqa: BLE001 - a baseline that does not run here is a row, not a crash
                row["note"] = f"{row['note']} did not run: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
                row["note"] = row["note"].strip()
        if not runnable:
            return
        run, pool = harness.time_variants_quietly({row["op"]: fn for row, fn, *_ in runnable}, attempts=ATTEMPTS,
                                                  rounds=self.rounds, min_rounds=min(self.rounds, 5))  # fmt: skip
        shape = runnable[0][0]["shape"]
        self.timing_conditions.append(f"{shape}: {run.conditions()}; probe GEMM median {pool['probe_ms']} ms "
                                      f"(attempt {pool['attempts']})")
        self.disturbed += [] if pool["quiet"] else [shape]
        for row, _, flops, nbytes in runnable:
            t = run[row["op"]]
            self._record(row, (t.median_ms, t.q1_ms, t.q3_ms), flops, nbytes)
            if not pool["quiet"]:
                row["note"] = (row["note"] + "; " if row["note"] else "") + "thread pool kept waiting: timing inflated"

    def _record(self, row: dict, times: tuple[float, float, float], flops: float, nbytes: float) -> None:
        ms, q1, q3 = times
        row.update(ms=ms, ms_q1=q1, ms_q3=q3, tflops=flops / ms / 1e9 if flops else None, gbps=nbytes / ms / 1e6)
        if self.peaks:
            compute = self.peaks["int8_tops"] if row["op"] in INT8_OPS else self.peaks["fp16_tflops"]
            floor_ms = max(flops / (compute * 1e9), nbytes / (self.peaks["copy_gbps"] * 1e6))
            row.update(floor_ms=floor_ms, of_floor=floor_ms / ms)
            if flops:
                row["pct_fp16_peak"] = 100 * row["tflops"] / self.peaks["fp16_tflops"]

    def measure_peaks(self) -> None:
        """The two ceilings, measured here: a large GEMM and a large device-to-device copy."""
        n = 8192
        a = torch.randn(n, n, device="cuda", dtype=torch.float16)
        b = torch.randn(n, n, device="cuda", dtype=torch.float16)
        self.peaks["fp16_tflops"] = 2 * n**3 / _gpu_timer(lambda: torch.mm(a, b), False, 1)[0] / 1e9
        a8 = torch.randint(-127, 128, (n, n), device="cuda", dtype=torch.int8)
        b8 = torch.randint(-127, 128, (n, n), device="cuda", dtype=torch.int8)
        try:
            self.peaks["int8_tops"] = 2 * n**3 / _gpu_timer(lambda: torch._int_mm(a8, b8), False, 1)[0] / 1e9
        except RuntimeError:
            self.peaks["int8_tops"] = 2 * self.peaks["fp16_tflops"]  # H100 datasheet ratio, noted in the report
            self.peaks["int8_tops_note"] = "torch._int_mm failed; assumed 2x fp16"
        src = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_()
        dst = torch.empty_like(src)
        self.peaks["copy_gbps"] = 2 * src.numel() / _gpu_timer(lambda: dst.copy_(src), False, 1)[0] / 1e6
        torch.cuda.empty_cache()  # the locals above go with this frame


def _block_prune(w: torch.Tensor, zero_fraction: float, block) -> torch.Tensor:
    bn, bk = block
    n, k = w.shape
    keep = torch.rand(-(-n // bn), -(-k // bk), device=w.device) >= zero_fraction
    mask = keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)[:n, :k]
    return w * mask


def _two_four(w: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest of every 4 consecutive weights along K (the 2:4 pattern)."""
    groups = w.reshape(w.shape[0], -1, 4)
    idx = groups.abs().topk(2, dim=-1).indices
    return torch.zeros_like(groups).scatter(-1, idx, groups.gather(-1, idx)).reshape_as(w)


def bench_gemm(run: Run, shape: Shape) -> None:
    from slimgraph.kernels import to_block_sparse
    from slimgraph.kernels.block_sparse import block_sparse_matmul_kernel, block_sparse_matmul_reference
    from slimgraph.kernels.int8_matmul import int8_matmul_kernel, int8_matmul_reference
    from slimgraph.kernels.quantize import norm_quantize_kernel, quantize_rows_reference
    from slimgraph.kernels.w8a16_matmul import w8a16_matmul_kernel, w8a16_matmul_reference

    M, N, K, dev = shape.M, shape.N, shape.K, run.device
    flops, small = shape.flops, shape.M <= 16
    fp16, bf16 = torch.float16, torch.bfloat16
    # CPU: the references (what graphs run there); GPU: the Triton kernels.
    quantize = norm_quantize_kernel if run.gpu else quantize_rows_reference
    int8_mm = int8_matmul_kernel if run.gpu else int8_matmul_reference
    w8a16 = w8a16_matmul_kernel if run.gpu else w8a16_matmul_reference
    bsr_mm = block_sparse_matmul_kernel if run.gpu else block_sparse_matmul_reference
    float_dtype = fp16 if run.gpu else torch.float32  # CPU half GEMMs are not what a CPU graph would run

    def make():
        x = torch.randn(M, K, device=dev, dtype=float_dtype)
        w = torch.randn(N, K, device=dev, dtype=float_dtype)
        xq, xs = quantize_rows_reference(x)
        wq, ws = quantize_rows_reference(w)
        return x, w, xq, xs, wq, ws, torch.randn(N, device=dev, dtype=float_dtype)

    inputs = _rotating(make, (M * K + N * K) * 2, run.l2)
    mm_bytes = 2 * (M * K + N * K + M * N)
    run.add(shape, "fp16_mm", lambda: torch.mm(*_xw(inputs())), flops, mm_bytes,
            "" if run.gpu else "fp32 torch.mm on CPU", small, inputs.copies)  # fmt: skip
    if run.gpu:
        bf_inputs = _rotating(
            lambda: (torch.randn(M, K, device=dev, dtype=bf16), torch.randn(N, K, device=dev, dtype=bf16)),
            (M * K + N * K) * 2,
            run.l2,
        )
        run.add(shape, "bf16_mm", lambda: torch.mm(*_xw(bf_inputs())), flops, mm_bytes, "", small,
                bf_inputs.copies)  # fmt: skip

    i8_bytes = M * K + N * K + 2 * M * N + 4 * (M + N)

    def int_mm_scaled():
        x, w, xq, xs, wq, ws, bias = inputs()
        acc = torch._int_mm(xq, wq.t())
        return (acc.float() * xs[:, None] * ws[None, :] + bias).to(float_dtype)

    run.add(shape, "int_mm_scaled", int_mm_scaled, flops, i8_bytes, "int32 out, then scale+bias in torch", small,
            inputs.copies)  # fmt: skip

    def ours_int8():
        x, w, xq, xs, wq, ws, bias = inputs()
        return int8_mm(xq, wq, xs, ws, bias, None, float_dtype)

    run.add(shape, "int8_matmul", ours_int8, flops, i8_bytes, "scales+bias fused", small, inputs.copies)

    def quant_int8():
        x, w, xq, xs, wq, ws, bias = inputs()
        q, s = quantize(x)
        return int8_mm(q, wq, s, ws, bias, None, float_dtype)

    run.add(shape, "quant+int8_matmul", quant_int8, flops, 2 * M * K + N * K + 2 * M * N, "two kernels", small,
            inputs.copies)  # fmt: skip

    def weight_only():
        x, w, xq, xs, wq, ws, bias = inputs()
        return w8a16(x, wq, ws, bias)

    run.add(shape, "w8a16_matmul", weight_only, flops, 2 * M * K + N * K + 2 * M * N, "", small, inputs.copies)

    if shape.sparse:
        x, w, *_ = inputs()
        for zero in SPARSITIES:
            for block in BSR_BLOCKS:
                bsr = to_block_sparse(_block_prune(w, zero, block), block)
                dense_bytes = 2 * (M * K + M * N) + bsr.values.numel() * bsr.values.element_size()
                run.add(shape, bsr_op(zero, block), lambda bsr=bsr: bsr_mm(x, bsr), flops, dense_bytes,
                        f"block {block[0]}x{block[1]}, density {bsr.density:.2f}, TFLOP/s dense-equivalent",
                        small)  # fmt: skip
        semi = None
        if run.gpu:
            try:
                semi = torch.sparse.to_sparse_semi_structured(_two_four(w))
            except Exception:  # noqa: BLE001 - reported as a row that did not run
                semi = None
        run.add(shape, "semi24", None if semi is None else lambda: F.linear(x, semi), flops, mm_bytes * 3 / 4,
                "2:4 semi-structured" if run.gpu else "2:4 semi-structured sparsity is GPU only", small)  # fmt: skip


def bsr_op(zero: float, block: tuple[int, int]) -> str:
    """Row name of a block-sparse benchmark: ``bsr50`` for the default 64x64 block, ``bsr50-128x64`` otherwise."""
    name = f"bsr{round(zero * 100)}"
    return name if block == BSR_BLOCKS[0] else f"{name}-{block[0]}x{block[1]}"


def _xw(inp):
    x, w, *_ = inp
    return x, w.t()


def bench_conv(run: Run, shape: Shape) -> None:
    from slimgraph.kernels.int8_conv import int8_conv2d_kernel, int8_conv2d_reference

    c, dev = shape.conv, run.device
    conv_fn = int8_conv2d_kernel if run.gpu else int8_conv2d_reference
    oh, ow = c.out_hw
    x8 = torch.randint(-127, 128, (c.batch, c.h, c.w, c.c), dtype=torch.int8, device=dev)
    w8 = torch.randint(-127, 128, (c.oc, c.k, c.k, c.c), dtype=torch.int8, device=dev)
    xs, ws = torch.tensor([0.02], device=dev), torch.rand(c.oc, device=dev) * 0.01
    bias = torch.randn(c.oc, device=dev)
    nbytes = x8.numel() + w8.numel() + 2 * c.batch * oh * ow * c.oc
    run.add(shape, "int8_conv2d", lambda: conv_fn(x8, w8, xs, ws, bias, c.stride, c.padding, 1, 1, "relu",
                                                   torch.float16),
            shape.flops, nbytes, "NHWC implicit GEMM, bias+relu fused" if run.gpu else "reference on CPU")  # fmt: skip
    dtype = torch.float16 if run.gpu else torch.float32
    xf = torch.randn(c.batch, c.c, c.h, c.w, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
    wf = torch.randn(c.oc, c.c, c.k, c.k, device=dev, dtype=dtype).to(memory_format=torch.channels_last)
    bf = torch.randn(c.oc, device=dev, dtype=dtype)
    run.add(shape, "cudnn_fp16_conv", lambda: F.relu(F.conv2d(xf, wf, bf, c.stride, c.padding)), shape.flops,
            2 * nbytes, "channels_last" if run.gpu else "fp32 conv on CPU")  # fmt: skip


def bench_quantize(run: Run, shape: Shape) -> None:
    from slimgraph.kernels.quantize import norm_quantize_kernel, quantize_rows_reference

    fn = norm_quantize_kernel if run.gpu else quantize_rows_reference
    x = torch.randn(shape.M, shape.K, device=run.device, dtype=torch.float16 if run.gpu else torch.float32)
    run.add(shape, "quantize_per_token", lambda: fn(x), 0, 3 * shape.M * shape.K + 4 * shape.M, "bandwidth-bound",
            shape.M <= 16)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- targets


def _ms(rows, shape: str, op: str) -> float | None:
    return next((r["ms"] for r in rows if r["shape"] == shape and r["op"] == op and r["ms"]), None)


def _ratio(rows, shape, base, op):
    b, o = _ms(rows, shape, base), _ms(rows, shape, op)
    return None if b is None or o is None else b / o


def evaluate_targets(rows: list[dict], gpu: bool) -> list[dict]:
    decode = [f"decode.m{m}" for m in (1, 2, 4, 8, 16)]

    def best_int8(s):
        times = [t for t in (_ms(rows, s, "w8a16_matmul"), _ms(rows, s, "quant+int8_matmul")) if t]
        fp = _ms(rows, s, "fp16_mm")
        return fp / min(times) if times and fp else None

    def best_bsr(zero):  # the fastest BSR block at this sparsity: the block is the user's choice
        ratios = [_ratio(rows, "square4096", "fp16_mm", bsr_op(zero, b)) for b in BSR_BLOCKS]
        ratios = [r for r in ratios if r is not None]
        return max(ratios) if ratios else None

    def minimum(values):
        values = [v for v in values if v is not None]
        return min(values) if values else None

    measured = {
        "int8_vs_fp16_4096": _ratio(rows, "square4096", "fp16_mm", "int8_matmul"),
        "int8_vs_fp16_8192": _ratio(rows, "square8192", "fp16_mm", "int8_matmul"),
        "int8_vs_int_mm": minimum(_ratio(rows, s, "int_mm_scaled", "int8_matmul") for s in ("square4096",
                                                                                              "square8192")),
        "decode_best_int8": minimum(best_int8(s) for s in decode),
        "decode_w8a16": minimum(_ratio(rows, s, "fp16_mm", "w8a16_matmul") for s in decode),
        "bsr50_4096": best_bsr(0.5),
        "bsr75_4096": best_bsr(0.75),
    }  # fmt: skip
    out = []
    for text, key, threshold in TARGETS:
        value = measured[key] if gpu else None
        if not gpu:
            note = "not measured: no GPU in this run (CPU timings of torch references say nothing about it)"
        elif value is None:
            note = "not measured in this run (shape/op filtered out or failed)"
        else:
            note = "met" if value >= threshold else "MISSED: see the rows' of_floor column for the gap to the floor"
        out.append(dict(target=text, key=key, threshold=threshold, measured=value,
                        met=None if value is None else value >= threshold, note=note))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------- outputs


def _fmt(value, digits=3):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _speedups(rows):
    for r in rows:
        if r["op"] == "quantize_per_token":  # not a GEMM: no fp16 GEMM to compare with
            r["speedup_vs_fp16"] = None
            continue
        base = _ms(rows, r["shape"], "cudnn_fp16_conv" if r["op"] == "int8_conv2d" else "fp16_mm")
        r["speedup_vs_fp16"] = None if not (base and r["ms"]) else base / r["ms"]


NO_GPU_NOTE = (
    "**No CUDA GPU was found.** This is a CPU run: tiny stand-ins of each shape, timing the torch reference paths "
    "(what slimgraph graphs execute on CPU) and CPU torch baselines. It checks that the benchmark runs end to end; "
    "it says nothing about kernel speed. Remaining measurements, all on an H100: every row of the shape table at "
    "full size with the Triton kernels, the measured fp16/int8/copy peaks, and every target below."
)


def device_tag(meta: dict) -> str:
    return "cpu" if not meta["gpu"] else meta["device"].lower().replace("nvidia", "").strip().split()[0]


def write_kernel_results(out_dir: str | Path, meta: dict, run: Run, targets: list[dict], args) -> list[Path]:
    stem = f"kernels-{device_tag(meta)}"
    payload = dict(meta=meta, peaks=run.peaks, quick=args.quick, ops=sorted(args.ops), targets=targets,
                   timing=run.timing_conditions, rows=run.rows, shapes=[asdict(s) for s in SHAPES],
                   note=None if meta["gpu"] else NO_GPU_NOTE)  # fmt: skip
    lines = [f"# Kernel microbenchmarks — {meta['device']}", ""]
    if not meta["gpu"]:
        lines += [NO_GPU_NOTE, ""]
    lines += [*harness.meta_lines(meta), ""]
    if meta["gpu"]:
        lines += [f"- CUDA {meta['cuda']}, {meta['sms']} SMs, {meta['memory_gib']} GiB, L2 {meta['l2_mib']} MiB; "
                  "each row: median of triton.testing.do_bench, IQR from its 25th-75th percentiles", ""]
    else:
        lines += ["- each shape's ops timed together, interleaved (bench.harness.time_variants): "
                  f"{run.timing_conditions[0].split(': ', 1)[1] if run.timing_conditions else '-'} "
                  "(first shape; every shape's conditions are in the JSON). A probe GEMM runs in the same rounds: "
                  "when its median exceeds 1 ms the thread pool kept the ops waiting for scheduler ticks (a loaded "
                  "machine), and the shape is timed again once the pool answers promptly (at most "
                  f"{ATTEMPTS} attempts)",
                  "- shapes whose every attempt was disturbed (their rows say so): "
                  f"{', '.join(run.disturbed) or 'none'}",
                  ""]
    peaks = run.peaks
    if peaks:
        lines += [
            f"Measured peaks: fp16 GEMM {peaks['fp16_tflops']:.0f} TFLOP/s, int8 GEMM {peaks['int8_tops']:.0f} TOP/s, "
            f"copy {peaks['copy_gbps']:.0f} GB/s. `of floor` = floor time / measured time, where the floor is "
            "max(FLOPs / peak, bytes / copy bandwidth) with the fewest bytes the op must move.",
            "",
        ]
    lines += ["## Targets (GUIDE §5)", "", "| target | threshold | measured | status |", "|---|---|---|---|"]
    for t in targets:
        status = "—" if t["met"] is None else ("met" if t["met"] else "**missed**")
        lines.append(f"| {t['target']} | {t['threshold']}x | {_fmt(t['measured'])}{'x' if t['measured'] else ''} "
                     f"| {status}: {t['note']} |")  # fmt: skip
    lines += ["", "## Rows", ""]
    lines += harness.md_table(
        ["shape", "M", "N", "K", "op", "ms median (IQR)", "TFLOP/s", "GB/s", "vs fp16", "% fp16 peak", "of floor",
         "note"],
        [[r["shape"], r["M"], r["N"], r["K"], r["op"], _ms_label(r), _fmt(r.get("tflops")), _fmt(r.get("gbps")),
          _fmt(r.get("speedup_vs_fp16")), _fmt(r.get("pct_fp16_peak")), _fmt(r.get("of_floor")), r["note"]]
         for r in run.rows])
    files = harness.write_results(out_dir, stem, payload, lines)
    files.append(_plot(out_dir, stem, meta, run.rows))
    return files


def _ms_label(row: dict) -> str:
    if row["ms"] is None:
        return "—"
    return f"{_fmt(row['ms'])} ({_fmt(row['ms_q1'])}-{_fmt(row['ms_q3'])})"


def _plot(out_dir: str | Path, stem: str, meta: dict, rows: list[dict]) -> Path:
    from matplotlib import colormaps

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    ops = [op for op in OPS if any(r["op"] == op and r["ms"] for r in rows)]
    gpu = meta["gpu"]
    fig, ax = harness.figure(figsize=(min(22, max(10, 0.7 * len(shapes))), 6.5))
    width = 0.8 / max(1, len(ops))
    for i, op in enumerate(ops):
        values = []
        for s in shapes:
            r = next((r for r in rows if r["shape"] == s and r["op"] == op), None)
            v = None if r is None else (r.get("speedup_vs_fp16") if gpu else r["ms"])
            values.append(float("nan") if v is None else v)
        ax.bar([j + i * width for j in range(len(shapes))], values, width, label=op,
               color=colormaps["tab20"](i % 20))  # 16 ops: the default 10-colour cycle would repeat colours
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=60, ha="right", fontsize=7)
    if gpu:
        ax.axhline(1.0, color="black", linewidth=0.8)
    title = f"slimgraph kernels — {meta['device']}, torch {meta['torch']}, triton {meta['triton']}"
    if not gpu:
        title += "\nNO GPU FOUND: CPU reference paths only, not kernel speed"
    ylabel = ("speed-up over cuBLAS fp16 (cuDNN for convs)" if gpu else
              "ms (median, log), torch reference on CPU, tiny shapes")
    return harness.finish_figure(fig, ax, out_dir, stem, title=title, ylabel=ylabel, logy=not gpu,
                                 legend={"fontsize": 7, "ncol": 3}, title_size=9)


# ------------------------------------------------------------------------------------------------------- main


def _parse(argv):
    p = harness.script_parser(__doc__, SUITE, quick="the shapes marked quick in bench/shapes.py only",
                              rounds=30)
    p.add_argument("--ops", default="", help=f"comma-separated op names to run (default all): {', '.join(OPS)}")
    args = p.parse_args(argv)
    wanted = {o.strip() for o in args.ops.split(",") if o.strip()}
    unknown = wanted - set(OPS)
    if unknown:
        p.error(f"unknown op(s) {', '.join(sorted(unknown))}; choose from {', '.join(OPS)}")
    # The baselines always run: every speed-up is measured against them in the same run.
    args.ops = (wanted | {"fp16_mm", "cudnn_fp16_conv"}) if wanted else set(OPS)
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    start = time.perf_counter()
    gpu = torch.cuda.is_available()
    meta = harness.run_metadata("bench.kernels", argv, **gpu_details(gpu))
    run = Run(gpu, args.ops, args.rounds)
    torch.manual_seed(0)
    if gpu:
        run.measure_peaks()
    else:
        print(NO_GPU_NOTE.replace("**", ""))
    # Without a GPU every shape is a tiny stand-in anyway; the full table of stand-ins still takes seconds.
    shapes = [s for s in SHAPES if s.quick or not args.quick]
    shapes = shapes if gpu else [tiny(s) for s in shapes]
    for shape in shapes:
        started = time.perf_counter()
        if shape.conv is not None:
            bench_conv(run, shape)
        else:
            bench_gemm(run, shape)
            if shape.group in ("bert", "decode") or shape.name == "llama7b.attn_qkvo":
                bench_quantize(run, shape)
        run.flush()
        print(f"{shape.name:22s} M={shape.M:<6d} N={shape.N:<6d} K={shape.K:<6d} {time.perf_counter() - started:6.1f}s",
              flush=True)  # fmt: skip
        if gpu:
            torch.cuda.empty_cache()
    _speedups(run.rows)
    targets = evaluate_targets(run.rows, gpu)
    harness.finish_metadata(meta, start)
    files = write_kernel_results(args.out, meta, run, targets, args)
    print()
    for t in targets:
        print(f"[{'—' if t['met'] is None else 'met' if t['met'] else 'MISSED'}] {t['target']}: {_fmt(t['measured'])}")
    print("\nwrote " + ", ".join(map(str, files)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
