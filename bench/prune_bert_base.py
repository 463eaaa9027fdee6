"""Time to prune BERT-base (heads + FFN at 0.5): slimgraph end to end next to Torch-Pruning, in the same run.

    python -m bench.prune_bert_base [--repeats 5] [--out bench/results] [--quick]

Model: transformers ``BertModel(BertConfig())`` (110 M parameters, random weights, seed 0), batch 2 x 128
tokens with an attention mask (the second sequence padded after 100 tokens).

* slimgraph: ``sg.prune(model, (ids,), ratio=0.5, example_kwargs={"attention_mask": mask})`` end to end:
  torch.export capture + dependency analysis + importance + rewrite + the default numeric check against the
  unpruned graph; also with ``check=False``, and torch.export alone for reference. 50% of the heads and 50%
  of the FFN neurons of every layer go; the hidden (residual) width feeds the outputs and stays.
* Torch-Pruning: ``MetaPruner`` + ``GroupMagnitudeImportance(p=2)``, ``pruning_ratio=0.5``, hand-written
  ``num_heads`` for every query/key/value Linear, ``prune_num_heads=True, prune_head_dims=False,
  head_pruning_ratio=0.5``, the residual writers (attention.output.dense, output.dense) and the pooler
  ignored so the hidden width stays (the same pruning as slimgraph's); then ``num_attention_heads`` and
  ``all_head_size`` patched by hand, as its users must. Timed: MetaPruner construction (autograd trace) +
  ``step()`` + the patch; the ``deepcopy`` of the model it edits in place is not timed.

Default torch threads. Every figure is the median of ``--repeats`` warm runs (the cold first run of each,
which pays one-time tracing and import costs, is reported separately), with the load average around each.
Target (issue 3): slimgraph <= 3 s end to end on the 2-core development machine.
"""

from __future__ import annotations

import copy
import time

import torch

from bench import harness
from bench import prune_common as common

SUITE = "prune-bert-base"  # results stem and scratch directory name

TARGET_S = 3.0


def build(seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    model = transformers.BertModel(transformers.BertConfig()).eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 128), generator=g)
    mask = torch.ones(2, 128, dtype=torch.long)
    mask[1, 100:] = 0
    return model, (ids,), {"attention_mask": mask}


def sg_prune(model, args, kwargs, check: bool):
    import slimgraph as sg

    return sg.prune(model, args, ratio=0.5, example_kwargs=kwargs, check=check)


def tp_prune_bert(model, args, kwargs):
    layers = model.encoder.layer
    ignored = [m for layer in layers for m in (layer.attention.output.dense, layer.output.dense)]
    ignored.append(model.pooler.dense)
    pruner = common.tp_prune(model, (args, kwargs), ratio=0.5, ignored_layers=ignored,
                             num_heads=common.hf_attention_heads(model), head_ratio=0.5,
                             forward_fn=common.args_kwargs_forward,
                             output_transform=lambda out: out.last_hidden_state.sum() + out.pooler_output.sum())
    patched = common.hf_patch_heads(model)
    return pruner, patched


def _time(fn) -> tuple[object, float, list[float]]:
    load_before = harness.load_average()
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start, load_before


def check_runs(model, args, kwargs, reference_shapes) -> dict:
    """Runs on the example, keeps output shapes, finite outputs, and runs on another batch size (3 x 96)."""
    out = {}
    with torch.no_grad():
        y = model(*args, **kwargs)
        out["output_shapes"] = [list(t.shape) for t in common.leaves(y)]
        out["shapes_unchanged"] = out["output_shapes"] == reference_shapes
        out["finite"] = all(torch.isfinite(t).all().item() for t in common.leaves(y) if t.is_floating_point())
        ids = torch.randint(0, 30522, (3, 128), generator=torch.Generator().manual_seed(1))
        try:
            y3 = model(ids, attention_mask=torch.ones(3, 128, dtype=torch.long))
            first = common.first_tensor(y3)
            out["other_batch_ok"] = first.shape[0] == 3 and bool(torch.isfinite(first).all())
        except Exception as exc:  # reported, not raised: the table says which tool's model fails
            out["other_batch_ok"] = False
            out["other_batch_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = harness.script_parser(__doc__, SUITE, quick="one warm repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    meta = common.run_meta("bench.prune_bert_base", argv)
    wall = time.perf_counter()
    import slimgraph as sg
    from slimgraph.ir.info import graph_info

    model, margs, kwargs = build()
    with torch.no_grad():
        reference_shapes = [list(t.shape) for t in common.leaves(model(*margs, **kwargs))]

    runs: dict[str, list[dict]] = {"sg_check": [], "sg_nocheck": [], "export": [], "tp": []}

    def one_round():
        gm, t, lb = _time(lambda: sg_prune(model, margs, kwargs, check=True))
        pass_s = sum(r.seconds for r in graph_info(gm).history)
        runs["sg_check"].append({"s": t, "prune_pass_s": pass_s, "load_before": lb})
        _, t, lb = _time(lambda: sg_prune(model, margs, kwargs, check=False))
        runs["sg_nocheck"].append({"s": t, "load_before": lb})
        _, t, lb = _time(lambda: torch.export.export(model, margs, kwargs, strict=False))
        runs["export"].append({"s": t, "load_before": lb})
        victim = copy.deepcopy(model)
        (_, patched), t, lb = _time(lambda: tp_prune_bert(victim, margs, kwargs))
        runs["tp"].append({"s": t, "load_before": lb})
        return gm, victim, patched

    one_round()  # cold: one-time costs (imports, export's first trace, TP's first autograd walk)
    cold = {k: v.pop()["s"] for k, v in runs.items()}
    print("cold:", {k: round(v, 2) for k, v in cold.items()}, flush=True)
    for i in range(args.repeats):
        gm, tp_model, patched = one_round()
        print(f"repeat {i}: " + ", ".join(f"{k} {v[-1]['s']:.2f} s" for k, v in runs.items())
              + f"; load {harness.load_average()}", flush=True)

    report = sg.prune_report(gm)
    sg_check = check_runs(gm, margs, kwargs, reference_shapes)
    tp_check = check_runs(tp_model, margs, kwargs, reference_shapes)
    macs_before = common.macs(model, margs, kwargs)
    med = {k: common.median([r["s"] for r in v]) for k, v in runs.items()}
    med["sg_prune_pass"] = common.median([r["prune_pass_s"] for r in runs["sg_check"]])
    heads_after = sorted({g.units_after for g in report.groups if g.kind == "heads"})
    ffn_after = sorted({g.units_after for g in report.groups if g.status == "pruned" and g.kind != "heads"})
    results = {
        "timings_s": {k: [r["s"] for r in v] for k, v in runs.items()},
        "load_before_each": {k: [r["load_before"] for r in v] for k, v in runs.items()},
        "median_s": med, "cold_s": cold,
        "slimgraph": {"params_before": common.param_count(model), "params_after": common.param_count(gm),
                      "macs_before": macs_before, "macs_after": report.macs_after, "heads_after": heads_after,
                      "ffn_after": ffn_after, "groups_pruned": len(report.pruned),
                      "groups_unprunable": sum(g.status == "unprunable" for g in report.groups), **sg_check},
        "torch_pruning": {"params_after": common.param_count(tp_model),
                          "macs_after": common.macs(tp_model, margs, kwargs),
                          "patched_by_hand": patched[:2] + [f"... {len(patched)} modules"], **tp_check},
    }
    harness.finish_metadata(meta, wall)
    meta.update(repeats=args.repeats,
                torch_threads=torch.get_num_threads())
    met = med["sg_check"] <= TARGET_S
    payload = {"meta": meta, "results": results,
               "targets": {"slimgraph_end_to_end_s": {"measured": med["sg_check"], "target": TARGET_S, "met": met}}}

    def spread(key):
        v = [r["s"] for r in runs[key]]
        return f"{med[key]:.2f} s ({min(v):.2f}-{max(v):.2f})"

    s, t = results["slimgraph"], results["torch_pruning"]
    md = [f"# Pruning BERT-base, heads + FFN at 0.5: time to prune ({'QUICK smoke run' if args.quick else 'full run'})",
          "", *harness.meta_lines(meta),
          f"- BertModel(BertConfig()), random weights, batch 2 x 128 tokens with attention mask; "
          f"default torch threads ({torch.get_num_threads()}); median of {args.repeats} warm repeats "
          "(min-max in brackets); cold = first call in the process", "",
          *harness.md_table(["tool / step", "median (min-max)", "cold"], [
              ["slimgraph sg.prune end to end (capture + analysis + rewrite + numeric check)", spread("sg_check"),
               f"{cold['sg_check']:.2f} s"],
              ["slimgraph sg.prune, check=False", spread("sg_nocheck"), f"{cold['sg_nocheck']:.2f} s"],
              ["  of which the prune pass (analysis + importance + rewrite)", f"{med['sg_prune_pass']:.2f} s", "-"],
              ["torch.export.export alone (reference)", spread("export"), f"{cold['export']:.2f} s"],
              ["Torch-Pruning MetaPruner + step + head patch", spread("tp"), f"{cold['tp']:.2f} s"],
          ]), "",
          *harness.md_table(["result", "params", "MACs (batch 2 x 128)", "heads / layer", "FFN / layer",
                             "output shapes kept", "finite", "runs at batch 3"], [
              ["unpruned", harness.human(s["params_before"]), harness.human(macs_before), "12", "3072", "-", "-", "-"],
              ["slimgraph", harness.human(s["params_after"]), harness.human(s["macs_after"]),
               ",".join(map(str, heads_after)), ",".join(map(str, ffn_after)), s["shapes_unchanged"], s["finite"],
               s["other_batch_ok"]],
              ["Torch-Pruning", harness.human(t["params_after"]),
               harness.human(t["macs_after"]) if t["macs_after"] else "n/a",
               str(tp_model.encoder.layer[0].attention.self.num_attention_heads),
               str(tp_model.encoder.layer[0].intermediate.dense.out_features), t["shapes_unchanged"], t["finite"],
               t["other_batch_ok"]],
          ]), "",
          f"Load average before each timed call (1-min): slimgraph {[r['load_before'][0] for r in runs['sg_check']]}, "
          f"Torch-Pruning {[r['load_before'][0] for r in runs['tp']]}.", "",
          "## Targets", "",
          harness.target_line("slimgraph sg.prune(BERT-base, ratio=0.5) end to end",
                              f"{med['sg_check']:.2f} s (median)", f"<= {TARGET_S:.0f} s", met),
          f"- for reference: Torch-Pruning {med['tp']:.2f} s in the same run (issue: 'about 1 s here')", ""]
    files = harness.write_results(args.out, SUITE, payload, md)
    files.append(_plot(args.out, runs, med))
    print("\n".join(md))
    print("wrote", ", ".join(map(str, files)))
    return 0


def _plot(out, runs, med):
    keys = [("sg_check", "slimgraph\n(end to end)"), ("sg_nocheck", "slimgraph\ncheck=False"),
            ("export", "torch.export\nalone"), ("tp", "Torch-Pruning")]
    fig, ax = harness.figure(figsize=(6, 3.5))
    for i, (k, _) in enumerate(keys):
        v = [r["s"] for r in runs[k]]
        ax.bar(i, med[k], color="C0" if k.startswith("sg") else "C1" if k == "tp" else "C7")
        ax.plot([i] * len(v), v, "k.", ms=4)
        ax.text(i, med[k] + 0.05, f"{med[k]:.2f}", ha="center", fontsize=8)
    ax.axhline(TARGET_S, color="r", ls="--", lw=1, label=f"target {TARGET_S:.0f} s")
    ax.set_xticks(range(len(keys)), [label for _, label in keys], fontsize=8)
    return harness.finish_figure(fig, ax, out, SUITE, title="Pruning BERT-base heads + FFN at 0.5, CPU",
                                 ylabel="seconds (median, dots = repeats)", legend={"fontsize": 8})


if __name__ == "__main__":
    raise SystemExit(main())
