"""Which architectures each pruner handles at ratio 0.5: slimgraph vs Torch-Pruning, model by model.

    python -m bench.prune_families [--out bench/results] [--timeout 120] [--quick]

Models: every entry of ``slimgraph.testing.ZOO`` (small configs of the real transformers classes and
hand-written CNNs) plus the trained digits CNN. Each Torch-Pruning attempt runs in its own subprocess with a
timeout (it is reported to hang on GQA models); slimgraph runs all models in one subprocess. Each process
first does an untimed warm-up prune of the zoo MLP, so one-time costs (imports, first trace) are not billed to
the first model.

* slimgraph: ``sg.prune(model, args, ratio=0.5, example_kwargs=kwargs)`` (defaults: l2, local, round_to 8,
  numeric check on).
* Torch-Pruning, "the usual settings": ``MetaPruner`` + ``GroupMagnitudeImportance(p=2)``,
  ``pruning_ratio=0.5``; ``ignored_layers`` = the layer(s) writing the model's outputs (the final classifier;
  for a bare encoder/decoder the pooler and the last residual writer, so the output width stays);
  ``num_heads`` for the q/k/v Linears where obvious (BERT/ViT/Swin query/key/value, Llama q/k/v_proj with
  the GQA counts), whole heads (``prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5``),
  then ``num_attention_heads``/``all_head_size`` (or Llama's head counts) patched by hand.

Columns: ran without error; output shapes unchanged; outputs finite and the model still runs at another
batch size (batch + 1); parameters before/after; time to prune; for slimgraph the groups pruned/unprunable.

Channel shuffle check: in ``shuffle_cnn`` dead units (all incoming and outgoing weights zero) are planted so
that an exact pruning at ratio 0.5 exists and is lossless: half of the residual channels (2 of every 4-channel
conv group) and half of the channels between the two grouped 1x1 convs (2 per group on both sides of the
shuffle, a pattern the shuffle maps to a *different* set of channels). Each tool prunes the planted model; its
output is compared with the unpruned output on new inputs. Torch-Pruning is also asked to remove exactly the
dead channels of the first grouped conv (``DependencyGraph.get_pruning_group(g1, prune_conv_out_channels,
dead)``): a correct index map through view -> transpose -> view would make that lossless.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import traceback

import torch
import torch.nn as nn

from bench import harness
from bench import prune_common as common

SUITE = "prune-families"  # results stem and scratch directory name

HAND_WRITTEN_OUTPUT_LAYERS = {"mlp": "fc3", "residual_cnn": "fc", "concat_cnn": "head", "mobile_block_cnn": "fc",
                              "shuffle_cnn": "fc", "flatten_cnn": "fc2", "transposed_conv": "out", "digits-cnn": "fc2"}


def model_names() -> list[str]:
    from slimgraph.testing import ZOO

    return [*ZOO, "digits-cnn"]


def build(name: str):
    if name == "digits-cnn":
        from slimgraph.demos.digits import digits_data, trained_digits_cnn

        _, _, x_test, _ = digits_data()
        return trained_digits_cnn(), (x_test[:4],), {}
    from slimgraph.testing import make

    return make(name)


def output_layers(name: str, model: nn.Module) -> list[str]:
    """The modules a Torch-Pruning user puts in ignored_layers so the outputs keep their shape."""
    if name in HAND_WRITTEN_OUTPUT_LAYERS:
        return [HAND_WRITTEN_OUTPUT_LAYERS[name]]
    if hasattr(model, "classifier"):
        linears = [n for n, m in model.named_modules() if n.startswith("classifier") and isinstance(m, nn.Linear)]
        return linears[-1:]
    if name == "bert":
        return ["pooler.dense", f"encoder.layer.{len(model.encoder.layer) - 1}.output.dense"]
    if name == "gpt2":
        return [f"h.{len(model.h) - 1}.mlp.c_proj"]
    if name == "llama_gqa":
        return [f"layers.{len(model.layers) - 1}.mlp.down_proj"]
    return []


def bigger_batch(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    grow = lambda t: torch.cat([t, t[:1]]) if isinstance(t, torch.Tensor) and t.dim() > 0 else t  # noqa: E731
    return tuple(grow(a) for a in args), {k: grow(v) for k, v in kwargs.items()}


def checks(model, args, kwargs, reference_shapes) -> dict:
    out: dict = {}
    with torch.no_grad():
        y = model(*args, **kwargs)
        shapes = [list(t.shape) for t in common.leaves(y)]
        out["shapes_unchanged"] = shapes == reference_shapes
        if not out["shapes_unchanged"]:
            out["shape_change"] = f"{reference_shapes} -> {shapes}"[:300]
        out["finite"] = all(bool(torch.isfinite(t).all()) for t in common.leaves(y) if t.is_floating_point())
        a2, k2 = bigger_batch(args, kwargs)
        try:
            y2 = model(*a2, **k2)
            finite = all(bool(torch.isfinite(t).all()) for t in common.leaves(y2) if t.is_floating_point())
            out["other_batch_ok"] = finite and common.leaves(y2)[0].shape[0] == common.leaves(y)[0].shape[0] + 1
        except Exception as exc:  # the point of the column: report, don't raise
            out["other_batch_ok"] = False
            out["other_batch_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def worker(tool: str, names: list[str]) -> list[dict]:
    """Prune each model with one tool in this process, after an untimed warm-up; one result per model."""
    torch.set_num_threads(1)
    import slimgraph as sg
    from slimgraph.testing import make

    wm, wa, wk = make("mlp")  # warm-up (untimed): pays imports and the first trace of this tool
    if tool == "slimgraph":
        sg.prune(wm, wa, ratio=0.5, example_kwargs=wk)
    else:
        common.tp_prune(wm, wa[0], ratio=0.5, ignored_layers=[wm.fc3])
    return [_one(tool, name, sg) for name in names]


def _one(tool: str, name: str, sg) -> dict:
    res: dict = {"tool": tool, "model": name}
    model, args, kwargs = build(name)
    with torch.no_grad():
        reference_shapes = [list(t.shape) for t in common.leaves(model(*args, **kwargs))]
    res["params_before"] = common.param_count(model)
    try:
        start = time.perf_counter()
        if tool == "slimgraph":
            pruned = sg.prune(model, args, ratio=0.5, example_kwargs=kwargs)
            res["prune_s"] = time.perf_counter() - start
            report = sg.prune_report(pruned)
            res["groups"] = {s: sum(g.status == s for g in report.groups)
                             for s in ("pruned", "kept", "unprunable", "ignored")}
            res["unprunable_reasons"] = sorted({g.reason for g in report.groups if g.status == "unprunable"})[:4]
            exact = sg.prune(model, args, ratio=0.5, round_to=1, example_kwargs=kwargs, check=False)
            res["params_after_round_to_1"] = common.param_count(exact)
        else:
            pruned = copy.deepcopy(model)
            ignored = [pruned.get_submodule(n) for n in output_layers(name, pruned)]
            heads = common.hf_attention_heads(pruned)
            res["ignored_layers"] = output_layers(name, pruned)
            res["num_heads_given"] = len(heads)
            common.tp_prune(pruned, (args, kwargs), ratio=0.5, ignored_layers=ignored, num_heads=heads, head_ratio=0.5,
                            forward_fn=common.args_kwargs_forward, output_transform=common.sum_of_outputs)
            res["prune_s"] = time.perf_counter() - start
            res["patched_by_hand"] = len(common.hf_patch_heads(pruned))
        res["ran"] = True
    except Exception as exc:  # the table reports failures; the traceback tail says where
        res["ran"] = False
        res["error"] = f"{type(exc).__name__}: {exc}"[:400]
        res["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
        return res
    res["params_after"] = common.param_count(pruned)
    try:
        res.update(checks(pruned, args, kwargs, reference_shapes))
    except Exception as exc:
        res.update(shapes_unchanged=False, finite=False, other_batch_ok=False,
                   run_error=f"{type(exc).__name__}: {exc}"[:400])
    return res


# ------------------------------------------------------------------------------------ channel shuffle


def planted_shuffle_cnn():
    """shuffle_cnn with dead units such that removing exactly them (half of every group) is lossless."""
    from slimgraph.testing import make

    model, args, kwargs = make("shuffle_cnn")
    groups = model.groups
    per = 16 // groups
    residual = [c for c in range(16) if c % per in (0, 1)]  # 2 of every conv group's 4 channels
    # between g1 and g2: g1 output (group g, slot i) becomes channel i*groups + g after the shuffle, in g2's
    # input group i. Two dead per g1 group and two per g2 group, a set the shuffle maps to a different set.
    inner = [g * per + i for g in range(groups) for i in range(per) if (i - g) % per in (0, 1)]
    shuffled = [(c % per) * groups + c // per for c in inner]
    with torch.no_grad():
        model.stem.weight[residual] = 0
        model.stem.bias[residual] = 0
        for c in residual:  # grouped conv: input channel c sits in group c // per at slot c % per
            model.g1[0].weight[(c // per) * per:(c // per + 1) * per, c % per] = 0
        model.g1[0].weight[inner] = 0
        model.g1[1].weight[inner] = 0
        model.g1[1].bias[inner] = 0
        model.dw[0].weight[shuffled] = 0
        model.dw[1].weight[shuffled] = 0
        model.dw[1].bias[shuffled] = 0
        for c in shuffled:
            model.g2[0].weight[(c // per) * per:(c // per + 1) * per, c % per] = 0
        model.g2[0].weight[residual] = 0
        model.g2[1].weight[residual] = 0
        model.g2[1].bias[residual] = 0
        model.fc.weight[:, residual] = 0
    return model, args, {"residual": residual, "g1_dead": inner, "dw_dead_after_shuffle": sorted(shuffled)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def shuffle_check() -> dict:
    import torch_pruning as tp

    import slimgraph as sg

    torch.set_num_threads(1)
    model, args, dead = planted_shuffle_cnn()
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    out: dict = {"planted": dead}
    # a hand-made exact pruning of all planted units proves a lossless result exists
    exact = _exact_shuffle_prune(model, dead)
    with torch.no_grad():
        out["hand_exact_rel_error"] = _rel(exact(x), ref)
    out["hand_exact_params"] = common.param_count(exact)

    p = sg.prune(model, args, ratio=0.5, round_to=1)
    report = sg.prune_report(p)
    with torch.no_grad():
        out["slimgraph"] = {"rel_error": _rel(p(x), ref), "params_after": common.param_count(p),
                            "groups": [f"{g.name}: {g.units_before}->{g.units_after} units ({g.status}"
                                       f"{', ' + g.reason if g.reason else ''})" for g in report.groups]}
    t = copy.deepcopy(model)
    common.tp_prune(t, args[0], ratio=0.5, ignored_layers=[t.fc])
    with torch.no_grad():
        out["torch_pruning_metapruner"] = {"rel_error": _rel(t(x), ref), "params_after": common.param_count(t),
                                           "widths": {n: m.out_channels for n, m in t.named_modules()
                                                      if isinstance(m, nn.Conv2d)}}
    t2 = copy.deepcopy(model)
    dg = tp.DependencyGraph().build_dependency(t2, example_inputs=args[0])
    group = dg.get_pruning_group(t2.g1[0], tp.prune_conv_out_channels, idxs=list(dead["g1_dead"]))
    removed = {}
    for dep, idxs in group:
        target = dg._module2name.get(dep.target.module, str(dep.target)) if hasattr(dg, "_module2name") else \
            str(dep.target)
        removed[f"{dep.handler.__name__ if hasattr(dep.handler, '__name__') else dep.handler} on {target}"] = \
            sorted(int(getattr(i, "idx", i)) for i in idxs)
    group.prune()
    with torch.no_grad():
        out["torch_pruning_exact_indices"] = {"rel_error": _rel(t2(x), ref), "indices_per_member": removed}
    return out


def _exact_shuffle_prune(model, dead) -> nn.Module:
    """Remove every planted unit by hand (keeping 2 channels per conv group) - the lossless reference."""
    m = copy.deepcopy(model)
    groups, per = m.groups, 16 // m.groups
    res_keep = [c for c in range(16) if c not in dead["residual"]]
    g1_keep = [c for c in range(16) if c not in dead["g1_dead"]]
    dw_keep = [c for c in range(16) if c not in dead["dw_dead_after_shuffle"]]

    def in_slots(keep):  # kept input channels of a grouped conv -> kept slots (the same in every group here)
        return sorted({c % per for c in keep if c // per == 0})

    with torch.no_grad():
        stem = nn.Conv2d(3, 8, 3, padding=1)
        stem.weight.copy_(m.stem.weight[res_keep])
        stem.bias.copy_(m.stem.bias[res_keep])
        m.stem = stem
        # each group keeps the same slots for the residual (0,1 dead -> slots 2,3 kept)
        g1 = nn.Conv2d(8, 8, 1, groups=groups, bias=False)
        w = m.g1[0].weight[g1_keep]  # [8, 4, 1, 1]
        g1.weight.copy_(w[:, in_slots(res_keep)])
        m.g1[0] = g1
        m.g1[1] = _slice_bn(m.g1[1], g1_keep)
        m.dw[0] = _slice_dw(m.dw[0], dw_keep)
        m.dw[1] = _slice_bn(m.dw[1], dw_keep)
        g2 = nn.Conv2d(8, 8, 1, groups=groups, bias=False)
        for row, o in enumerate(res_keep):  # each group keeps its own 2 input slots (different per group)
            slots = sorted(c % per for c in dw_keep if c // per == o // per)
            g2.weight[row] = m.g2[0].weight[o, slots]
        m.g2[0] = g2
        m.g2[1] = _slice_bn(m.g2[1], res_keep)
        fc = nn.Linear(8, 10)
        fc.weight.copy_(m.fc.weight[:, res_keep])
        fc.bias.copy_(m.fc.bias)
        m.fc = fc
    # the shuffle must map the kept g1 channels, in order, onto the kept dw channels
    order = [(c % per) * groups + c // per for c in g1_keep]
    return _ReorderedShuffle(m, order, dw_keep)


class _ReorderedShuffle(nn.Module):
    """The pruned ShuffleCNN with the shuffle of 8 channels written as the index map of the original one."""

    def __init__(self, m, order, dw_keep):
        super().__init__()
        self.m = m
        self.register_buffer("perm", torch.tensor([order.index(c) for c in dw_keep]), persistent=False)

    def forward(self, x):
        m = self.m
        x = torch.relu(m.stem(x))
        y = m.g2(m.dw(m.g1(x)[:, self.perm]))
        return m.fc(torch.relu(x + y).mean((2, 3)))


def _slice_bn(bn: nn.BatchNorm2d, keep) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep)).eval()
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, attr).copy_(getattr(bn, attr)[keep])
    return new


def _slice_dw(conv: nn.Conv2d, keep) -> nn.Conv2d:
    new = nn.Conv2d(len(keep), len(keep), conv.kernel_size, padding=conv.padding, groups=len(keep), bias=False)
    with torch.no_grad():
        new.weight.copy_(conv.weight[keep])
    return new


# ----------------------------------------------------------------------------------------------- driver


def run_worker(tool: str, names: list[str], timeout: float) -> list[dict]:
    cmd = [sys.executable, "-m", "bench.prune_families", "--worker", tool, "--models", ",".join(names)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        return [{"tool": tool, "model": n, "ran": False, "error": f"timeout after {timeout:.0f} s", "timeout": True}
                for n in names]
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            results = json.loads(line[len("RESULT "):])
            results = results if isinstance(results, list) else [results]
            for r in results:
                r["subprocess_s"] = time.perf_counter() - start
            return results
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return [{"tool": tool, "model": n, "ran": False, "error": f"worker exited {proc.returncode}: {tail}"}
            for n in names]


def _yn(v) -> str:
    return "-" if v is None else ("yes" if v else "**no**")


def main(argv: list[str] | None = None) -> int:
    parser = harness.script_parser(__doc__, SUITE, quick="three models")
    parser.add_argument("--timeout", type=float, default=45.0, help="seconds per model and attempt")
    parser.add_argument("--models", default="", help="comma-separated subset")
    parser.add_argument("--worker", choices=("slimgraph", "torch_pruning", "shuffle"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        res = shuffle_check() if args.worker == "shuffle" else worker(args.worker, args.models.split(","))
        print("RESULT " + json.dumps(res, default=str))
        return 0

    meta = common.run_meta("bench.prune_families", argv)
    wall = time.perf_counter()
    names = [n for n in args.models.split(",") if n] or model_names()
    if args.quick:
        names = [n for n in names if n in ("mlp", "shuffle_cnn", "llama_gqa")] or names[:3]
    # slimgraph: one process for all models (it has no known hang; a timeout would fail them all, and say so);
    # Torch-Pruning: one process per model, so a hang costs one row
    rows = run_worker("slimgraph", names, args.timeout * len(names))
    for name in names:
        rows += run_worker("torch_pruning", [name], args.timeout)
    for res in rows:
        print(f"{res['model']:>16} {res['tool']:>13}: ran={res.get('ran')} shapes={res.get('shapes_unchanged')} "
              f"batch+1={res.get('other_batch_ok')} params {res.get('params_before')}->{res.get('params_after')} "
              f"{res.get('prune_s', float('nan')):.2f}s {res.get('error', '')}", flush=True)
    meta["load_after_pruning"] = harness.load_average()
    shuffle = run_worker("shuffle", ["shuffle_cnn"], args.timeout)[0]
    print("shuffle:", json.dumps(shuffle, default=str)[:1500], flush=True)

    harness.finish_metadata(meta, wall)
    meta.update(torch_threads=1)
    by = {(r["model"], r["tool"]): r for r in rows}

    def cell(r, key):
        return _yn(r.get(key)) if r.get("ran") else "-"

    table_rows = []
    for name in names:
        for tool, label in (("slimgraph", "slimgraph"), ("torch_pruning", "Torch-Pruning")):
            r = by[(name, tool)]
            groups = r.get("groups", {})
            notes = r.get("error") or r.get("other_batch_error") or r.get("shape_change") or r.get("run_error") or ""
            if r.get("ran") and r.get("params_after") == r.get("params_before") and not notes:
                notes = "nothing pruned"
            if tool == "slimgraph" and r.get("ran"):
                detail = (f"{groups.get('pruned', 0)} pruned / {groups.get('unprunable', 0)} unprunable; "
                          f"params with round_to=1: {r.get('params_after_round_to_1')}")
            elif tool == "torch_pruning" and r.get("ran"):
                detail = f"ignored {r.get('ignored_layers')}; num_heads for {r.get('num_heads_given', 0)} Linears"
            else:
                detail = ""
            pct = (f"{r['params_before']} -> {r['params_after']} ({r['params_after'] / r['params_before']:.0%})"
                   if r.get("params_after") else f"{r.get('params_before', '-')} -> -")
            table_rows.append([name, label, _yn(r.get("ran")) + (" (timeout)" if r.get("timeout") else ""),
                               cell(r, "shapes_unchanged"), cell(r, "finite"), cell(r, "other_batch_ok"), pct,
                               f"{r['prune_s']:.2f} s" if "prune_s" in r else "-", detail,
                               notes.replace("|", "/").replace("\n", " ")[:160]])
    handled = {tool: sum(1 for n in names if by[(n, tool)].get("ran") and by[(n, tool)].get("shapes_unchanged")
                         and by[(n, tool)].get("other_batch_ok") and by[(n, tool)].get("finite")
                         and by[(n, tool)].get("params_after", 1e18) < by[(n, tool)].get("params_before", 0))
               for tool in ("slimgraph", "torch_pruning")}
    md = [f"# Which architectures each pruner handles at ratio 0.5 ({'QUICK smoke run' if args.quick else 'full run'})",
          "", *harness.meta_lines(meta),
          "- 1 torch thread; each Torch-Pruning attempt in its own subprocess with a timeout of "
          f"{args.timeout:.0f} s, slimgraph in one subprocess; untimed warm-up prune of the zoo MLP first", "",
          *harness.md_table(["model", "tool", "ran", "output shapes kept", "finite", "runs at batch+1",
                             "params before -> after", "time to prune", "groups / settings", "error or note"],
                            table_rows), "",
          f"Handled (ran, shapes kept, finite, runs at another batch size, fewer parameters): slimgraph "
          f"{handled['slimgraph']}/{len(names)}, Torch-Pruning {handled['torch_pruning']}/{len(names)}.",
          "Parameter counts follow each tool's defaults: slimgraph rounds kept widths up to a multiple of 8 "
          "(round_to=8), Torch-Pruning does not round; slimgraph's count at round_to=1 is in the settings column. "
          "Time to prune: slimgraph end to end (capture + analysis + rewrite + numeric check), Torch-Pruning "
          "MetaPruner construction + step() + the head patch.", ""]
    if shuffle.get("ran", True) and "slimgraph" in shuffle:
        tpm, tpe = shuffle["torch_pruning_metapruner"], shuffle["torch_pruning_exact_indices"]
        sgr = shuffle["slimgraph"]
        md += ["## Channel shuffle with planted dead units", "",
               f"Planted (shuffle_cnn, groups of 4): residual channels {shuffle['planted']['residual']}; g1 outputs "
               f"{shuffle['planted']['g1_dead']}, which the shuffle sends to dw channels "
               f"{shuffle['planted']['dw_dead_after_shuffle']}. Max |output difference| / max |output| on 5 new "
               "inputs:", "",
               *harness.md_table(["pruning of the planted model", "relative output error", "params after"], [
                   ["by hand, exactly the planted units (proves a lossless result exists)",
                    f"{shuffle['hand_exact_rel_error']:.1e}", shuffle["hand_exact_params"]],
                   ["slimgraph sg.prune(ratio=0.5, round_to=1)", f"{sgr['rel_error']:.1e}", sgr["params_after"]],
                   ["Torch-Pruning MetaPruner(ratio=0.5), GroupMagnitudeImportance(p=2)", f"{tpm['rel_error']:.1e}",
                    tpm["params_after"]],
                   ["Torch-Pruning, asked to remove exactly the dead g1 outputs", f"{tpe['rel_error']:.1e}", "-"],
               ]), "",
               "slimgraph groups: " + "; ".join(sgr["groups"]), "",
               "Torch-Pruning's group for the exact-index request (indices removed per member):", "",
               *[f"- {k}: {v}" for k, v in tpe["indices_per_member"].items()], ""]
    else:
        md += ["## Channel shuffle with planted dead units", "", f"check failed: {shuffle.get('error')}", ""]
    payload = {"meta": meta, "results": rows, "handled": handled, "shuffle": shuffle}
    files = harness.write_results(args.out, SUITE, payload, md)
    files.append(plot(args.out, names, by))
    print("\n".join(md))
    print("wrote", ", ".join(map(str, files)))
    return 0


def plot(out, names: list[str], by: dict):
    """Fraction of parameters kept per model and tool; a model the tool did not handle has no bar. Also drawn
    from a committed JSON: ``by`` = {(row["model"], row["tool"]): row for row in its "results"}."""
    def kept(r):
        handled = r.get("ran") and r.get("shapes_unchanged") and r.get("finite") and r.get("other_batch_ok")
        return r["params_after"] / r["params_before"] if handled and r.get("params_after") else None

    series = {label: {n: v for n in names if (v := kept(by[(n, tool)])) is not None}
              for tool, label in (("slimgraph", "slimgraph"), ("torch_pruning", "Torch-Pruning"))}
    return harness.bar_chart(out, SUITE, series, ylabel="parameters kept (fraction; no bar = not handled)",
                             title="ratio 0.5 on each architecture: what each pruner handled")


if __name__ == "__main__":
    raise SystemExit(main())
