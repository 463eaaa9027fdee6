"""slimgraph: compiler-style pruning, fusion and int8 quantization for PyTorch models.

    import slimgraph as sg
    gm = sg.capture(model, example_inputs)
    opt = sg.optimize(model, example_inputs, pipeline="fold-bn,fuse")
    small = sg.prune(model, example_inputs, ratio=0.5)
    q = sg.quantize(small, example_inputs, scheme="w8a8-dynamic")
    sg.save(q, "model.sg"); q = sg.load("model.sg")
    sg.export_onnx(q, example_inputs, "model.onnx")
    torch.compile(model, backend="slimgraph", options={"quant": "w8a8-dynamic"})
"""

from . import kernels, passes, quant  # noqa: F401 - registers ops and passes
from .api import DEFAULT_PIPELINE, optimize
from .backend import backend  # the factory; the module stays importable as sys.modules["slimgraph.backend"]
from .compress import CompressResult, compress
from .distill import distill, distill_many
from .errors import (
    ArchiveError,
    CaptureError,
    InputError,
    PassError,
    PipelineError,
    SlimgraphError,
    VerificationError,
)
from .ir import capture, graph_info, node_info, to_networkx, verify
from .ir.dynamic import DynamicShapeWarning
from .ir.experts import DenseExpertsWarning
from .onnx_export import export_onnx
from .passes import Pass, PassManager, PassResult, register_pass, registered_passes
from .prune import prune, prune_report
from .quant import quantize
from .serialize import load, save
from .share import share_weights  # registers the share-weights pass
from .sparse import sparsify  # registers the sparsify pass

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PIPELINE",
    "ArchiveError",
    "CaptureError",
    "CompressResult",
    "DenseExpertsWarning",
    "DynamicShapeWarning",
    "InputError",
    "Pass",
    "PassError",
    "PassManager",
    "PassResult",
    "PipelineError",
    "SlimgraphError",
    "VerificationError",
    "backend",
    "capture",
    "compress",
    "distill",
    "distill_many",
    "export_onnx",
    "graph_info",
    "load",
    "node_info",
    "optimize",
    "prune",
    "prune_report",
    "quantize",
    "register_pass",
    "registered_passes",
    "save",
    "share_weights",
    "sparsify",
    "to_networkx",
    "verify",
]
