"""digits-cnn (trained on scikit-learn's bundled 8x8 digits): top-1 accuracy of each int8 scheme vs float, CPU
latency and file sizes.

    python -m bench.quant_digits [--quick] [--rounds 200] [--out bench/results]   (default: a scratch directory)

Calibration uses training images only; accuracy is on the held-out 20% split. Latency: all configurations timed
together by the harness's interleaved timing (median and IQR per row, the ratio to float with its spread).
Target: w8a8 loses <= 0.5 point. Writes quant-digits.{json,md,png} (``--quick``: quant-digits-quick.*).
"""

from __future__ import annotations

import time

import torch

from bench import harness
from bench.quant_minilm import add_latency, quantized_rows

SUITE = "quant-digits"
TARGET_DROP_POINTS = 0.5
CONFIGS = {
    "w8a8 static (minmax)": ("w8a8", {}),
    "w8a8 static (percentile 99.99)": ("w8a8", {"observer": "percentile"}),
    "w8a8 static (mse)": ("w8a8", {"observer": "mse"}),
    "w8a8-dynamic": ("w8a8-dynamic", {}),
    "w8a16": ("w8a16", {}),
}
QUICK_CONFIGS = ("w8a8 static (minmax)", "w8a16")


def main(argv: list[str] | None = None) -> int:
    parser = harness.script_parser(__doc__, SUITE, rounds=200, quick=f"{', '.join(QUICK_CONFIGS)} only, 20 timing "
                                   "rounds")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    meta = harness.run_metadata("bench.quant_digits", argv)
    torch.manual_seed(0)

    from slimgraph.demos.digits import accuracy, digits_data, trained_digits_cnn

    configs = {k: v for k, v in CONFIGS.items() if not args.quick or k in QUICK_CONFIGS}
    model = trained_digits_cnn()
    x_train, _, x_test, y_test = digits_data()
    calib = [(x_train[i:i + 64],) for i in range(0, 8 * 64, 64)]
    batch = (x_test[:64],)
    base = accuracy(model, x_test, y_test)

    def evaluate(module) -> dict:
        acc = accuracy(module, x_test, y_test)
        return {"accuracy": acc, "drop_points": base - acc}

    rows = quantized_rows(model, batch, configs, calib, evaluate, float_pipeline="fold-bn,fuse")
    run = add_latency(rows, batch, 20 if args.quick else args.rounds)
    harness.finish_metadata(meta, start)
    w8a8_drops = [r["drop_points"] for r in rows if r.get("scheme") == "w8a8"]
    worst = max(w8a8_drops) if w8a8_drops else None
    result = {"benchmark": SUITE, "model": "digits-cnn (3 conv + 2 linear, trained on sklearn digits)",
              "test_images": len(x_test), "calibration": "8 x 64 training images",
              "latency_batch": list(batch[0].shape),
              "target": {"text": f"w8a8 drop <= {TARGET_DROP_POINTS} point", "measured_worst_drop": worst,
                         "met": None if worst is None else worst <= TARGET_DROP_POINTS},
              "meta": meta, "timing": run, "rows": rows}
    stem = SUITE + ("-quick" if args.quick else "")
    files = harness.write_results(args.out, stem, result, markdown(result, run))
    files.append(harness.scatter_chart(
        args.out, stem, {r["name"]: (r["latency_ms"], r["accuracy"]) for r in rows},
        xlabel=f"CPU latency of one {list(batch[0].shape)} batch (ms, median)",
        ylabel="top-1 accuracy on the test split (%)", title="digits CNN int8: accuracy vs latency"))
    print("\n".join(markdown(result, run)))
    print("wrote", ", ".join(map(str, files)))
    return 0


def markdown(result: dict, run: harness.TimingRun) -> list[str]:
    rows = []
    for r in result["rows"]:
        layers = f"{r['int8_layers']}/{r['layers']}" if "layers" in r else "-"
        rows.append([r["name"], f"{r['accuracy']:.2f}", f"{r['drop_points']:+.2f}", layers,
                     f"{r['latency_ms']:.2f} ({r['latency_q1_ms']:.2f}-{r['latency_q3_ms']:.2f})", r["vs_float"],
                     f"{r['file_mb'] * 1024:.1f}"])
    target = result["target"]
    worst = "-" if target["measured_worst_drop"] is None else f"{target['measured_worst_drop']:+.2f} points"
    return [f"# {result['benchmark']}: {result['model']}", "", *harness.meta_lines(result["meta"]),
            f"- test images: {result['test_images']}; calibration: {result['calibration']}",
            f"- latency of one {result['latency_batch']} batch on CPU: {run.conditions()}", "",
            *harness.md_table(["configuration", "top-1 %", "drop (points)", "int8 layers", "latency ms (IQR)",
                               "vs float", "file KB"], rows), "",
            harness.target_line("w8a8 accuracy drop (worst w8a8 row)", worst, f"<= {TARGET_DROP_POINTS} point",
                                target["met"])]


if __name__ == "__main__":
    raise SystemExit(main())
