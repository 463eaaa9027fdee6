"""CPU benchmark: a 90%-sparse MLP, dense vs ``sg.sparsify`` + lowering, on the 2-core development machine.

    python -m bench.sparse_mlp_cpu [--width 4096] [--layers 3] [--batches 1,8,64] [--reps 25] [--out bench/results]

Results go to a scratch directory unless ``--out`` is given (``--out bench/results`` replaces the committed ones).

Model: ``layers`` x Linear(width, width) with ReLU between, random weights, fp32, ``torch.set_num_threads(--threads)``
(default 2, the machine's cores).
For every batch size the model is sparsified at 90% (unstructured, global l1, ``lower="auto"``: each layer is lowered
to ``slimgraph::sparse_linear`` only if the pass measures it faster at that batch) and timed against the captured dense
graph with the bench harness (:func:`bench.harness.time_variants`): ``--warmup`` calls each, then ``--reps`` rounds
in rotating order (AB BA AB ...), so load from other processes on the shared machine hits both alike; median and
interquartile range per variant. The verdict reads the ratio of MEDIAN wall times, with the spread the two IQRs
allow (worst and best pairing of quartiles; a spread containing 1.0 reads "no change"); the fastest-call ratio and
the one-thread CPU-time table are extra evidence, not the verdict.

A second table times one width x width layer per backend (dense ``F.linear``, torch CSR, scipy CSR) at more row
counts, interleaved the same way: it is the measurement behind ``SCIPY_MAX_ROWS`` in slimgraph/ops/sparse_linear.py.
Target (issue 13): sparse >= 2x faster than dense.
"""

from __future__ import annotations

import os
import platform
import time
from functools import partial

import torch
import torch.nn.functional as F

from bench import harness
from bench.harness import md_table, save_figure

TARGET = 2.0
SPARSITY = 0.9
STEM = SUITE = "sparse-mlp-cpu"


def _mlp(width: int, layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    mods = []
    for i in range(layers):
        mods.append(torch.nn.Linear(width, width))
        if i < layers - 1:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods).eval()


def _interleaved(fns: dict, warmup: int, reps: int) -> harness.TimingRun:
    """Every function timed ``reps`` times in rotating order after ``warmup`` calls each (autograd off)."""
    # min_rounds = rounds: a width-4096 batch-64 forward is slow on a loaded machine, and the time cap must not
    # quietly cut the rounds this result states
    return harness.time_variants(fns, warmup=warmup, rounds=reps, min_rounds=reps, max_seconds=float("inf"))


def _stats(t: harness.Timing) -> dict[str, float]:
    return {"median_ms": t.median_ms, "q1_ms": t.q1_ms, "q3_ms": t.q3_ms, "iqr_ms": t.iqr_ms, "min_ms": t.min_ms,
            "max_ms": t.max_ms, "samples": len(t.samples_ms)}


def _model_rows(width, layers, batches, warmup, reps):
    import slimgraph as sg

    model = _mlp(width, layers)
    rows = []
    for batch in batches:
        x = torch.randn(batch, width)
        dense = sg.capture(model, (x,))
        start = time.perf_counter()
        sparse = sg.sparsify(model, (x,), sparsity=SPARSITY, pattern="unstructured", scope="global", lower="auto")
        sparsify_s = time.perf_counter() - start
        report = sg.sparse.last_report(sparse)
        torch.testing.assert_close(sparse(x), sg.sparsify(model, (x,), sparsity=SPARSITY, lower="off")(x),
                                   rtol=1e-4, atol=1e-4)
        run = _interleaved({"dense": partial(dense, x), "sparse": partial(sparse, x)}, warmup, reps)
        d, s = _stats(run["dense"]), _stats(run["sparse"])
        ratio = harness.speedup(run["dense"], run["sparse"])
        rows.append({"batch": batch, "dense": d, "sparse": s, "speedup": ratio.median, "speedup_low": ratio.low,
                     "speedup_high": ratio.high, "verdict": ratio.verdict, "load": [run.load_before, run.load_after],
                     "sparsity": report.sparsity, "lowered": f"{len(report.lowered)}/{len(report.layers)}",
                     "sparsify_s": sparsify_s, "report": report.table()})
        print(f"batch {batch}: dense {d['median_ms']:.2f} ms, sparse {s['median_ms']:.2f} ms "
              f"({ratio.label()}), lowered {rows[-1]['lowered']}, load {run.load_before[0]:.2f}", flush=True)
    return rows


def _one_thread(fn, *args):
    """``fn`` with torch (and so slimgraph's scipy row blocks) limited to one thread: what threading adds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def _cpu_ms(fns: dict, reps: int) -> dict[str, float]:
    """CPU milliseconds per call on one thread (process time): the work each backend does, which other processes
    on the machine barely change, unlike wall time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        with torch.no_grad():
            for name, fn in fns.items():
                fn()
                start = time.process_time()
                for _ in range(reps):
                    fn()
                out[name] = (time.process_time() - start) / reps * 1e3
    finally:
        torch.set_num_threads(threads)
    return out


def _backend_rows(width, row_counts, warmup, reps):
    from slimgraph.ops.sparse_linear import _scipy_rows, _torch_rows, to_csr

    torch.manual_seed(1)
    w = torch.randn(width, width) * (torch.rand(width, width) >= SPARSITY)
    csr = to_csr(w)
    parts = (csr.crow_indices, csr.col_indices, csr.values, width, width)
    rows = []
    for m in row_counts:
        x = torch.randn(m, width)
        run = _interleaved({"dense": partial(F.linear, x, w), "torch-csr": partial(_torch_rows, x, *parts),
                            "scipy-csr": partial(_scipy_rows, x, *parts),
                            "scipy-csr-1t": partial(_one_thread, _scipy_rows, x, *parts)}, warmup, reps)
        cpu = _cpu_ms({"dense": partial(F.linear, x, w), "torch-csr": partial(_torch_rows, x, *parts),
                       "scipy-csr": partial(_scipy_rows, x, *parts)}, reps=5)
        rows.append({"rows": m, **{k: _stats(t) for k, t in run.timings.items()}, "cpu_ms_1t": cpu})
        print(f"rows {m}: " + ", ".join(f"{k} {t.median_ms:.2f} ms" for k, t in run.timings.items()), flush=True)
    return rows


def _versions() -> dict[str, str]:
    import numpy
    import scipy

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"torch": torch.__version__, "scipy": scipy.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "cpu": cpu, "cores": str(os.cpu_count()),
            "threads": str(torch.get_num_threads()), "mkl": str(torch.backends.mkl.is_available())}


def _plot(rows, out) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    pos = range(len(rows))
    for offset, key, color in ((-0.2, "dense", "#888888"), (0.2, "sparse", "#2a7ab0")):
        med = [r[key]["median_ms"] for r in rows]
        err = [[r[key]["median_ms"] - r[key]["q1_ms"] for r in rows], [r[key]["q3_ms"] - r[key]["median_ms"]
                                                                        for r in rows]]
        ax.bar([p + offset for p in pos], med, 0.4, yerr=err, capsize=3, label=key, color=color)
    for p, r in zip(pos, rows):
        ax.text(p + 0.2, r["sparse"]["q3_ms"], f"{r['speedup']:.2f}x\n({r['speedup_low']:.2f}-{r['speedup_high']:.2f})",
                ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(pos), [f"batch {r['batch']}" for r in rows])
    ax.set_ylabel("ms per forward (median, IQR bars)")
    ax.set_title(f"{SPARSITY:.0%}-sparse MLP on CPU: dense vs sparsify + lowering\n(label: ratio of medians, IQR "
                 "spread)", fontsize=9)
    ax.legend()
    return save_figure(fig, out, STEM)


def _work_ratio(backend_row: dict) -> float:
    cpu = backend_row["cpu_ms_1t"]
    return cpu["dense"] / min(cpu["torch-csr"], cpu["scipy-csr"])


def model_wall(meta: dict, backends: list[dict], row: dict) -> float:
    """The dense model's median wall time over the one-thread CPU time of its GEMMs at that batch: about 1 / threads
    on an idle machine, far above 1 when threads wait for cores other processes hold."""
    b = next(b for b in backends if b["rows"] == row["batch"])
    return row["dense"]["median_ms"] / (meta["layers"] * b["cpu_ms_1t"]["dense"])


def rewrite_report(json_path) -> None:
    """Re-derive the markdown and plot of a committed result from its JSON (same measurements): for when the
    report's wording changes, not its numbers."""
    import json
    from pathlib import Path

    json_path = Path(json_path)
    result = json.loads(json_path.read_text())
    harness.write_results(json_path.parent, json_path.stem, result,
                          _markdown(result["meta"], result["model"], result["backends"]))
    _plot(result["model"], json_path.parent)


def _ms_iqr(t: dict) -> str:
    return f"{t['median_ms']:.2f} ({t['q1_ms']:.2f}-{t['q3_ms']:.2f})"


def _verdict(r: dict) -> str:
    """Met when the ratio of medians reaches the target; the spread says how firmly."""
    if r["speedup"] < TARGET:
        return f"MISSED by {TARGET / r['speedup']:.2f}x"
    if r["speedup_low"] >= TARGET:
        return "met (whole spread above)"
    return f"met on the median (spread reaches {r['speedup_low']:.2f}x)"


def _markdown(meta, rows, backends) -> list[str]:
    v = meta["versions"]
    lines = [f"# {SPARSITY:.0%}-sparse MLP on CPU: dense vs sparsified + lowered", "", *harness.meta_lines(meta),
             f"- {v['cpu']}; `torch.set_num_threads({v['threads']})`; MKL {v['mkl']}, scipy {v['scipy']}, numpy "
             f"{v['numpy']}", f"- model: {meta['layers']} x Linear({meta['width']}, {meta['width']}) + ReLU, fp32; "
             f"{meta['reps']} interleaved rounds (rotating order) after {meta['warmup']} warm-up calls per variant",
             "", f"Target (issue 13): sparse >= {TARGET:g}x faster than dense, read on the ratio of MEDIAN wall times; "
             "the spread in brackets pairs the two variants' quartiles worst and best (dense q1 / sparse q3 .. "
             "dense q3 / sparse q1). Load = 1-minute load average before and after that batch's timing.", ""]
    lines += md_table(["batch", "dense ms median (IQR)", "sparse ms median (IQR)", "speedup (median, spread)",
                       f"target {TARGET:g}x", "load", "fastest-call speedup", "layers lowered", "sparsity"],
                      [[r["batch"], _ms_iqr(r["dense"]), _ms_iqr(r["sparse"]),
                        f"{r['speedup']:.2f}x ({r['speedup_low']:.2f}-{r['speedup_high']:.2f})", _verdict(r),
                        f"{r['load'][0][0]:.2f} / {r['load'][1][0]:.2f}",
                        f"{r['dense']['min_ms'] / r['sparse']['min_ms']:.2f}x", r["lowered"], f"{r['sparsity']:.2%}"]
                       for r in rows])
    lines += ["", "One layer per backend (ms median (IQR), interleaved; the op uses a thread pool for scipy only above "
              "`SCIPY_THREADED_MIN_NNZ` stored weights; what `SCIPY_MAX_ROWS` in "
              "slimgraph/ops/sparse_linear.py rests on):", ""]
    lines += md_table(["rows", "dense F.linear", "torch CSR", "scipy CSR as the op runs it",
                       "scipy CSR, 1 thread"],
                      [[b["rows"], *(f"{b[k]['median_ms']:.3f} ({b[k]['q1_ms']:.3f}-{b[k]['q3_ms']:.3f})"
                                     for k in ("dense", "torch-csr", "scipy-csr", "scipy-csr-1t"))]
                       for b in backends])
    lines += ["", "CPU time per call on one thread (process time, ms; what each backend has to compute, which the "
              "machine's load barely changes):", ""]
    lines += md_table(["rows", "dense F.linear", "torch CSR", "scipy CSR", "dense / best sparse"],
                      [[b["rows"], *(f"{b['cpu_ms_1t'][k]:.3f}" for k in ("dense", "torch-csr", "scipy-csr")),
                        f"{_work_ratio(b):.2f}x"] for b in backends])
    lines += ["", "Fastest-call speedup: the ratio of the two variants' fastest calls, which other processes on the "
              "shared machine disturb least (extra evidence; the verdict reads the medians)."]
    loads = [meta["load_at_start"][0], meta["load_at_end"][0]]
    if max(loads) > int(v["cores"]):
        lines += ["", f"**Caution: the load average exceeded the {v['cores']} cores** (other processes were running). "
                  "A multi-threaded GEMM then waits at every parallel barrier for a thread the scheduler put aside, "
                  "so both columns are slower than on an idle machine, and unevenly: the MKL paths (dense, torch "
                  "CSR) more than single-threaded scipy. Read the ratios as this shared machine's, not an idle "
                  "one's."]
    missed = [r for r in rows if r["speedup"] < TARGET]
    if missed:
        lines += ["", f"Target missed at batch {', '.join(str(r['batch']) for r in missed)}. A CSR product reads 8 "
                  "bytes (value + int32 column) per stored weight against 4 per dense weight, so at 90% sparsity it "
                  "moves 0.2x the dense bytes at best; as the batch grows the dense GEMM becomes compute-bound and "
                  "runs at full SIMD efficiency while the sparse one stays bound by irregular gathers, so its edge "
                  "shrinks."]
        work = {b["rows"]: _work_ratio(b) for b in backends}
        known = [r["batch"] for r in missed if r["batch"] in work]
        if known:
            lines += ["", "CPU work per layer on one thread, dense / best sparse: " + ", ".join(
                f"{work[b]:.2f}x at batch {b}" for b in known) + ". Where that is below 2x, no thread count or machine "
                "load can bring this CSR product to the target: a faster sparse kernel would be needed."]
            for r in missed:
                if r["batch"] not in work or work[r["batch"]] < TARGET:
                    continue
                slow = model_wall(meta, backends, r)
                lines += ["", f"At batch {r['batch']} the sparse layer does {1 / work[r['batch']]:.2f} of the dense "
                          f"work on one thread, and the dense model's median wall time was {slow:.1f}x the "
                          f"one-thread CPU time of its {meta['layers']} GEMMs (load {r['load'][0][0]:.1f} -> "
                          f"{r['load'][1][0]:.1f} on {v['cores']} cores while it was timed)" + (
                              ": with two threads that should be about 0.5x, so both variants spent most of their time "
                              "waiting for cores other processes held, and the ratio measures that more than the "
                              "kernels." if slow > 1.0 else
                              ". The work ratio is close to the target, and the per-call costs around the sparse "
                              "product (the transposed result made contiguous, bias, ReLU) take the rest.")]
    lines += ["", "Per-layer decisions of the pass, last batch size:", "", "```", rows[-1]["report"], "```"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = harness.script_parser(__doc__, SUITE)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--backend-rows", default="1,2,4,8,16,64")
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the machine has 2 cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    meta = harness.run_metadata("bench.sparse_mlp_cpu", argv, versions=_versions(), width=args.width,
                                layers=args.layers, reps=args.reps, warmup=args.warmup, sparsity=SPARSITY,
                                target=TARGET)
    batches = [int(b) for b in args.batches.split(",")]
    backends = _backend_rows(args.width, [int(m) for m in args.backend_rows.split(",")], args.warmup, args.reps)
    rows = _model_rows(args.width, args.layers, batches, args.warmup, args.reps)
    harness.finish_metadata(meta, start)
    files = harness.write_results(args.out, STEM, {"meta": meta, "model": rows, "backends": backends},
                                  _markdown(meta, rows, backends))
    files.append(_plot(rows, args.out))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
