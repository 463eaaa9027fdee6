"""Export float, pruned and quantized slimgraph models to ONNX.

    sg.export_onnx(model, (x,), "model.onnx")

The model is captured first if it is a plain ``nn.Module``; slimgraph GraphModules are exported as they are.
``torch.onnx.export(dynamo=True)`` re-traces the graph: ``linear_act``/``conv_act`` decompose into ATen ops on
the way, and the int8 ops translate through :data:`slimgraph.quant.onnx_ops.TRANSLATIONS` into QDQ form
(QuantizeLinear / DequantizeLinear with int8 zero points around Gemm, Conv and MatMul), the form ONNX Runtime
and TensorRT turn back into int8 kernels. The batch dimension stays dynamic when the captured graph's is.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import InputError, SlimgraphError
from .ir import dynamic
from .ir.capture import capture
from .ir.info import GRAPH_KEY, graph_info


class ExportError(SlimgraphError):
    """The model could not be written as ONNX."""


def export_onnx(model: nn.Module, example_inputs, path: str | os.PathLike, *, example_kwargs: dict | None = None,
                opset: int = 18) -> Path:
    """Write ``model`` to ``path`` as ONNX (one file, weights included); returns the path.

    Args:
        model: an ``nn.Module`` or a slimgraph GraphModule (captured, optimized, pruned or quantized).
        example_inputs: tuple of positional inputs; ``example_kwargs`` the keyword inputs.
        opset: ONNX opset, at least 13 (per-channel QuantizeLinear/DequantizeLinear).
    """
    if opset < 13:
        raise InputError(f"opset {opset} is too old: per-channel QuantizeLinear/DequantizeLinear need opset >= 13")
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    kwargs = dict(example_kwargs or {})
    if isinstance(model, fx.GraphModule) and GRAPH_KEY in model.meta:
        gm = model
    elif isinstance(model, nn.Module):
        gm = capture(model, args, kwargs)
    else:
        raise InputError(f"export_onnx() needs an nn.Module, got {type(model).__name__}")
    from .quant.onnx_ops import TRANSLATIONS  # onnxscript is only needed here

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = _dynamic_shapes(gm, args, kwargs)
    attempts = [dynamic, None] if dynamic is not None else [None]
    failures = []
    for shapes in attempts:
        try:
            with _quiet():
                program = torch.onnx.export(gm, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                                            custom_translation_table=dict(TRANSLATIONS), dynamic_shapes=shapes,
                                            verbose=False)
            break
        except Exception as exc:  # noqa: BLE001 - both attempts are reported below
            failures.append(exc)
    else:
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {type(failures[-1]).__name__}: "
                          f"{failures[-1]}") from failures[-1]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        program.save(str(tmp), external_data=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _dynamic_shapes(gm: fx.GraphModule, args: tuple, kwargs: dict):
    """dynamic_shapes keeping symbolic exactly the input dims the captured graph keeps symbolic."""
    dims = graph_info(gm).dynamic_dims
    spec = dynamic.spec_for_dims(gm, args, kwargs, dims) if dims else None
    return dynamic.export_spec(spec, args, kwargs, gm)


@contextlib.contextmanager
def _quiet():
    """torch.onnx prints progress lines and warns about ops of packages we never use (torchvision)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.onnx._internal.exporter._registration")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
