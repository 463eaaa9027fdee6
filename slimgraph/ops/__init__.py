"""Graph-level ``torch.ops.slimgraph`` ops that are not Triton kernels: one module per op holding its schema, fake
(meta) implementation, torch implementation, cost rule and ONNX translation.

Importing this package registers them; passes insert them as ``call_function`` nodes whose tensor arguments are
plain tensors held as graph attributes, so archives store them like any other weight.
"""

from . import semi_structured_linear, sparse_linear  # noqa: F401 - register slimgraph::(semi_structured|sparse)_linear
from .sparse_linear import CsrWeight, sparse_linear_reference, to_csr

__all__ = ["CsrWeight", "sparse_linear_reference", "to_csr"]
