"""int8 quantization: calibration, static / dynamic / weight-only rewrites to real int8 ops, and a report.

    import slimgraph as sg
    q = sg.quant.quantize(model, (x,), scheme="w8a8", calib=[(x1,), (x2,)], observer="percentile")
    print(sg.quant.last_report(q))

Importing this package registers the ``torch.ops.slimgraph`` int8 ops and the ``quant`` pass.
"""

from . import ops  # noqa: F401 - registers torch.ops.slimgraph.q* ops
from .api import quantize
from .observers import OBSERVERS
from .quant_pass import Quantize
from .report import LayerReport, QuantReport, last_report
from .targets import SCHEMES

__all__ = ["OBSERVERS", "SCHEMES", "LayerReport", "QuantReport", "Quantize", "last_report", "quantize"]
