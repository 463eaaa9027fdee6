"""CPU benchmark: time to capture + fold-bn + fuse BERT-base and ResNet-50, next to torch.export alone.

    python -m bench.pipeline_cpu [--repeats 3] [--out bench/results]   (default: a scratch directory)

Models: transformers' BertModel(BertConfig()) at batch 2 x 128 tokens and ResNetModel(ResNetConfig()) at
batch 2 x 3 x 224 x 224, random weights. Each figure is the median of ``--repeats`` warm runs; the first
(cold) run in the process, which pays one-time imports and tracing caches, is reported separately.
Target (issue 2): capture + fold-bn + fuse <= 2 s each on the 2-core development machine.
Writes pipeline-cpu.{json,md,png}.
"""

from __future__ import annotations

import statistics
import time

import torch

from bench import harness

SUITE = "pipeline-cpu"
TARGET_S = 2.0


def _models():
    import transformers

    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig()).eval()
    ids = torch.randint(0, 30522, (2, 128))
    mask = torch.ones(2, 128, dtype=torch.long)
    resnet = transformers.ResNetModel(transformers.ResNetConfig()).eval()
    image = torch.randn(2, 3, 224, 224)
    return {
        "bert-base": (bert, (ids,), {"attention_mask": mask}),
        "resnet-50": (resnet, (image,), {}),
    }


def _time_once(model, args, kwargs) -> dict[str, float]:
    import slimgraph as sg
    from slimgraph.passes import PassManager

    start = time.perf_counter()
    torch.export.export(model, args, kwargs, strict=False)
    export_s = time.perf_counter() - start

    start = time.perf_counter()
    gm = sg.capture(model, args, kwargs)
    capture_s = time.perf_counter() - start
    start = time.perf_counter()
    result = PassManager("fold-bn,fuse").run(gm)
    passes_s = time.perf_counter() - start
    return {"export_only_s": export_s, "capture_s": capture_s, "fold_bn_fuse_s": passes_s,
            "total_s": capture_s + passes_s, "nodes_after": len(result.gm.graph.nodes)}


def main(argv: list[str] | None = None) -> int:
    parser = harness.script_parser(__doc__, SUITE)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    meta = harness.run_metadata("bench.pipeline_cpu", argv, repeats=args.repeats)

    rows = {}
    for name, (model, margs, kwargs) in _models().items():
        cold = _time_once(model, margs, kwargs)
        warm = [_time_once(model, margs, kwargs) for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in warm) for k in warm[0]}
        rows[name] = {"warm_median": med, "warm_total_s_each": [r["total_s"] for r in warm], "cold": cold,
                      "target_s": TARGET_S, "meets_target": med["total_s"] <= TARGET_S}
        print(f"{name}: capture+fold-bn+fuse {med['total_s']:.2f} s warm (cold {cold['total_s']:.2f} s); "
              f"torch.export alone {med['export_only_s']:.2f} s")
    harness.finish_metadata(meta, start)

    lines = ["# capture + fold-bn + fuse on CPU", "", *harness.meta_lines(meta),
             f"- median of {args.repeats} warm runs (min-max of the total in brackets); cold = the first run in the "
             "process", ""]
    table = []
    for name, r in rows.items():
        m, c, each = r["warm_median"], r["cold"], r["warm_total_s_each"]
        table.append([name, f"{m['export_only_s']:.2f} s", f"{m['capture_s']:.2f} s", f"{m['fold_bn_fuse_s']:.2f} s",
                      f"{m['total_s']:.2f} s ({min(each):.2f}-{max(each):.2f})", f"{c['total_s']:.2f} s",
                      f"<= {TARGET_S:.0f} s", "yes" if r["meets_target"] else "no"])
    lines += harness.md_table(["model", "torch.export alone", "capture", "fold-bn + fuse", "total", "cold total",
                               "target", "met"], table)
    lines += ["", "`capture` = torch.export + canonicalization + metadata; it includes the export time shown "
              "separately in the first column."]
    files = harness.write_results(args.out, SUITE, {"meta": meta, "results": rows}, lines)
    files.append(plot(args.out, rows))
    print("wrote", ", ".join(map(str, files)))
    return 0


def plot(out, rows: dict):
    """Median warm seconds per step and model against the target; also drawn from a committed JSON's "results"."""
    steps = (("torch.export alone", "export_only_s"), ("capture", "capture_s"), ("fold-bn + fuse", "fold_bn_fuse_s"),
             ("total", "total_s"))
    return harness.bar_chart(out, SUITE, {step: {name: r["warm_median"][key] for name, r in rows.items()}
                                          for step, key in steps},
                             ylabel="seconds (median of warm runs)", title="capture + fold-bn + fuse on CPU",
                             reference=(TARGET_S, f"target {TARGET_S:.0f} s"))


if __name__ == "__main__":
    raise SystemExit(main())
