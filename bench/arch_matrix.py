"""The architecture matrix: every model through capture -> prune -> w8a8-dynamic -> save/load -> ONNX Runtime.

    python -m bench.arch_matrix [--models bert,gpt2] [--timeout 600] [--jobs 2] [--resume [--rerun a,b]]
    python -m bench.arch_matrix --out bench/results --timeout 600 --jobs 2     # replace the committed result

Results go to a scratch directory unless ``--out`` is given (``bench.harness.script_parser``).

Models: ``slimgraph.testing.archs.ARCHS`` (small random configs of transformers' own classes plus plain torch
RNNs, nn.TransformerEncoder, a UNet, depthwise-separable and EmbeddingBag models). Models run one after another
in a worker subprocess (1 torch thread); a model that crashes the worker or runs past the timeout costs its own
row, recorded as such, and a fresh worker goes on with the next one. Steps and
figures per model (``slimgraph.testing.arch_pipeline.run_pipeline``):

* prune: ``sg.prune(model, args, ratio=0.5)`` (defaults: l2, local, round_to=8); the fraction of
  non-embedding parameters removed; the pruned model runs at the example shape and at another one (batch + 1,
  sequence 3/4 as long where the model takes a sequence) with unchanged output shapes;
* quantize: ``sg.quantize(pruned, args, scheme="w8a8-dynamic")``; SQNR of its outputs against the pruned float
  model at both shapes; the fraction of GEMM weight parameters in int8 (``slimgraph.quant.coverage``);
* save/load: the archive reproduces the quantized model at both shapes (max rel. error < 1e-5);
* ONNX: ``sg.export_onnx`` then onnxruntime at both shapes; SQNR against the quantized model.

Done-when targets (issue 11): prune removes >= 25% of non-embedding parameters on >= 95% of models; w8a8-dynamic
>= 20 dB SQNR with >= 90% of GEMM weights in int8 on all; ONNX runs in onnxruntime on all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.harness import script_parser
from bench.prune_common import load, md_table, meta_lines, run_meta, write_results

SUITE = "arch-matrix"  # results stem and scratch directory name
STEPS = ("capture", "prune", "quantize", "save_load", "onnx")


def worker(names: list[str]) -> None:
    """Run the pipeline on each model in turn, one RESULT line per model (imports are paid once)."""
    import torch

    torch.set_num_threads(1)
    from slimgraph.testing.arch_pipeline import run_pipeline

    for name in names:
        start = time.perf_counter()
        try:
            row = run_pipeline(name)
        except Exception as exc:  # noqa: BLE001 - the row records it; the next model still runs
            row = {"model": name, "error": f"{type(exc).__name__}: {exc}"[:400]}
        row["wall_s"] = time.perf_counter() - start
        print("RESULT " + json.dumps(row, default=str), flush=True)


def run_all(names: list[str], timeout: float, on_row=lambda row: None) -> list[dict]:
    """Models in one worker process; a model that hangs past ``timeout`` (or kills the worker) costs its own
    row, and a fresh worker takes over from the next model."""
    rows: dict[str, dict] = {}
    pending = list(names)
    while pending:
        cmd = [sys.executable, "-m", "bench.arch_matrix", "--worker", ",".join(pending)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        done = _collect(proc, pending, timeout, rows, on_row)
        if done < len(pending):  # the model at pending[done] hung or crashed the worker
            culprit = pending[done]
            rows.setdefault(culprit, {"model": culprit, "error": f"timeout after {timeout:.0f} s or worker died "
                                                                  f"(exit {proc.returncode})"})
            on_row(rows[culprit])
            done += 1
        pending = pending[done:]
    return [rows[n] for n in names]


def _collect(proc: subprocess.Popen, pending: list[str], timeout: float, rows: dict, on_row) -> int:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    done, deadline = 0, time.monotonic() + 2 * timeout  # + start-up imports (minutes on a loaded machine)
    while done < len(pending):
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(timeout=left):
            proc.kill()
            break
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("RESULT "):
            row = json.loads(line[len("RESULT "):])
            rows[row["model"]] = row
            on_row(row)
            print(f"{row['model']:>30}: {row.get('wall_s', 0):.0f} s {_errors(row)}", flush=True)
            done += 1
            deadline = time.monotonic() + timeout
    proc.wait()
    return done


def verdicts(row: dict) -> dict:
    """The done-when checks of one row (None where the step did not run)."""
    removed = row.get("nonemb_removed")
    both = ("example", "batch")
    sq = [row.get(f"sqnr_{k}_db") for k in both]
    seq = None
    if "capture_seq_ok" in row:  # sequence models: every step at another sequence length
        seq = all(bool(row.get(f"{step}_seq_ok")) for step in ("capture", "prune", "save_load", "onnx")) and \
            row.get("sqnr_seq_db") is not None
    return {
        "prune_25": removed is not None and removed >= 0.25 and all(bool(row.get(f"prune_{k}_ok")) for k in both),
        "sqnr_20": all(s is not None and s >= 20 for s in sq),
        "int8_90": (row.get("int8_gemm_fraction") or 0) >= 0.90,
        "save_load": all(bool(row.get(f"save_load_{k}_ok")) for k in both),
        "onnx": all(bool(row.get(f"onnx_{k}_ok")) for k in both),
        "other_seq": seq,
    }


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _db(v) -> str:
    return "-" if v is None else ("exact" if v == float("inf") else f"{v:.1f}")


def _errors(row: dict) -> str:
    errs = [f"{k}: {v}" for k, v in row.items() if k.endswith("error") and v]
    return " / ".join(errs).replace("|", "/").replace("\n", " ")[:300]


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__, SUITE)
    parser.add_argument("--models", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--stem", default=SUITE)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes side by side")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of the existing result that finished (no timeout), run the others")
    parser.add_argument("--rerun", default="", help="with --resume: models to run again even if they finished")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker.split(","))
        return 0
    import onnx
    import onnxruntime

    from slimgraph.testing.archs import ARCHS

    meta = run_meta("bench.arch_matrix", argv)
    meta.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    wall = time.perf_counter()
    names = [n for n in args.models.split(",") if n] or list(ARCHS)
    done: dict[str, dict] = {}
    lock = threading.Lock()
    previous = Path(args.out) / f"{args.stem}.json"
    if args.resume and previous.exists():  # rows keep the commit and command of the run that made them
        old = json.loads(previous.read_text())
        for row in old["rows"]:
            if row["model"] in names and "timeout" not in row.get("error", "") and \
                    row["model"] not in args.rerun.split(","):
                row.setdefault("run", {"commit": old["meta"]["commit"], "command": old["meta"]["command"]})
                done[row["model"]] = row
        meta["resumed_rows_from"] = sorted({(r["run"]["commit"], r["run"]["command"]) for r in done.values()})
    todo = [n for n in names if n not in done]

    def on_row(row: dict) -> None:  # results are rewritten after every model: a stopped run still leaves them
        with lock:
            row["verdicts"] = verdicts(row)
            row.setdefault("run", {"commit": meta["commit"], "command": meta["command"]})
            done[row["model"]] = row
            meta.update(load_at_end=load(), wall_s=time.perf_counter() - wall, torch_threads=1)
            render(args, meta, names, done)

    shares = [todo[i::args.jobs] for i in range(args.jobs)]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda share: run_all(share, args.timeout, on_row), shares))
    files = render(args, meta, names, done)
    print("wrote", ", ".join(map(str, files)))
    return 0


def render(args, meta: dict, names: list[str], done: dict[str, dict]) -> list:
    rows = [done[n] for n in names if n in done]
    n = len(rows)
    missing = [m for m in names if m not in done]
    count = {k: sum(1 for r in rows if r["verdicts"][k]) for k in rows[0]["verdicts"]} if rows else {}
    n_seq = sum(1 for r in rows if r["verdicts"].get("other_seq") is not None)
    table = []
    for r in rows:
        v = r["verdicts"]
        table.append([
            r["model"], r.get("family", "-"), r.get("params", "-"), _pct(r.get("nonemb_removed")),
            "yes" if v["prune_25"] else "**no**", _pct(r.get("prune_gemm_coverage")), _pct(r.get("int8_gemm_fraction")),
            _db(r.get("sqnr_example_db")), _db(r.get("sqnr_batch_db")), "yes" if v["save_load"] else "**no**",
            "yes" if v["onnx"] else "**no**", _db(r.get("onnx_batch_sqnr_db")),
            "-" if v["other_seq"] is None else ("yes" if v["other_seq"] else "**no**"),
            f"{r.get('wall_s', 0):.0f} s", _errors(r) or "; ".join(r.get("prune_blocked", [])[:2])[:200]])
    status = (f"PARTIAL: {n} of {len(names)} models done; not run: {', '.join(missing)}" if missing
              else f"complete: {n} models")
    md = [f"# Architecture matrix: capture, prune, w8a8-dynamic, save/load and ONNX Runtime ({status})", "",
          *meta_lines(meta),
          f"- onnx {meta['onnx']}, onnxruntime {meta['onnxruntime']}; 1 torch thread per worker, {args.jobs} "
          f"worker subprocess(es) side by side, {args.timeout:.0f} s timeout per model",
          *([f"- rows kept from earlier runs (`--resume`; each row's JSON names its commit and command): "
             f"{meta['resumed_rows_from']}"] if meta.get("resumed_rows_from") else []), "",
          "## Done-when targets", "",
          f"- prune removes >= 25% of non-embedding parameters (and runs at both shapes): {count.get('prune_25')}/{n}"
          f" = {_pct(count.get('prune_25', 0) / max(n, 1))} (target >= 95% of models)",
          f"- w8a8-dynamic SQNR >= 20 dB at both shapes: {count.get('sqnr_20')}/{n} (target: all)",
          f"- >= 90% of GEMM weight parameters in int8: {count.get('int8_90')}/{n} (target: all)",
          f"- archive reproduces the quantized model at both shapes: {count.get('save_load')}/{n}",
          f"- ONNX export runs in onnxruntime at both shapes: {count.get('onnx')}/{n} (target: all)",
          f"- sequence models: every step also at another sequence length: {count.get('other_seq')}/{n_seq}", "",
          "## Every model", "",
          "Shapes: the example input and batch + 1; for sequence models also a sequence 3/4 as long (column "
          "'other seq. length'). SQNR of the quantized model is against the pruned float model; ONNX SQNR against "
          "the quantized model.", "",
          *md_table(["model", "family", "params", "non-emb. removed", ">=25% & runs", "GEMM params in prunable group",
                     "GEMM params int8", "SQNR dB", "SQNR dB (batch+1)", "save/load", "ONNX Runtime",
                     "ONNX SQNR dB (batch+1)", "other seq. length", "wall", "errors, else why groups stayed"],
                    table), ""]
    payload = {"meta": meta, "counts": count, "models": n, "not_run": missing, "rows": rows}
    return write_results(args.out, args.stem, payload, md)


if __name__ == "__main__":
    raise SystemExit(main())
