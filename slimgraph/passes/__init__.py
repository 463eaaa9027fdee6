"""Pass infrastructure and the registered passes.

Importing this package registers every pass under its pipeline name; see ``registered_passes()``.
"""

from . import dce, fold_bn, fold_constants, fuse  # noqa: F401 - registration
from .base import Pass, PassResult, get_pass, parse_pipeline, register_pass, registered_passes
from .manager import PassManager, PassRecord, PipelineResult, run_pipeline

__all__ = [
    "Pass",
    "PassManager",
    "PassRecord",
    "PassResult",
    "PipelineResult",
    "get_pass",
    "parse_pipeline",
    "register_pass",
    "registered_passes",
    "run_pipeline",
]
