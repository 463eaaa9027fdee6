"""CPU benchmark: time to capture + fold-bn + fuse BERT-base and ResNet-50, next to torch.export alone.

    python -m bench.pipeline_cpu [--repeats 3] [--out bench/results]

Models: transformers' BertModel(BertConfig()) at batch 2 x 128 tokens and ResNetModel(ResNetConfig()) at
batch 2 x 3 x 224 x 224, random weights. Each figure is the median of ``--repeats`` warm runs; the first
(cold) run in the process, which pays one-time imports and tracing caches, is reported separately.
Target (issue 2): capture + fold-bn + fuse <= 2 s each on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from bench.run_meta import describe_commit

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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)

    rows = {}
    for name, (model, margs, kwargs) in _models().items():
        cold = _time_once(model, margs, kwargs)
        warm = [_time_once(model, margs, kwargs) for _ in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in warm) for k in warm[0]}
        rows[name] = {"warm_median": med, "cold": cold, "target_s": TARGET_S,
                      "meets_target": med["total_s"] <= TARGET_S}
        print(f"{name}: capture+fold-bn+fuse {med['total_s']:.2f} s warm (cold {cold['total_s']:.2f} s); "
              f"torch.export alone {med['export_only_s']:.2f} s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "python": platform.python_version(), "commit": describe_commit(),
            "repeats": args.repeats}
    (out / "pipeline-cpu.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [
        "# capture + fold-bn + fuse on CPU", "",
        f"{meta['machine']}; torch {meta['torch']}; commit {meta['commit']}; median of {args.repeats} warm runs.",
        "", "| model | torch.export alone | capture | fold-bn + fuse | total | cold total | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        m, c = r["warm_median"], r["cold"]
        lines.append(f"| {name} | {m['export_only_s']:.2f} s | {m['capture_s']:.2f} s | {m['fold_bn_fuse_s']:.2f} s "
                     f"| {m['total_s']:.2f} s | {c['total_s']:.2f} s | <= {TARGET_S:.0f} s | "
                     f"{'yes' if r['meets_target'] else 'no'} |")
    lines += ["", "`capture` = torch.export + canonicalization + metadata; it includes the export time shown "
              "separately in the first column.", ""]
    (out / "pipeline-cpu.md").write_text("\n".join(lines))
    print(f"wrote {out / 'pipeline-cpu.json'} and {out / 'pipeline-cpu.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
