"""What the least-squares refit does right after pruning all-MiniLM-L6-v2 (no distillation).

    python -m bench.prune_minilm_refit [--out bench/results]

Prunes the real encoder like bench/prune_minilm.py (50% of FFN neurons, 25% of heads, ``act`` importance on
calibration train sentences) with and without ``reconstruct=True``, at 128 and 640 calibration sentences, plus
global scope, and reports the mean/min cosine of the held-out embeddings to the unpruned model's, the
calibration-set output error of the refit layers (sliced vs refit) and the time to prune.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench import harness
from bench import prune_common as common

SUITE = "prune-minilm-refit"  # results stem and scratch directory name

SETTINGS = [  # (calibration sentences, reconstruct, scope)
    (128, False, "local"),
    (128, True, "local"),
    (640, False, "local"),
    (640, True, "local"),
    (640, True, "global"),
]


def main(argv: list[str] | None = None) -> int:
    parser = harness.script_parser(__doc__, SUITE)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    meta = common.run_meta("bench.prune_minilm_refit", argv)
    wall = time.perf_counter()
    torch.set_num_threads(args.threads)

    import slimgraph as sg
    from slimgraph.demos.minilm import fidelity_evaluator, load_encoder, load_tokenizer, text_batches

    tokenizer = load_tokenizer()
    teacher = load_encoder()
    evaluate = fidelity_evaluator(teacher, text_batches("heldout", 32, tokenizer=tokenizer))
    example = text_batches("train", 32, limit=32, tokenizer=tokenizer)[0]
    results = []
    for n_calib, reconstruct, scope in SETTINGS:
        calib = text_batches("train", 32, limit=n_calib, tokenizer=tokenizer)
        start = time.perf_counter()
        pruned = sg.prune(teacher, example, ratio=0.5, ratios={"heads": 0.25}, importance="act", calib=calib,
                          reconstruct=reconstruct, scope=scope)
        seconds = time.perf_counter() - start
        report = sg.prune_report(pruned)
        refit = report.reconstructed
        row = {"calib_sentences": n_calib, "reconstruct": reconstruct, "scope": scope, "prune_s": seconds,
               **evaluate(pruned), "macs_after": report.macs_after,
               "layer_error_sliced": float(np.mean([r.error_sliced for r in refit])) if refit else None,
               "layer_error_refit": float(np.mean([r.error_reconstructed for r in refit])) if refit else None}
        results.append(row)
        print(row, flush=True)
    harness.finish_metadata(meta, wall)
    meta.update(threads=args.threads)

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    table = [[r["calib_sentences"], "yes" if r["reconstruct"] else "no", r["scope"],
              f"{r['cosine_mean']:.4f} / {r['cosine_min']:.4f}", pct(r["layer_error_sliced"]),
              pct(r["layer_error_refit"]), f"{r['prune_s']:.1f} s"] for r in results]
    md = ["# all-MiniLM-L6-v2 right after pruning (FFN 50%, heads 25%, act): least-squares refit or not", "",
          *harness.meta_lines(meta),
          "- held-out cosine: 210 sentences never used for calibration, vs the unpruned model; no distillation",
          "- layer error: relative output error of the refit linear layers on the calibration data, mean over "
          "the 12 layers (sliced = plain pruning, refit = after the least-squares refit)", "",
          *harness.md_table(["calibration sentences", "refit", "scope", "held-out cosine mean / min",
                             "layer error sliced", "layer error refit", "time to prune"], table), ""]
    files = harness.write_results(args.out, SUITE, {"meta": meta, "results": results}, md)
    files.append(plot(args.out, results))
    print("\n".join(md))
    print("wrote " + ", ".join(map(str, files)))
    return 0


def plot(out, results: list[dict]):
    """Held-out cosine (mean and worst sentence) per setting; also drawn from a committed JSON's "results"."""
    labels = [f"{r['calib_sentences']} sentences, {'refit' if r['reconstruct'] else 'sliced'}, {r['scope']}"
              for r in results]
    return harness.bar_chart(
        out, SUITE, {"mean": {lab: r["cosine_mean"] for lab, r in zip(labels, results)},
                     "worst sentence": {lab: r["cosine_min"] for lab, r in zip(labels, results)}},
        ylabel="held-out cosine to the unpruned model", title="MiniLM right after pruning: least-squares refit or not")


if __name__ == "__main__":
    raise SystemExit(main())
