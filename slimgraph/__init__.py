"""slimgraph: compiler-style pruning, fusion and int8 quantization for PyTorch models.

    import slimgraph as sg
    gm = sg.capture(model, example_inputs)
    opt = sg.optimize(model, example_inputs, pipeline="fold-bn,fuse")
    sg.save(opt, "model.sg"); opt = sg.load("model.sg")
"""

from . import kernels, passes  # noqa: F401 - registers ops and passes
from .api import DEFAULT_PIPELINE, optimize
from .backend import backend  # the factory; the module stays importable as sys.modules["slimgraph.backend"]
from .distill import distill
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
from .passes import Pass, PassManager, PassResult, register_pass, registered_passes
from .prune import prune, prune_report
from .serialize import load, save

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PIPELINE",
    "ArchiveError",
    "CaptureError",
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
    "distill",
    "graph_info",
    "load",
    "node_info",
    "optimize",
    "prune",
    "prune_report",
    "register_pass",
    "registered_passes",
    "save",
    "to_networkx",
    "verify",
]
