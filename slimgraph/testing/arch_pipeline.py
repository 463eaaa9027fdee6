"""One architecture-matrix row: capture -> prune -> quantize (w8a8-dynamic) -> save/load -> ONNX -> onnxruntime.

``run_pipeline(name)`` returns a plain dict of figures and per-step errors; a failing step records its error and
the steps that need its result are marked as not run, so one row always comes back. Used by
``tests/test_arch_matrix.py`` and ``bench/arch_matrix.py``.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.fx as fx

from ..ir.graph_utils import get_attr_tensor
from ..numerics import compare_outputs, run_module
from .archs import ARCHS, make_arch, other_inputs

aten = torch.ops.aten
_EMBEDDINGS = {aten.embedding.default, aten._embedding_bag.default, aten.embedding_bag.default,
               aten.embedding_bag.padding_idx, aten._embedding_bag_forward_only.default}

RATIO = 0.5


def embedding_params(gm: fx.GraphModule) -> int:
    """Parameters of the tables read by embedding lookups (not what structured pruning aims at)."""
    seen = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _EMBEDDINGS:
            w = node.args[0]
            t = get_attr_tensor(gm, w) if isinstance(w, fx.Node) else None
            if t is not None:
                seen[w.target] = t.numel()
    return sum(seen.values())


def total_params(gm: fx.GraphModule) -> int:
    return sum(p.numel() for p in gm.parameters()) + sum(b.numel() for n, b in gm.named_buffers()
                                                         if b.is_floating_point() and "running" not in n)


def sqnr_db(actual, reference) -> float:
    """Signal-to-quantization-noise ratio over all floating-point outputs (the worst tensor)."""
    return compare_outputs(actual, reference).sqnr_db


def _ort_outputs(path: Path, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    values = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    feeds = {i.name: v.numpy() for i, v in zip(session.get_inputs(), values)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def _err(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" [{Path(frame.filename).name}:{frame.lineno}]" if frame else ""
    return f"{type(exc).__name__}: {exc}"[:400] + where


def run_pipeline(name: str, *, onnx: bool = True) -> dict:
    import slimgraph as sg
    from slimgraph.quant.coverage import gemm_weight_coverage

    row: dict = {"model": name, "family": ARCHS[name].family}
    model, args, kwargs = make_arch(name)
    model.eval()
    # two shapes every step must take (the example and batch + 1), and another sequence length where the model
    # reads a sequence: recorded as its own figure, since static-sequence capture is a known limit
    shapes = {"example": (args, kwargs), "batch": other_inputs(name, args, kwargs, seq=False)}
    if ARCHS[name].seq_dim is not None:
        shapes["seq"] = other_inputs(name, args, kwargs)
    refs = {k: run_module(model, a, kw) for k, (a, kw) in shapes.items()}
    t0 = time.perf_counter()
    try:
        gm = sg.capture(model, args, example_kwargs=kwargs)
        row["capture_s"] = time.perf_counter() - t0
        for key in shapes:
            row[f"capture_{key}_ok"] = _close(gm, shapes[key], refs[key], row, f"capture_{key}")
    except Exception as exc:  # a row, not a crash: the matrix records every failure
        row["capture_error"] = _err(exc)
        return row
    emb = embedding_params(gm)
    before = total_params(gm)
    row["params"], row["embedding_params"] = before, emb
    t0 = time.perf_counter()
    try:
        pruned = sg.prune(gm, args, ratio=RATIO, example_kwargs=kwargs)  # the captured graph: no second capture
        row["prune_s"] = time.perf_counter() - t0
        after = total_params(pruned)
        row["params_after_prune"] = after
        row["nonemb_removed"] = (before - after) / max(1, before - emb)
        report = sg.prune_report(pruned)
        cov = getattr(report, "coverage", None)
        if cov is not None:
            row["prune_gemm_coverage"] = cov.fraction
        row["prune_blocked"] = sorted({g.reason for g in report.groups if g.status == "unprunable"})[:6]
        for key, (a, kw) in shapes.items():
            row[f"prune_{key}_ok"] = _finite_same_shape(pruned, a, kw, refs[key], row, f"prune_{key}")
    except Exception as exc:
        row["prune_error"] = _err(exc)
        pruned = gm
    base = pruned
    base_refs = {}
    for key, (a, kw) in shapes.items():  # the float reference of the quantized model, where it runs
        try:
            base_refs[key] = run_module(base, a, kw)
        except Exception:  # already recorded as the prune (or capture) step's error at this shape
            base_refs[key] = None
    t0 = time.perf_counter()
    try:
        q = sg.quantize(base, args, scheme="w8a8-dynamic", example_kwargs=kwargs)
        row["quantize_s"] = time.perf_counter() - t0
        cov = gemm_weight_coverage(q)
        row["int8_gemm_fraction"] = cov.fraction
        row["int8_left_out"] = [f"{t.name} ({t.numel}): {t.reason}" for t in cov.left_out[:4]]
        for key, (a, kw) in shapes.items():
            try:
                out = run_module(q, a, kw)
                row[f"sqnr_{key}_db"] = sqnr_db(out, base_refs[key]) if base_refs[key] is not None else None
            except Exception as exc:
                row[f"quantize_{key}_error"] = _err(exc)
    except Exception as exc:
        row["quantize_error"] = _err(exc)
        return row
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = sg.save(q, Path(tmp) / f"{name}.sg")
            loaded = sg.load(path)
            for key, (a, kw) in shapes.items():
                try:
                    err = compare_outputs(run_module(loaded, a, kw), run_module(q, a, kw))
                    row[f"save_load_{key}_ok"] = err.max_rel < 1e-5
                except Exception as exc:
                    row[f"save_load_{key}_error"] = _err(exc)
        except Exception as exc:
            row["save_load_error"] = _err(exc)
        if onnx:
            _onnx_rows(q, shapes, row, Path(tmp) / f"{name}.onnx", args, kwargs)
    return row


def _onnx_rows(q, shapes, row, path, args, kwargs) -> None:
    import slimgraph as sg

    try:
        sg.export_onnx(q, args, path, example_kwargs=kwargs)
    except Exception as exc:
        row["onnx_error"] = _err(exc)
        return
    for key, (a, kw) in shapes.items():
        try:
            got = _ort_outputs(path, a, kw)
            ref = [t for t in torch.utils._pytree.tree_leaves(run_module(q, a, kw)) if isinstance(t, torch.Tensor)]
            row[f"onnx_{key}_sqnr_db"] = sqnr_db(got, ref[:len(got)])
            row[f"onnx_{key}_ok"] = len(got) == len(ref) and all(g.shape == r.shape for g, r in zip(got, ref))
        except Exception as exc:
            row[f"onnx_{key}_error"] = _err(exc)


def _close(model, inputs, ref, row, step) -> bool:
    a, kw = inputs
    try:
        err = compare_outputs(run_module(model, a, kw), ref)
    except Exception as exc:
        row[f"{step}_error"] = _err(exc)
        return False
    return err.max_rel < 1e-3


def _finite_same_shape(model, a, kw, ref, row, step) -> bool:
    from torch.utils._pytree import tree_leaves

    try:
        out = [t for t in tree_leaves(run_module(model, a, kw)) if isinstance(t, torch.Tensor)]
    except Exception as exc:
        row[f"{step}_error"] = _err(exc)
        return False
    ref = [t for t in tree_leaves(ref) if isinstance(t, torch.Tensor)]
    return len(out) == len(ref) and all(o.shape == r.shape and bool(torch.isfinite(o).all()) for o, r in zip(out, ref)
                                        if o.is_floating_point())
