"""Weight sparsity: unstructured, N:M and block patterns by importance, verified, recorded for fine-tuning, and
lowered to sparse ops where a measurement says it pays.

    import slimgraph as sg
    sp = sg.sparsify(model, (x,), sparsity=0.9, pattern="unstructured")       # or "2:4", (32, 32)
    print(sg.sparse.last_report(sp))

Fine-tune first, lower after: ``sparsify{lower=off}``, ``sg.distill``, then the ``lower-sparse`` pass.

Importing this package registers the ``sparsify`` and ``lower-sparse`` passes (and, through :mod:`slimgraph.ops`, the
``slimgraph::sparse_linear`` op).
"""

from .. import ops  # noqa: F401 - registers torch.ops.slimgraph.sparse_linear
from .api import sparsify
from .lower_sparse_pass import LowerSparse
from .patterns import Pattern, parse_pattern, verify_pattern
from .report import LayerSparsity, SparsityReport, last_report
from .sparsify_pass import Sparsify
from .verify import verify_sparsity

__all__ = ["LayerSparsity", "LowerSparse", "Pattern", "SparsityReport", "Sparsify", "last_report", "parse_pattern",
           "sparsify", "verify_pattern", "verify_sparsity"]
