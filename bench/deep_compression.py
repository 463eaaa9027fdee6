"""Deep Compression end to end: prune -> retrain keeping the pattern -> share weights (k-means) + fine-tune
centroids -> entropy-coded archive, on the paper's LeNets (sklearn digits) and on all-MiniLM-L6-v2.

    python -m bench.deep_compression [--out bench/results] [--models lenet300,lenet5,minilm] [--quick]
    (default: a scratch directory)

Digits: scikit-learn's bundled 8x8 digits upsampled (bilinear) to 28x28 like MNIST, 80/20 train/held-out
split (``slimgraph.demos.digits.digits_data``). Models: LeNet-300-100 (784-300-100-10) and Caffe's LeNet-5
(conv 20@5x5, pool, conv 50@5x5, pool, fc 500, fc 10). Per model:

1. train the fp32 baseline (cross-entropy);
2. ``sg.sparsify(..., pattern="unstructured", scope="global", importance="l1", lower="off")``, iteratively
   (80% -> 90% -> 95% by default), each step followed by
3. retraining with the pattern kept: ``sg.distill`` from the baseline with the labels mixed in (zeros stay zero);
4. ``sg.share_weights(bits=5, conv_bits=8, data=...)``: k-means codebooks + centroid fine-tuning;
5. ``sg.save(..., compress=True)``, reloaded with ``sg.load`` and evaluated from the file.

Sizes are whole archive FILES (graph, metadata and example inputs included) from ``sg.save``; the ratio is
against the fp32 archive of the baseline. Breakdown columns: dense (plain fp32 archive) -> pruned (pruned and
retrained, entropy-coded archive) -> shared (fixed-width uint8 codes, plain archive) -> coded (shared,
entropy-coded: the deliverable). A sweep over code widths gives the size-vs-accuracy curve.

MiniLM: codebooks for every linear layer and the embedding tables at several widths (optionally after
pruning), held-out embedding cosine to the original model vs the compressed archive's size, the headline
configuration with a short centroid fine-tuning by cosine distillation on the training text.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import slimgraph as sg
from bench.harness import (
    figure,
    finish_metadata,
    md_table,
    meta_lines,
    run_metadata,
    save_figure,
    script_parser,
    target_line,
    write_results,
)
from bench.prune_digits import labelled_batches
from slimgraph.demos.digits import accuracy, digits_data, train
from slimgraph.share import last_report

STEM = "deep-compression"
TARGETS = {"lenet300": 40.0, "lenet5": 39.0}  # the paper's ratios (weights only there; whole file here)
MAX_DROP_POINTS = 0.5
MINILM_RATIO, MINILM_COSINE = 8.0, 0.98


class LeNet300(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


class LeNet5(nn.Module):
    """Caffe's LeNet-5 variant the paper used: 431k parameters."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.fc1, self.fc2 = nn.Linear(800, 500), nn.Linear(500, 10)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


MODELS = {"lenet300": LeNet300, "lenet5": LeNet5}


def digits28(seed: int = 0):
    x_train, y_train, x_test, y_test = digits_data(seed)
    up = lambda x: F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(min=0)
    return up(x_train), y_train, up(x_test), y_test


def archive_bytes(model: nn.Module, workdir: Path, name: str, compress: bool) -> tuple[int, Path]:
    path = workdir / f"{name}{'-coded' if compress else ''}.sg"
    sg.save(model, path, compress=compress)
    return path.stat().st_size, path


def zeros_kept(before: nn.Module, after: nn.Module) -> bool:
    return all(torch.equal(before.get_parameter(w) == 0, after.get_parameter(w) == 0)
               for w in sg.graph_info(before).sparsity)


def run_lenet(name: str, args, workdir: Path) -> dict:
    x_train, y_train, x_test, y_test = digits28()
    torch.manual_seed(0)
    timings = {}
    t0 = time.perf_counter()
    model = train(MODELS[name](), x_train, y_train, epochs=args.epochs)
    timings["train_s"] = time.perf_counter() - t0
    example = (x_test[:1],)
    dense = sg.optimize(model, example, pipeline="")
    acc = lambda m: accuracy(m, x_test, y_test)
    batches = labelled_batches(x_train, y_train, 64, epochs=max(1, args.retrain_steps * 64 // len(x_train) + 1))
    stages = {"dense": {"accuracy": acc(dense), "bytes": archive_bytes(dense, workdir, name, False)[0],
                        "bytes_coded": archive_bytes(dense, workdir, name, True)[0]}}
    schedule = args.sparsity[name]
    sparsity = schedule[-1]
    t0 = time.perf_counter()
    retrained = dense
    for step_sparsity in schedule:  # iterative pruning, as the paper: prune, retrain, prune further, retrain
        pruned = sg.sparsify(retrained, sparsity=step_sparsity, pattern="unstructured", scope="global",
                             importance="l1", lower="off")
        stages["pruned_no_retrain"] = {"accuracy": acc(pruned)}
        retrained = sg.distill(pruned, dense, batches, steps=args.retrain_steps, lr=args.lr, temperature=4.0,
                               alpha=0.5, weight_decay=0.0, progress=False)
        print(f"{name}: pruned to {step_sparsity:.0%}: {stages['pruned_no_retrain']['accuracy']:.2f}%, retrained "
              f"{acc(retrained):.2f}%", flush=True)
    timings["prune_retrain_s"] = time.perf_counter() - t0
    stages["pruned"] = {"accuracy": acc(retrained), "bytes": archive_bytes(retrained, workdir, f"{name}-pruned",
                                                                           True)[0],
                        "zeros_kept": zeros_kept(pruned, retrained),
                        "layers": {r.name: round(r.sparsity, 4) for r in sg.sparse.last_report(pruned).layers}}
    t0 = time.perf_counter()
    shared = sg.share_weights(retrained, bits=args.bits, conv_bits=args.conv_bits, data=batches,
                              steps=args.share_steps, lr=args.share_lr, temperature=4.0)
    timings["share_s"] = time.perf_counter() - t0
    report = last_report(shared)
    coded_size, coded_path = archive_bytes(shared, workdir, f"{name}-shared", True)
    loaded = sg.load(coded_path)
    stages["shared"] = {"accuracy": acc(shared), "bytes": archive_bytes(shared, workdir, f"{name}-shared", False)[0],
                        "layers": [{"name": r.name, "bits": r.bits, "used": r.used, "rel_error": r.rel_error,
                                    "zeros": r.zeros, "numel": r.numel} for r in report.layers]}
    stages["coded"] = {"accuracy": acc(loaded), "bytes": coded_size,
                       "loaded_equals_shared": bool(torch.equal(loaded(x_test[:64]), shared(x_test[:64])))}
    curve = [{"label": "dense fp32", "bytes": stages["dense"]["bytes"], "accuracy": stages["dense"]["accuracy"]},
             {"label": f"pruned {sparsity:.0%}", "bytes": stages["pruned"]["bytes"],
              "accuracy": stages["pruned"]["accuracy"]},
             {"label": f"shared {args.bits}/{args.conv_bits} bit + coded", "bytes": coded_size,
              "accuracy": stages["coded"]["accuracy"]}]
    for bits in args.sweep_bits:  # the curve: other code widths on the same retrained pruned model
        swept = sg.share_weights(retrained, bits=bits, conv_bits=max(bits, 4), data=batches,
                                 steps=args.share_steps, lr=args.share_lr, temperature=4.0)
        curve.append({"label": f"shared {bits}/{max(bits, 4)} bit + coded",
                      "bytes": archive_bytes(swept, workdir, f"{name}-sweep{bits}", True)[0],
                      "accuracy": acc(swept)})
    dense_bytes = stages["dense"]["bytes"]
    return {"model": name, "params": sum(p.numel() for p in model.parameters()), "sparsity": sparsity,
            "stages": stages, "curve": curve, "timings_s": timings,
            "ratio": dense_bytes / coded_size, "drop_points": stages["dense"]["accuracy"] - stages["coded"]["accuracy"],
            "heldout_images": len(x_test)}


# ------------------------------------------------------------------------------------------------- MiniLM


def run_minilm(args, workdir: Path) -> dict:
    from slimgraph.demos.minilm import embed, load_encoder, load_tokenizer, text_batches

    tokenizer = load_tokenizer()
    example = text_batches("train", batch_size=2, limit=2, tokenizer=tokenizer)[0]
    heldout = text_batches("heldout", batch_size=32, tokenizer=tokenizer)
    train_batches = text_batches("train", batch_size=16, tokenizer=tokenizer)
    model = load_encoder()
    dense = sg.optimize(model, example, pipeline="")
    reference = embed(dense, heldout)

    def cosine(m) -> tuple[float, float]:
        cos = F.cosine_similarity(embed(m, heldout), reference, dim=-1)
        return cos.mean().item(), cos.min().item()

    dense_bytes = archive_bytes(dense, workdir, "minilm", False)[0]
    rows = []
    allocation = None
    if any(cfg["mean_bits"] for cfg in args.minilm_configs):  # probe once; every mean rate re-balances the same
        t0 = time.perf_counter()
        allocation = sg.share.allocate_bits(dense, train_batches, mean_bits=4.0)
        print(f"sensitivity probes: {time.perf_counter() - t0:.0f} s", flush=True)
    for cfg in args.minilm_configs:
        t0 = time.perf_counter()
        sparsity, steps = cfg["sparsity"], cfg["steps"]
        base = dense if not sparsity else sg.sparsify(dense, sparsity=sparsity, scope="local", lower="off")
        data = train_batches if steps else None
        alloc = allocation.at(cfg["mean_bits"]) if cfg["mean_bits"] else None
        if alloc is not None:  # = share_weights(quantizer="uniform", mean_bits=...), without probing again
            options = {"quantizer": "uniform", "per_layer": alloc.bits}
        else:
            options = {"quantizer": cfg["quantizer"], "bits": cfg["bits"],
                       "per_layer": {"embedding": cfg["embedding_bits"]}}
        shared = sg.share_weights(base, data=data, steps=steps, output_loss="cosine", lr=args.minilm_lr,
                                  temperature=1.0, **options)
        size = archive_bytes(shared, workdir, f"minilm-{len(rows)}", True)[0]
        report = last_report(shared)
        entropy_bytes = sum(r.entropy * r.numel for r in report.shared) / 8
        emb = next((r for r in report.shared if r.kind == "embedding" and r.numel > 10**6), None)
        mean, worst = cosine(shared)
        rows.append({"sparsity": sparsity, "quantizer": cfg["quantizer"], "mean_bits": cfg["mean_bits"],
                     "bits": cfg["bits"], "embedding_bits": cfg["embedding_bits"], "finetune_steps": steps,
                     "bytes": size, "ratio": dense_bytes / size, "cosine_mean": mean, "cosine_min": worst,
                     "code_entropy_bits": sum(r.entropy * r.numel for r in report.shared) /
                     max(1, sum(r.numel for r in report.shared)),
                     "word_embedding_entropy_bits": emb.entropy if emb else None,
                     "codes_entropy_bytes": entropy_bytes, "seconds": time.perf_counter() - t0,
                     "layers": [{"name": r.name, "bits": r.bits, "entropy": r.entropy, "rel_error": r.rel_error,
                                 "numel": r.numel} for r in report.shared]})
        print(f"minilm {_label(rows[-1])}: {size / 1e6:.2f} MB ({dense_bytes / size:.2f}x; codes at their entropy "
              f"{entropy_bytes / 1e6:.2f} MB), cosine {mean:.4f} (min {worst:.4f}) [{rows[-1]['seconds']:.0f} s]",
              flush=True)
        if alloc is not None:
            print(alloc, flush=True)
    return {"model": "all-MiniLM-L6-v2", "params": sum(p.numel() for p in model.parameters()),
            "dense_bytes": dense_bytes, "heldout_sentences": int(reference.shape[0]), "rows": rows,
            "sensitivity": allocation.sensitivity if allocation else None}


# ----------------------------------------------------------------------------------------------- reporting


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


def markdown(meta: dict, lenets: list[dict], minilm: dict | None, earlier: list[dict] = ()) -> list[str]:
    lines = ["# Deep Compression: prune, retrain, share, entropy-code", "", *meta_lines(meta), ""]
    for run in earlier:
        lines += ["Earlier rows of the table come from this run (`--append`):", "", *meta_lines(run), ""]
    if lenets:
        lines += ["## LeNets on sklearn digits (28x28 upsampled), whole archive files", ""]
        rows = []
        for r in lenets:
            s = r["stages"]
            rows.append([r["model"], r["params"], f"{r['sparsity']:.0%}",
                         f"{_kb(s['dense']['bytes'])} / {s['dense']['accuracy']:.2f}%",
                         f"{_kb(s['pruned']['bytes'])} / {s['pruned']['accuracy']:.2f}%",
                         f"{_kb(s['shared']['bytes'])} / {s['shared']['accuracy']:.2f}%",
                         f"{_kb(s['coded']['bytes'])} / {s['coded']['accuracy']:.2f}%",
                         f"{r['ratio']:.1f}x", f"{r['drop_points']:+.2f}"])
        lines += md_table(["model", "params", "sparsity", "dense fp32", "pruned+retrained (coded)",
                           "shared (uint8 codes)", "shared+coded (loaded from file)", "ratio", "acc drop (pt)"],
                          rows)
        lines += ["", "Cells: archive file size / held-out accuracy. The coded accuracy is measured on the model "
                  "loaded back from the compressed archive.", ""]
        for r in lenets:
            met = r["ratio"] >= TARGETS[r["model"]] and r["drop_points"] <= MAX_DROP_POINTS
            lines.append(target_line(r["model"], f"{r['ratio']:.1f}x, drop {r['drop_points']:.2f} pt",
                                     f">= {TARGETS[r['model']]:.0f}x, drop <= {MAX_DROP_POINTS} pt", met))
        lines.append("")
        for r in lenets:
            lines += [f"### {r['model']}: per layer", ""]
            pruned = r["stages"]["pruned"]["layers"]
            lines += md_table(["layer", "sparsity", "bits", "centroids used", "k-means rel error"],
                              [[x["name"], f"{pruned.get(x['name'], 0):.1%}", x["bits"], x["used"],
                                f"{x['rel_error']:.3e}"] for x in r["stages"]["shared"]["layers"]])
            lines += ["", "Size vs accuracy:", ""]
            lines += md_table(["configuration", "archive", "accuracy"],
                              [[c["label"], _kb(c["bytes"]), f"{c['accuracy']:.2f}%"] for c in r["curve"]])
            lines += ["", f"Timings: {', '.join(f'{k} {v:.1f}' for k, v in r['timings_s'].items())}; pattern kept "
                      f"through retraining: {r['stages']['pruned']['zeros_kept']}; loaded archive reproduces the "
                      f"shared model bit for bit: {r['stages']['coded']['loaded_equals_shared']}.", ""]
    if minilm:
        lines += ["## all-MiniLM-L6-v2 (held-out sentence embeddings vs the original model)", "",
                  f"fp32 archive: {minilm['dense_bytes'] / 1e6:.2f} MB; {minilm['heldout_sentences']} held-out "
                  "sentences.", ""]
        lines += md_table(["configuration", "archive", "ratio", "code entropy (bits/weight, all / word emb.)",
                           "codes at entropy", "cosine mean", "cosine min"],
                          [[_label(r), f"{r['bytes'] / 1e6:.2f} MB", f"{r['ratio']:.2f}x",
                            f"{r['code_entropy_bits']:.3f} / {r['word_embedding_entropy_bits']:.3f}",
                            f"{r['codes_entropy_bytes'] / 1e6:.2f} MB", f"{r['cosine_mean']:.4f}",
                            f"{r['cosine_min']:.4f}"] for r in minilm["rows"]])
        lines += ["", "Archive: the whole `sg.save(..., compress=True)` file (graph, codebooks, LayerNorms, biases, "
                  "example inputs). \"Codes at entropy\" is what an ideal coder would spend on the code tensors "
                  "alone (sum of numel x empirical entropy), to check the Huffman coder against. Cosine: held-out "
                  "sentences (never used for calibration, allocation or fine-tuning) vs the fp32 model.", ""]
        allocated = [r for r in minilm["rows"] if r["mean_bits"] and r["cosine_mean"] >= MINILM_COSINE]
        if allocated:
            head = max(allocated, key=lambda r: r["ratio"])
            sens = minilm.get("sensitivity") or {}
            lines += [f"Per-layer rates of \"{_label(head)}\" (sensitivity: relative squared output error on 4 "
                      "training batches with only that layer quantized at 3 bits; rates by reverse water-filling, "
                      "`slimgraph.share.allocate_bits`):", ""]
            lines += md_table(["layer", "elements", "sensitivity", "bits (allocated)", "code entropy", "rel error"],
                              [[x["name"], x["numel"], f"{sens[w]:.2e}" if (w := _weight(x["name"], sens)) else "-",
                                f"{x['bits']:.2f}", f"{x['entropy']:.3f}", f"{x['rel_error']:.3e}"]
                               for x in head["layers"]])
            lines.append("")
        ok = [r for r in minilm["rows"] if r["ratio"] >= MINILM_RATIO and r["cosine_mean"] >= MINILM_COSINE]
        best = max(ok, key=lambda r: r["ratio"]) if ok else max(minilm["rows"], key=lambda r: r["cosine_mean"])
        lines += ["", target_line("minilm", f"{best['ratio']:.1f}x at cosine {best['cosine_mean']:.4f}",
                                  f">= {MINILM_RATIO:.0f}x at cosine >= {MINILM_COSINE}", bool(ok)), ""]
    return lines


def plot(lenets: list[dict], minilm: dict | None, out: str, stem: str) -> str:
    panels = len(lenets) + (1 if minilm else 0)
    fig, axes = figure(1, panels, figsize=(5 * panels, 4), squeeze=False)
    for ax, r in zip(axes[0], lenets):
        for c in r["curve"]:
            ax.scatter(c["bytes"] / 1024, c["accuracy"])
            ax.annotate(c["label"], (c["bytes"] / 1024, c["accuracy"]), fontsize=7)
        ax.set_xscale("log")
        ax.set(title=f"{r['model']} (digits 28x28)", xlabel="archive file (KB, log)", ylabel="held-out accuracy (%)")
    if minilm:
        ax = axes[0][-1]
        for r in minilm["rows"]:
            ax.scatter(r["bytes"] / 1e6, r["cosine_mean"])
            label = (f"a{r['mean_bits']:g}" if r["mean_bits"] else
                     f"{'u' if r['quantizer'] == 'uniform' else 'k'}{r['bits']:g}/e{r['embedding_bits']:g}")
            label += f" s{r['sparsity']:.0%}" * bool(r["sparsity"]) + f" ft{r['finetune_steps']}" * bool(
                r["finetune_steps"])
            ax.annotate(label, (r["bytes"] / 1e6, r["cosine_mean"]), fontsize=7)
        ax.axhline(MINILM_COSINE, ls="--", c="gray")
        ax.axvline(minilm["dense_bytes"] / MINILM_RATIO / 1e6, ls=":", c="gray")
        ax.set(title="all-MiniLM-L6-v2", xlabel="archive file (MB)", ylabel="held-out cosine to fp32")
    return save_figure(fig, out, stem)


def _weight(layer: str, sensitivity: dict) -> str | None:
    return next((w for w in (f"{layer}.weight", layer) if w in sensitivity), None)


def _label(row: dict) -> str:
    if row["mean_bits"]:
        rate = f"uniform, mean {row['mean_bits']:g} bit allocated per layer"
    elif row["quantizer"] == "uniform":
        rate = f"uniform {row['bits']:g} bit / embeddings {row['embedding_bits']:g}"
    else:
        rate = f"k-means {row['bits']:g} bit / embeddings {row['embedding_bits']:g}"
    return f"sparsity {row['sparsity']:.0%}, {rate}, fine-tune {row['finetune_steps']}"


def _configs(text: str) -> list[dict]:
    """"sparsity:bits:steps[:embedding_bits]" items (embedding tables default to ``bits``). ``bits`` forms:
    ``5`` k-means codebooks of 5-bit codes; ``u3.5`` uniform quantizer at 3.5 bits of code entropy per weight;
    ``a3.6`` uniform quantizer with per-layer rates allocated by measured sensitivity, mean 3.6 bits."""
    out = []
    for item in text.split(","):
        sparsity, bits, steps, *emb = item.split(":")
        cfg = {"sparsity": float(sparsity), "steps": int(steps), "mean_bits": None, "quantizer": "kmeans"}
        if bits.startswith("a"):
            cfg.update(quantizer="uniform", mean_bits=float(bits[1:]), bits=None, embedding_bits=None)
        else:
            uniform = bits.startswith("u")
            value = float(bits[1:]) if uniform else int(bits)
            cfg.update(quantizer="uniform" if uniform else "kmeans", bits=value,
                       embedding_bits=(float(emb[0]) if uniform else int(emb[0])) if emb else value)
        out.append(cfg)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__, STEM, quick="few steps, no sweep")
    parser.add_argument("--models", default="lenet300,lenet5,minilm")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--sparsity300", default="0.8,0.9,0.95", help="iterative pruning schedule of LeNet-300-100")
    parser.add_argument("--sparsity5", default="0.8,0.9,0.95", help="iterative pruning schedule of LeNet-5")
    parser.add_argument("--retrain-steps", type=int, default=600, help="retraining steps after each pruning step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--bits", type=int, default=5)
    parser.add_argument("--conv-bits", type=int, default=8)
    parser.add_argument("--share-steps", type=int, default=200)
    parser.add_argument("--share-lr", type=float, default=1e-3)
    parser.add_argument("--sweep-bits", default="2,3,4")
    parser.add_argument("--minilm-configs", default="0:6:0,0:5:0,0:4:0,0:3:0,0:5:0:3,0:5:150:3",
                        help="sparsity:bits:finetune-steps[:embedding-bits],...")
    parser.add_argument("--minilm-lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--suffix", default="", help="appended to the result file names")
    parser.add_argument("--append", action="store_true",
                        help="add this run's MiniLM rows to the existing result file (one curve from several "
                             "shorter runs; every run's command and metadata are kept)")
    args = parser.parse_args(argv)
    args.sparsity = {"lenet300": [float(v) for v in args.sparsity300.split(",")],
                     "lenet5": [float(v) for v in args.sparsity5.split(",")]}
    args.sweep_bits = [int(b) for b in args.sweep_bits.split(",") if b]
    args.minilm_configs = _configs(args.minilm_configs)
    if args.quick:
        args.epochs, args.retrain_steps, args.share_steps, args.sweep_bits = 3, 20, 5, []
        args.minilm_configs = _configs("0:a3.6:0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # MiniLM's weights come from an installed package, never the hub
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    meta = run_metadata("bench.deep_compression", argv)
    models = args.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        lenets = []
        for name in models:
            if name in MODELS:
                lenets.append(run_lenet(name, args, workdir))
                r = lenets[-1]
                print(f"{name}: {r['ratio']:.1f}x, accuracy {r['stages']['dense']['accuracy']:.2f}% -> "
                      f"{r['stages']['coded']['accuracy']:.2f}%", flush=True)
        minilm = run_minilm(args, workdir) if "minilm" in models else None
    finish_metadata(meta, wall)
    stem = STEM + args.suffix
    earlier = []
    previous = Path(args.out) / f"{stem}.json"
    if args.append and minilm and previous.exists():
        old = json.loads(previous.read_text())
        earlier = old.get("earlier_runs", []) + [old["meta"]]
        minilm["rows"] = old["minilm"]["rows"] + minilm["rows"]
        minilm["sensitivity"] = minilm["sensitivity"] or old["minilm"].get("sensitivity")
    payload = {"meta": meta, "earlier_runs": earlier, "lenets": lenets, "minilm": minilm}
    lines = markdown(meta, lenets, minilm, earlier)
    if not args.quick:
        lines.append(f"![size vs accuracy]({Path(plot(lenets, minilm, args.out, stem)).name})")
    for path in write_results(args.out, stem, payload, lines):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
