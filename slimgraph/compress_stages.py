"""The Deep Compression stages of the main job (issue 13) and the bytes-on-disk breakdown.

    sg.compress(model, x, data=batches, sparsity=0.9, pattern="unstructured", share_bits=5, entropy=True)
    slimgraph compress MODEL --data ... --sparsity 0.9 --pattern unstructured --share-bits 5 --entropy

After pruning (and distillation): ``sparse`` zeroes ``sparsity`` of the GEMM weights (``sg.sparsify``, scored
on the training batches), ``shared`` replaces every weight by a k-means codebook of ``2**share_bits`` centroids
and integer codes, the centroids fine-tuned on the training batches (``sg.share_weights``), and ``entropy``
writes the final archive entropy coded (``sg.save(..., compress=True)``). Every stage's archive is written and
measured, so the report can show dense -> pruned -> sparse -> shared -> coded in bytes on disk.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch.fx as fx

from .errors import ArchiveError


def sparse_stage(result, graph: fx.GraphModule, args: tuple, kwargs: dict, calib, evaluator, stage_fn
                 ) -> fx.GraphModule:
    from .compress import say
    from .sparse import sparsify
    from .sparse.report import last_report

    s = result.settings
    say(f"sparsifying {s['sparsity']:.0%} of the GEMM weights ({s['pattern']}) ...")
    start = time.perf_counter()
    out = sparsify(graph, args, sparsity=s["sparsity"], pattern=s["pattern"],
                   data=[b.for_calibration() for b in calib] or None, example_kwargs=kwargs)
    report = last_report(out)
    note = report.summary() if report is not None else ""
    result.stages.append(stage_fn("sparse", out, out, evaluator, time.perf_counter() - start, note))
    return out


def share_stage(result, graph: fx.GraphModule, args: tuple, kwargs: dict, train, evaluator, stage_fn
                ) -> fx.GraphModule:
    from .compress import say
    from .share import share_weights
    from .share.report import last_report

    s = result.settings
    data = [b.for_distill() for b in train] or None
    say(f"sharing weights ({s['share_bits']}-bit codebooks), centroids fine-tuned on "
        f"{len(train) if data else 0} training batches ...")
    start = time.perf_counter()
    out = share_weights(graph, args, bits=s["share_bits"], data=data, example_kwargs=kwargs)
    report = last_report(out)
    note = report.summary() if report is not None else ""
    result.stages.append(stage_fn("shared", out, out, evaluator, time.perf_counter() - start, note))
    return out


def disk_sizes(result) -> None:
    """Bytes on disk of every stage's archive (plain), and of the final one entropy coded when asked."""
    from .serialize import save

    with tempfile.TemporaryDirectory(prefix="slimgraph-sizes-") as tmp:
        # with an output directory every stage's archive is kept: `python -m slimgraph.demos.retime DIR`
        # re-times them independently of this run
        folder = result.out_dir / "stages" if result.out_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for i, stage in enumerate(result.stages):
            graph = stage.module if isinstance(stage.module, fx.GraphModule) and i else result.original
            try:
                path = Path(save(graph, folder / f"{stage.name}.slimgraph"))
            except ArchiveError as exc:  # reported; the stage's other figures stand
                result.fallbacks.append(f"the {stage.name} stage could not be saved, no bytes-on-disk figure: {exc}")
                continue
            stage.disk_bytes = path.stat().st_size
            if result.out_dir is not None:
                result.files[f"stage {stage.name}"] = str(path)
    if result.settings.get("entropy"):
        if result.out_dir is None:
            with tempfile.TemporaryDirectory(prefix="slimgraph-sizes-") as tmp:
                result.coded_bytes = Path(save(result.final, Path(tmp) / "coded.slimgraph", compress=True)
                                          ).stat().st_size
        else:
            path = save(result.final, result.out_dir / "model.coded.slimgraph", compress=True)
            result.files["model (entropy coded)"] = str(path)
            result.coded_bytes = Path(path).stat().st_size


def disk_breakdown(result) -> list[tuple[str, int]]:
    """(step, bytes on disk): each stage's plain archive, then the entropy-coded final archive."""
    rows = [(s.name if i else "dense (original)", s.disk_bytes) for i, s in enumerate(result.stages)
            if s.disk_bytes is not None]
    if result.coded_bytes is not None:
        rows.append((f"coded ({result.stages[-1].name}, entropy coded)", result.coded_bytes))
    return rows
