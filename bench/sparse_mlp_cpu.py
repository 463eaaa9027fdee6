"""CPU benchmark: a 90%-sparse MLP, dense vs ``sg.sparsify`` + lowering, on the 2-core development machine.

    python -m bench.sparse_mlp_cpu [--width 4096] [--layers 3] [--batches 1,8,64] [--reps 25] [--out bench/results]

Model: ``layers`` x Linear(width, width) with ReLU between, random weights, fp32, ``torch.set_num_threads(--threads)``
(default 2, the machine's cores).
For every batch size the model is sparsified at 90% (unstructured, global l1, ``lower="auto"``: each layer is lowered
to ``slimgraph::sparse_linear`` only if the pass measures it faster at that batch) and timed against the captured dense
graph: ``--warmup`` calls each, then ``--reps`` rounds alternating dense, sparse (ABAB...), so load from other
processes on the shared machine hits both alike; median and interquartile range per variant.

A second table times one width x width layer per backend (dense ``F.linear``, torch CSR, scipy CSR) at more row
counts, interleaved the same way: it is the measurement behind ``SCIPY_MAX_ROWS`` in slimgraph/ops/sparse_linear.py.
Target (issue 13): sparse >= 2x faster than dense.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.prune_common import md_table, save_figure
from bench.run_meta import describe_commit

TARGET = 2.0
SPARSITY = 0.9
STEM = "sparse-mlp-cpu"


def _mlp(width: int, layers: int) -> torch.nn.Module:
    torch.manual_seed(0)
    mods = []
    for i in range(layers):
        mods.append(torch.nn.Linear(width, width))
        if i < layers - 1:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods).eval()


def _interleaved(fns: dict, warmup: int, reps: int) -> dict[str, list[float]]:
    """Milliseconds per call of every function, measured in alternating rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        for _ in range(reps):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _stats(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=4)
    return {"median_ms": statistics.median(ms), "q1_ms": q[0], "q3_ms": q[2], "iqr_ms": q[2] - q[0],
            "min_ms": min(ms)}


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
        times = _interleaved({"dense": partial(dense, x), "sparse": partial(sparse, x)}, warmup, reps)
        d, s = _stats(times["dense"]), _stats(times["sparse"])
        rows.append({"batch": batch, "dense": d, "sparse": s, "speedup": d["median_ms"] / s["median_ms"],
                     "sparsity": report.sparsity, "lowered": f"{len(report.lowered)}/{len(report.layers)}",
                     "sparsify_s": sparsify_s, "report": report.table()})
        print(f"batch {batch}: dense {d['median_ms']:.2f} ms, sparse {s['median_ms']:.2f} ms "
              f"({rows[-1]['speedup']:.2f}x), lowered {rows[-1]['lowered']}", flush=True)
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
        times = _interleaved({"dense": partial(F.linear, x, w), "torch-csr": partial(_torch_rows, x, *parts),
                              "scipy-csr": partial(_scipy_rows, x, *parts),
                              "scipy-csr-1t": partial(_one_thread, _scipy_rows, x, *parts)}, warmup, reps)
        cpu = _cpu_ms({"dense": partial(F.linear, x, w), "torch-csr": partial(_torch_rows, x, *parts),
                       "scipy-csr": partial(_scipy_rows, x, *parts)}, reps=5)
        rows.append({"rows": m, **{k: _stats(v) for k, v in times.items()}, "cpu_ms_1t": cpu})
        print(f"rows {m}: " + ", ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in times.items()), flush=True)
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


def _plot(rows, out: Path) -> str:
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
        ax.text(p + 0.2, r["sparse"]["median_ms"], f"{r['speedup']:.2f}x", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(pos), [f"batch {r['batch']}" for r in rows])
    ax.set_ylabel("ms per forward (median, IQR bars)")
    ax.set_title(f"{SPARSITY:.0%}-sparse MLP on CPU: dense vs sparsify + lowering")
    ax.legend()
    return save_figure(fig, out, STEM)


def _work_ratio(backend_row: dict) -> float:
    cpu = backend_row["cpu_ms_1t"]
    return cpu["dense"] / min(cpu["torch-csr"], cpu["scipy-csr"])


def _markdown(meta, rows, backends) -> str:
    v = meta["versions"]
    lines = [f"# {SPARSITY:.0%}-sparse MLP on CPU: dense vs sparsified + lowered", "",
             f"Command: `{meta['command']}`", "",
             f"{v['cpu']}, {v['cores']} cores, `torch.set_num_threads({v['threads']})`; torch {v['torch']} (MKL "
             f"{v['mkl']}), scipy {v['scipy']}, numpy {v['numpy']}, python {v['python']}; commit {meta['commit']}. "
             f"Model: {meta['layers']} x Linear({meta['width']}, {meta['width']}) + ReLU, fp32. {meta['reps']} "
             f"interleaved rounds (dense, sparse, dense, ...) after {meta['warmup']} warm-up calls each. Load average "
             f"(1 min) {meta['load_before']:.2f} before, {meta['load_after']:.2f} after: the machine is shared.", ""]
    lines += md_table(["batch", "dense ms median (IQR)", "sparse ms median (IQR)", "speedup", f"target {TARGET:g}x",
                       "fastest-call speedup", "layers lowered", "sparsity"],
                          [[r["batch"], f"{r['dense']['median_ms']:.2f} ({r['dense']['iqr_ms']:.2f})",
                            f"{r['sparse']['median_ms']:.2f} ({r['sparse']['iqr_ms']:.2f})", f"{r['speedup']:.2f}x",
                            "met" if r["speedup"] >= TARGET else f"missed by {TARGET / r['speedup']:.2f}x",
                            f"{r['dense']['min_ms'] / r['sparse']['min_ms']:.2f}x",
                            r["lowered"], f"{r['sparsity']:.2%}"] for r in rows])
    lines += ["", "One layer per backend (ms median, interleaved; what `SCIPY_MAX_ROWS` in "
              "slimgraph/ops/sparse_linear.py rests on):", ""]
    lines += md_table(["rows", "dense F.linear", "torch CSR", "scipy CSR (row blocks on every thread)",
                       "scipy CSR, 1 thread"],
                      [[b["rows"], *(f"{b[k]['median_ms']:.3f}" for k in ("dense", "torch-csr", "scipy-csr",
                                                                          "scipy-csr-1t"))]
                       for b in backends])
    lines += ["", "CPU time per call on one thread (process time, ms; what each backend has to compute, which the "
              "machine's load barely changes):", ""]
    lines += md_table(["rows", "dense F.linear", "torch CSR", "scipy CSR", "dense / best sparse"],
                      [[b["rows"], *(f"{b['cpu_ms_1t'][k]:.3f}" for k in ("dense", "torch-csr", "scipy-csr")),
                        f"{_work_ratio(b):.2f}x"] for b in backends])
    lines += ["", "Fastest-call speedup: the ratio of the two variants' fastest calls, which other processes on the "
              "shared machine disturb least (the median is the headline)."]
    if max(meta["load_before"], meta["load_after"]) > int(v["cores"]):
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
    lines += ["", "Per-layer decisions of the pass, last batch size:", "", "```", rows[-1]["report"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--backend-rows", default="1,2,4,8,16,64")
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the machine has 2 cores)")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in args.batches.split(",")]
    load_before = os.getloadavg()[0]
    backends = _backend_rows(args.width, [int(m) for m in args.backend_rows.split(",")], args.warmup, args.reps)
    rows = _model_rows(args.width, args.layers, batches, args.warmup, args.reps)
    meta = {"command": " ".join(["python -m bench.sparse_mlp_cpu", *(argv or [])]),
            "commit": describe_commit(), "versions": _versions(), "width": args.width, "layers": args.layers,
            "reps": args.reps, "warmup": args.warmup, "sparsity": SPARSITY, "target": TARGET,
            "load_before": load_before, "load_after": os.getloadavg()[0]}
    (out / f"{STEM}.json").write_text(json.dumps({"meta": meta, "model": rows, "backends": backends}, indent=1))
    (out / f"{STEM}.md").write_text(_markdown(meta, rows, backends))
    _plot(rows, out)
    print(f"wrote {out / STEM}.json/.md/.png")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
