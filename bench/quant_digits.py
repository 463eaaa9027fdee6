"""digits-cnn (trained on scikit-learn's bundled 8x8 digits): top-1 accuracy of each int8 scheme vs float, CPU
latency and file sizes.

    python bench/quant_digits.py            # writes bench/results/quant-digits.{json,md}

Calibration uses training images only; accuracy is on the held-out 20% split. Target: w8a8 loses <= 0.5 point.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from quant_minilm import environment, interleaved_latency_ms, sg_file_mb  # noqa: E402 - shared measurement helpers

import slimgraph as sg  # noqa: E402
from slimgraph.demos.digits import accuracy, digits_data, trained_digits_cnn  # noqa: E402
from slimgraph.quant import last_report, quantize  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CONFIGS = {
    "w8a8 static (minmax)": ("w8a8", {}),
    "w8a8 static (percentile 99.99)": ("w8a8", {"observer": "percentile"}),
    "w8a8 static (mse)": ("w8a8", {"observer": "mse"}),
    "w8a8-dynamic": ("w8a8-dynamic", {}),
    "w8a16": ("w8a16", {}),
}


def main() -> dict:
    torch.manual_seed(0)
    model = trained_digits_cnn()
    x_train, _, x_test, y_test = digits_data()
    calib = [(x_train[i:i + 64],) for i in range(0, 8 * 64, 64)]
    batch = (x_test[:64],)
    float_gm = sg.optimize(model, batch, "fold-bn,fuse")
    base = accuracy(model, x_test, y_test)
    modules = {"float": model}
    rows = [{"name": "float", "accuracy": base, "drop_points": 0.0, "file_kb": sg_file_mb(float_gm) * 1024}]
    for name, (scheme, options) in CONFIGS.items():
        start = time.perf_counter()
        q = quantize(model, batch, scheme, calib=calib, progress=False, **options)
        seconds = time.perf_counter() - start
        acc = accuracy(q, x_test, y_test)
        report = last_report(q)
        rows.append({"name": name, "scheme": scheme, "options": options, "accuracy": acc, "drop_points": base - acc,
                     "int8_layers": len(report.quantized), "layers": len(report.layers), "quantize_s": seconds,
                     "file_kb": sg_file_mb(q) * 1024})
        modules[name] = q
    latency = interleaved_latency_ms(modules, batch, rounds=200)
    for r in rows:
        r["latency_ms"] = latency[r["name"]]
    return {"benchmark": "quant-digits", "model": "digits-cnn (3 conv + 2 linear, trained on sklearn digits)",
            "test_images": len(x_test), "calibration": "8 x 64 training images", "latency_batch": list(batch[0].shape),
            "target": "w8a8 drop <= 0.5 point", "environment": environment(), "rows": rows}


def markdown(result: dict) -> str:
    lines = [f"# {result['benchmark']}: {result['model']}", "",
             f"Test images: {result['test_images']}; calibration: {result['calibration']}; latency: best of 200 "
             f"interleaved forwards of one {result['latency_batch']} batch on CPU (torch reference ops).", "",
             "| configuration | top-1 % | drop (points) | int8 layers | latency ms | file KB |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        layers = f"{r['int8_layers']}/{r['layers']}" if "layers" in r else "-"
        lines.append(f"| {r['name']} | {r['accuracy']:.2f} | {r['drop_points']:+.2f} | {layers} | "
                     f"{r['latency_ms']:.2f} | {r['file_kb']:.1f} |")
    lines += ["", f"Target: {result['target']}", "",
              "Environment: " + ", ".join(f"{k} {v}" for k, v in result["environment"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    result = main()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quant-digits.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "quant-digits.md").write_text(markdown(result))
    print(markdown(result))
