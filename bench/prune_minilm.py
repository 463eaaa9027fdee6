"""Prune the real all-MiniLM-L6-v2 (50% of FFN neurons, 25% of attention heads), distill it back on offline
English text, and do the same with Torch-Pruning side by side.

    python -m bench.prune_minilm [--out bench/results] [--quick] [--sweep] [--importance l2|act|taylor]
                                 [--reconstruct] [--steps N] [--skip-torch-pruning --live-teacher]

The committed runs behind issue 3's target: ``--importance act --reconstruct --threads 2 --steps 1500`` (side by
side with Torch-Pruning), then ``--steps 3000`` and ``--steps 6000`` with ``--skip-torch-pruning --live-teacher``.

Model: ``slimgraph.demos.minilm.load_encoder()`` (the real pretrained weights + mean pooling + L2 norm).
Data: ``slimgraph.data.english_sentences``: the "train" split for distillation, the "heldout" split (never
trained on) for evaluation, tokenized to 32 tokens.

* slimgraph: ``sg.prune(encoder, (ids, mask), ratio=0.5, ratios={"heads": 0.25})`` (l2 importance by
  default, ``--importance act`` for the activation-aware criterion, ``--reconstruct`` for the least-squares refit
  of the layers that lose inputs on 640 calibration sentences; round_to 8, numeric check on):
  every layer's FFN neurons halved, 3 of 12 heads removed per layer; the
  hidden (residual) width feeds the output and is never pruned.
* Torch-Pruning: ``MetaPruner`` + ``GroupMagnitudeImportance(p=2)``, hand-written ``num_heads`` (12) for
  every query/key/value Linear, ``prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.25``,
  ``pruning_ratio=0.5`` for the FFN; the residual writers (attention.output.dense, output.dense) and the
  pooler in ``ignored_layers`` so the hidden width is kept; then ``num_attention_heads`` and
  ``all_head_size`` patched by hand.

Distillation (the same for both): ``sg.distill`` with ``output_loss="cosine"`` on the sentence embedding plus
``hidden_weight`` x MSE on the six layers' hidden states (padding positions zeroed), AdamW with warm-up and
cosine decay. To get those hidden states the student is trained as a twin that also returns them:
slimgraph prunes ``EncoderWithHidden`` (the same weights, names and kept units - checked) and the trained
weights are loaded back into the plain pruned encoder (checked to give the same embedding); the
Torch-Pruning model is wrapped the same way, in eval mode (no dropout, like the captured graph). The
teacher's outputs on the fixed training batches are computed once (``CachedTeacher``). Training text: the
train sentences, plus random pairs of train sentences joined (3 per sentence) and random word spans of them
(2 per sentence; train text only, seeded): 635 sentences alone overfit within a few epochs.

Metrics: mean/min cosine between the candidate's and the unpruned model's embeddings of the held-out
sentences; parameters; MACs (batch 32 x 32 tokens); CPU latency of one batch of 32 held-out sentences at
32 tokens (median over interleaved rounds, default threads and 1 thread). Target (issue 3): cosine >= 0.95
after distillation. ``--sweep`` runs slimgraph's distillation for a few settings and records them all in
``prune-minilm-sweep.{json,md}``.
"""

from __future__ import annotations

import copy
import random
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import harness
from bench import prune_common as common

SUITE = "prune-minilm"  # results stem and scratch directory name

TARGET_COSINE = 0.95
HEAD_RATIO = 0.25
FFN_RATIO = 0.5
SWEEP = [  # (steps, lr, hidden_weight, augment)
    (300, 5e-4, 0.0, True),
    (300, 5e-4, 5.0, False),
    (300, 5e-4, 1.0, True),
    (300, 5e-4, 5.0, True),
    (300, 1e-3, 5.0, True),
    (900, 5e-4, 5.0, True),
]
PAIRS_PER_SENTENCE = 3  # augmented training text: random pairs of train sentences joined ...
SPANS_PER_SENTENCE = 2  # ... and random word spans (>= 4 words) of each train sentence longer than 6 words


class EncoderWithHidden(nn.Module):
    """SentenceEncoder's forward that also returns the six layers' hidden states (padding rows zeroed).

    Same attribute name (``encoder``) as SentenceEncoder, so parameter names are the same."""

    def __init__(self, sentence_encoder: nn.Module):
        super().__init__()
        self.encoder = sentence_encoder.encoder

    def forward(self, input_ids, attention_mask):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
        pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return (F.normalize(pooled, dim=-1), *[h * mask for h in out.hidden_states[1:]])


def training_text(augment: bool, seed: int = 0) -> list[str]:
    from slimgraph.data import english_sentences

    sentences = english_sentences("train")
    rng = random.Random(seed)
    if not augment:
        text = list(sentences)
        rng.shuffle(text)
        return text
    text = list(sentences)
    for _ in range(PAIRS_PER_SENTENCE * len(sentences)):
        a, b = rng.sample(sentences, 2)
        text.append(f"{a} {b}")
    for s in SPANS_PER_SENTENCE * sentences:
        words = s.split()
        if len(words) > 6:
            i = rng.randrange(0, len(words) - 4)
            text.append(" ".join(words[i:rng.randrange(i + 4, len(words) + 1)]))
    rng.shuffle(text)
    return text


PRUNE_OPTIONS: dict = {"importance": "l2"}  # --importance (and its calibration batches) set in main()


def sg_prune(model, example, check=True):
    import slimgraph as sg

    return sg.prune(model, example, ratio=FFN_RATIO, ratios={"heads": HEAD_RATIO}, check=check, **PRUNE_OPTIONS)


def tp_prune_minilm(encoder: nn.Module, example):
    bert = encoder.encoder
    ignored = [m for layer in bert.encoder.layer for m in (layer.attention.output.dense, layer.output.dense)]
    ignored.append(bert.pooler.dense)
    pruner = common.tp_prune(encoder, example, ratio=FFN_RATIO, ignored_layers=ignored,
                             num_heads=common.hf_attention_heads(encoder), head_ratio=HEAD_RATIO)
    return pruner, common.hf_patch_heads(encoder)


def distill_sg(pruned_plain, teacher, teacher_cache, batches, example, setting):
    """Distill slimgraph's pruned encoder through its hidden-state twin; returns (plain distilled, twin history)."""
    import slimgraph as sg

    steps, lr, hidden_weight = setting
    twin = sg_prune(EncoderWithHidden(teacher), example, check=False)
    plain_sd, twin_sd = pruned_plain.state_dict(), twin.state_dict()
    if set(plain_sd) != set(twin_sd) or not all(torch.equal(plain_sd[k], twin_sd[k]) for k in plain_sd):
        raise AssertionError("the hidden-state twin was pruned differently from the plain encoder")
    # wrapped like the Torch-Pruning student, so sg.distill takes the same path for both (the hidden states are
    # the twin's outputs; sg.distill's own LayerNorm tapping of graph students is not used here)
    wrapper = sg.distill(common.EvalModeForward(twin), teacher_cache, batches, steps=steps, temperature=1.0, alpha=1.0,
                         output_loss="cosine", hidden_weight=hidden_weight, lr=lr, progress=False, seed=0)
    trained = wrapper.module
    trained.distill_history = wrapper.distill_history
    out = copy.deepcopy(pruned_plain)
    out.load_state_dict(trained.state_dict())
    with torch.no_grad():
        ids, mask = example
        same = torch.allclose(out(ids, mask), trained(ids, mask)[0], atol=1e-5)
    if not same:
        raise AssertionError("the plain pruned encoder does not reproduce its trained twin")
    return out, trained.distill_history


def distill_tp(tp_encoder, teacher_cache, batches, setting):
    import slimgraph as sg
    from slimgraph.demos.minilm import SentenceEncoder

    steps, lr, hidden_weight = setting
    trained = sg.distill(common.EvalModeForward(EncoderWithHidden(tp_encoder)), teacher_cache, batches, steps=steps,
                         temperature=1.0, alpha=1.0, output_loss="cosine", hidden_weight=hidden_weight, lr=lr,
                         progress=False, seed=0)
    return SentenceEncoder(trained.module.encoder).eval(), trained.distill_history


def latencies(models: dict[str, nn.Module], batch, rounds: int, threads: int) -> dict[str, dict]:
    """The harness's interleaved timing at ``threads`` torch threads: median and IQR per model."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run = harness.time_variants({k: (lambda m=m: m(*batch)) for k, m in models.items()}, warmup=2,
                                    rounds=rounds, min_rounds=min(rounds, 3), max_seconds=8.0 * rounds)
    finally:
        torch.set_num_threads(before)
    return {k: run[k].as_dict() for k in models}


def main(argv: list[str] | None = None) -> int:
    parser = harness.script_parser(__doc__, SUITE, quick="10 steps, one latency round")
    parser.add_argument("--sweep", action="store_true", help="record slimgraph's distillation at several settings")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--hidden-weight", type=float, default=5.0)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--latency-rounds", type=int, default=10, help="interleaved timing rounds (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for pruning/distillation/evaluation")
    parser.add_argument("--importance", default="l2",
                        help="slimgraph importance criterion; data-driven ones (act, taylor) calibrate on 4 batches "
                             "of train text; results go to prune-minilm-<importance>.* unless l2")
    parser.add_argument("--reconstruct", action="store_true",
                        help="slimgraph refits the layers that lose input columns by least squares on calibration "
                             "text (sg.prune(reconstruct=True)); results go to prune-minilm-<importance>-reconstruct.*")
    parser.add_argument("--skip-torch-pruning", action="store_true",
                        help="slimgraph only (long runs; the side-by-side files come from runs without this flag)")
    parser.add_argument("--live-teacher", action="store_true",
                        help="run the teacher at every step instead of caching its outputs (long runs: the cache "
                             "takes ~5 GB per 1000 steps of batch 16)")
    parser.add_argument("--calib-sentences", type=int, default=None,
                        help="train sentences for act/taylor/reconstruct calibration (default 128, 640 with "
                             "--reconstruct: a 1536-wide layer needs well over 1536 calibration tokens)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.latency_rounds = 10, 1
    meta = common.run_meta("bench.prune_minilm", argv)
    wall = time.perf_counter()
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)

    import slimgraph as sg
    from slimgraph.demos.minilm import fidelity_evaluator, load_encoder, load_tokenizer, text_batches, tokenize

    tokenizer = load_tokenizer()
    teacher = load_encoder()
    heldout = text_batches("heldout", 32, tokenizer=tokenizer)
    example = text_batches("train", 32, limit=32, tokenizer=tokenizer)[0]
    PRUNE_OPTIONS["importance"] = args.importance
    n_calib = args.calib_sentences or (640 if args.reconstruct else 128)
    if args.importance not in ("l1", "l2", "bn-scale", "random") or args.reconstruct:
        PRUNE_OPTIONS["calib"] = text_batches("train", 32, limit=n_calib, tokenizer=tokenizer)
    if args.reconstruct:
        PRUNE_OPTIONS["reconstruct"] = True
    evaluate = fidelity_evaluator(teacher, heldout)
    n_heldout = sum(len(b[0]) for b in heldout)

    def batches_for(augment: bool):
        # only as many distinct texts as the run will see: the training text is shuffled, and caching the
        # teacher's outputs for tens of thousands of unused texts would cost minutes and gigabytes
        text = training_text(augment)[: args.steps * args.batch_size]
        return text, [tokenize(tokenizer, text[i:i + args.batch_size]) for i in range(0, len(text), args.batch_size)]

    if args.sweep:
        train_eval = fidelity_evaluator(teacher, text_batches("train", 32, tokenizer=tokenizer))
        return sweep(args, meta, wall, teacher, example, evaluate, batches_for, train_eval)

    text, batches = batches_for(not args.no_augment)
    setting = (args.steps, args.lr, args.hidden_weight)
    if args.live_teacher:
        teacher_cache, cache_s = EncoderWithHidden(teacher).eval(), 0.0
        print(f"{len(text)} training texts in {len(batches)} batches; teacher run live", flush=True)
    else:
        teacher_cache, cache_s = common.timed(lambda: common.CachedTeacher(EncoderWithHidden(teacher), batches))
        print(f"{len(text)} training texts in {len(batches)} batches; teacher outputs cached in {cache_s:.0f} s",
              flush=True)

    # ---- slimgraph
    sg_pruned, sg_prune_s = common.timed(lambda: sg_prune(teacher, example))
    report = sg.prune_report(sg_pruned)
    sg_before = evaluate(sg_pruned)
    print("slimgraph pruned:", sg_before, f"({sg_prune_s:.1f} s)", flush=True)
    (sg_final, sg_hist), sg_distill_s = common.timed(
        lambda: distill_sg(sg_pruned, teacher, teacher_cache, batches, example, setting))
    sg_after = evaluate(sg_final)
    print("slimgraph distilled:", sg_after, f"({sg_distill_s:.0f} s)", flush=True)

    # ---- Torch-Pruning
    tp_model = copy.deepcopy(teacher)
    tp_row: dict = {}
    try:
        if args.skip_torch_pruning:
            raise RuntimeError("skipped (--skip-torch-pruning)")
        (_, patched), tp_prune_s = common.timed(lambda: tp_prune_minilm(tp_model, example))
        tp_row.update(ran=True, prune_s=tp_prune_s, patched_by_hand=patched)
        tp_row["before"] = evaluate(tp_model)
        print("Torch-Pruning pruned:", tp_row["before"], f"({tp_prune_s:.1f} s)", flush=True)
        (tp_final, tp_hist), tp_distill_s = common.timed(lambda: distill_tp(tp_model, teacher_cache, batches, setting))
        tp_row.update(after=evaluate(tp_final), distill_s=tp_distill_s, final_loss=tp_hist.losses[-1],
                      params=common.param_count(tp_final), macs=common.macs(tp_final, example),
                      heads=[lay.attention.self.num_attention_heads for lay in tp_final.encoder.encoder.layer],
                      ffn=[lay.intermediate.dense.out_features for lay in tp_final.encoder.encoder.layer])
        print("Torch-Pruning distilled:", tp_row["after"], flush=True)
    except Exception as exc:  # reported exactly in the result files
        import traceback

        tp_row.update(ran=False, error=f"{type(exc).__name__}: {exc}"[:500],
                      traceback_tail=traceback.format_exc().strip().splitlines()[-4:])
        tp_final = None

    # ---- latency (the distilled models; pruning fixed their shapes)
    lat_models = {"unpruned": teacher, "slimgraph": sg_final}
    if tp_final is not None:
        lat_models["torch_pruning"] = tp_final
    lat = {"default_threads": latencies(lat_models, heldout[0], args.latency_rounds, default_threads),
           "1_thread": latencies(lat_models, heldout[0], max(3, args.latency_rounds // 3), 1)}
    torch.set_num_threads(args.threads)

    heads = sorted({g.units_after for g in report.groups if g.kind == "heads"})
    ffn = sorted({g.units_after for g in report.groups if g.kind != "heads" and g.status == "pruned"
                  and "intermediate" in g.name})
    rows = {
        "unpruned": {"params": common.param_count(teacher), "macs": common.macs(teacher, example)},
        "slimgraph": {"params": common.param_count(sg_final), "macs": report.macs_after, "prune_s": sg_prune_s,
                      "before": sg_before, "after": sg_after, "distill_s": sg_distill_s,
                      "final_loss": sg_hist.losses[-1], "heads": heads, "ffn": ffn,
                      "groups": [vars(g) for g in report.groups]},
        "torch_pruning": tp_row,
    }
    met = sg_after["cosine_mean"] >= TARGET_COSINE
    harness.finish_metadata(meta, wall)
    meta.update(threads=args.threads,
                teacher_cache_s=cache_s)
    settings = {"importance": args.importance, "reconstruct": args.reconstruct,
                "calib_sentences": n_calib if "calib" in PRUNE_OPTIONS else 0, "steps": args.steps, "lr": args.lr,
                "hidden_weight": args.hidden_weight, "output_loss": "cosine",
                "augment": not args.no_augment, "pairs_per_sentence": PAIRS_PER_SENTENCE,
                "spans_per_sentence": SPANS_PER_SENTENCE, "batch_size": args.batch_size, "training_texts": len(text),
                "warmup": 0.1, "weight_decay": 0.01, "seed": 0, "heldout_sentences": n_heldout}
    payload = {"meta": meta, "settings": settings, "results": rows, "latency": lat,
               "targets": {"cosine_mean_after_distillation": {"measured": sg_after["cosine_mean"],
                                                              "target": TARGET_COSINE, "met": met}}}

    def lat_cell(key):
        d, one = lat["default_threads"].get(key), lat["1_thread"].get(key)
        return f"{d['median_ms']:.0f} ms / {one['median_ms']:.0f} ms" if d else "-"

    def cos(d):
        return f"{d['cosine_mean']:.4f} / {d['cosine_min']:.4f}" if d else "-"

    u = rows["unpruned"]
    table = [
        ["unpruned all-MiniLM-L6-v2", harness.human(u["params"]), harness.human(u["macs"]), "12", "1536", "1 / 1", "-",
         lat_cell("unpruned"), "-"],
        ["slimgraph", harness.human(rows["slimgraph"]["params"]), harness.human(report.macs_after),
         ",".join(map(str, heads)), ",".join(map(str, ffn)), cos(sg_before), cos(sg_after), lat_cell("slimgraph"),
         f"{sg_prune_s:.1f} s"],
    ]
    if tp_row.get("ran") and tp_final is not None:
        table.append(["Torch-Pruning", harness.human(tp_row["params"]),
                      harness.human(tp_row["macs"]) if tp_row["macs"] else "n/a",
                      ",".join(map(str, sorted(set(tp_row["heads"])))), ",".join(map(str, sorted(set(tp_row["ffn"])))),
                      cos(tp_row["before"]), cos(tp_row["after"]), lat_cell("torch_pruning"),
                      f"{tp_row['prune_s']:.1f} s"])
    else:
        why = "not run (--skip-torch-pruning)" if args.skip_torch_pruning else f"FAILED: {tp_row.get('error')}"
        table.append(["Torch-Pruning", "-", "-", "-", "-", "-", "-", "-", why])
    how = args.importance + (" + least-squares reconstruction" if args.reconstruct else "")
    md = [f"# Pruning all-MiniLM-L6-v2 (FFN 50%, heads 25%; slimgraph importance {how}) + distillation "
          f"({'QUICK smoke run' if args.quick else 'full run'})", "", *harness.meta_lines(meta),
          f"- distillation (both tools): {settings}; {args.steps} steps x {args.batch_size} texts; teacher outputs "
          + ("computed at every step" if args.live_teacher else f"cached once ({cache_s:.0f} s)")
          + f"; slimgraph distillation {sg_distill_s:.0f} s"
          + (f", Torch-Pruning {tp_row['distill_s']:.0f} s" if tp_row.get("distill_s") else ""),
          f"- evaluation: {n_heldout} held-out sentences (never trained on), cosine to the unpruned model's "
          "embeddings", "",
          *harness.md_table(["model", "params", "MACs (32 x 32 tokens)", "heads / layer", "FFN / layer",
                             "cosine mean / min after pruning", "cosine mean / min after distillation",
                             "latency, batch 32 x 32 (default threads / 1 thread)", "time to prune"], table), "",
          f"Latency (default = {default_threads} threads; median and IQR of interleaved rounds, ms): "
          + "; ".join(f"{k} {v['median_ms']:.0f} ({v['q1_ms']:.0f}-{v['q3_ms']:.0f})"
                      for k, v in lat["default_threads"].items()) + ".",
          "slimgraph's time to prune is end to end (capture + analysis + rewrite + numeric check); Torch-Pruning's is "
          "MetaPruner construction + step() + the hand patch of the head counts.", "",
          "## Targets", "",
          harness.target_line("held-out cosine after distillation (slimgraph)",
                              f"{sg_after['cosine_mean']:.4f} (mean), {sg_after['cosine_min']:.4f} (min)",
                              f">= {TARGET_COSINE}", met), ""]
    stem = ("prune-minilm" + ("" if args.importance == "l2" else f"-{args.importance}")
            + ("-reconstruct" if args.reconstruct else "") + (f"-{args.steps}steps" if args.skip_torch_pruning else ""))
    files = harness.write_results(args.out, stem, payload, md)
    files.append(_plot(args.out, stem, sg_hist, tp_hist if tp_final is not None else None))
    print("\n".join(md))
    print("wrote", ", ".join(map(str, files)))
    return 0


def sweep(args, meta, wall, teacher, example, evaluate, batches_for, train_eval) -> int:
    steps_override = 10 if args.quick else None
    pruned = sg_prune(teacher, example, check=False)
    before = evaluate(pruned)
    results = []
    caches = {}
    for steps, lr, hidden_weight, augment in SWEEP:
        steps = steps_override or steps
        if augment not in caches:
            text, batches = batches_for(augment)
            caches[augment] = (len(text), batches, common.CachedTeacher(EncoderWithHidden(teacher), batches))
        n_text, batches, cache = caches[augment]
        start = time.perf_counter()
        final, hist = distill_sg(pruned, teacher, cache, batches, example, (steps, lr, hidden_weight))
        secs = time.perf_counter() - start
        res = {"steps": steps, "lr": lr, "hidden_weight": hidden_weight, "augment": augment,
               "training_texts": n_text, "batch_size": args.batch_size, **evaluate(final),
               "train_cosine_mean": train_eval(final)["cosine_mean"], "distill_s": secs,
               "final_loss": hist.losses[-1], "load_after": harness.load_average()}
        results.append(res)
        print(res, flush=True)
    harness.finish_metadata(meta, wall)
    meta.update(threads=args.threads)
    md = ["# all-MiniLM-L6-v2 pruned by slimgraph (FFN 50%, heads 25%): distillation settings tried", "",
          *harness.meta_lines(meta), f"- after pruning, before distillation: cosine mean {before['cosine_mean']:.4f}, "
          f"min {before['cosine_min']:.4f}; output loss cosine, AdamW, warm-up 10%, seed 0", "",
          *harness.md_table(["steps", "batch", "lr", "hidden_weight", "augmented text", "texts",
                             "held-out cosine mean", "held-out cosine min", "train-sentence cosine mean",
                             "distill time"],
                            [[r["steps"], r["batch_size"], r["lr"], r["hidden_weight"], r["augment"],
                              r["training_texts"], f"{r['cosine_mean']:.4f}", f"{r['cosine_min']:.4f}",
                              f"{r['train_cosine_mean']:.4f}", f"{r['distill_s']:.0f} s"] for r in results]),
          "", "train-sentence cosine: the same metric on the 635 original train sentences (seen in training); the gap "
          "to the held-out column is what more steps alone cannot close.", ""]
    files = harness.write_results(args.out, "prune-minilm-sweep", {"meta": meta, "before": before, "results": results},
                                  md)
    files.append(plot_sweep(args.out, results))
    print("\n".join(md))
    print("wrote", ", ".join(map(str, files)))
    return 0


def plot_sweep(out, results: list[dict]):
    """Held-out and train-sentence cosine per distillation setting; also drawn from a committed JSON's "results"."""
    labels = [f"{r['steps']} steps, lr {r['lr']:g}, hidden {r['hidden_weight']:g}"
              + (", augmented" if r["augment"] else "") for r in results]
    return harness.bar_chart(
        out, "prune-minilm-sweep",
        {"held-out sentences": {lab: r["cosine_mean"] for lab, r in zip(labels, results)},
         "train sentences": {lab: r["train_cosine_mean"] for lab, r in zip(labels, results)}},
        ylabel="mean cosine to the unpruned model", title="MiniLM pruned (FFN 50%, heads 25%): distillation settings",
        reference=(TARGET_COSINE, f"target {TARGET_COSINE}"))


def _plot(out, stem, sg_hist, tp_hist):
    def smooth(v, k=20):
        return [statistics.mean(v[max(0, i - k + 1):i + 1]) for i in range(len(v))]

    fig, ax = harness.figure(figsize=(6, 3.5))
    ax.plot(smooth(sg_hist.kd_losses), label="slimgraph: 1 - cosine (embedding)")
    ax.plot(smooth(sg_hist.losses), label="slimgraph: total (+ hidden MSE)", ls="--")
    if tp_hist is not None:
        ax.plot(smooth(tp_hist.kd_losses), label="Torch-Pruning: 1 - cosine (embedding)")
        ax.plot(smooth(tp_hist.losses), label="Torch-Pruning: total", ls="--")
    return harness.finish_figure(fig, ax, out, stem, title="MiniLM distillation after pruning (train text)",
                                 xlabel="step", ylabel="training loss (20-step mean)", logy=True,
                                 legend={"fontsize": 7})


if __name__ == "__main__":
    raise SystemExit(main())
