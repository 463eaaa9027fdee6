"""``slimgraph::sparse_linear``: ``act(x @ W.T + bias)`` with ``W`` stored in CSR form, for weights that are mostly
zero (the ``sparsify`` pass lowers a layer to it only where a measurement says it beats the dense GEMM).

    W [N, K] --to_csr-->  crow_indices int32 [N + 1], col_indices int32 [nnz], values [nnz]

The three tensors are plain dense tensors held as graph attributes (not a ``torch.sparse_csr`` object), so archives,
deep copies and ``state_dict`` treat them like any weight. Schema::

    slimgraph::sparse_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, int n, int k,
                             Tensor? bias, str activation) -> Tensor

Execution: ``torch.sparse.mm`` over a CSR view of the three tensors (MKL sparse BLAS on x86 CPUs, cuSPARSE on
CUDA; int32 indices, which MKL needs for its fast path). For a single row on CPU, scipy's CSR matrix-vector product
is used instead when scipy is installed: torch's CSR path does not beat the dense GEMV there while scipy's does
(bench/results/sparse-mlp-cpu.md, backend rows). scipy's product is single-threaded; for very large weights
(``SCIPY_THREADED_MIN_NNZ`` stored values) the rows are cut into ``torch.get_num_threads()`` blocks of equal nonzero
counts multiplied in a thread pool (scipy releases the GIL), below that the calling thread does it alone, which
measured faster on the shared 2-core machine. fp16/bf16 on CPU compute in fp32 (no sparse half
kernels there). Cost: ``rows x nnz`` MACs. ONNX: densified in the graph (ScatterND of the stored values) and one
``Gemm``; runtimes see a dense layer, exact to the stored values. No autograd: this is an inference form; fine-tune
the dense sparsified model (``graph_info(gm).sparsity``) before lowering.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from math import prod

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..ir.cost import register_macs
from ..kernels.epilogue import ACTIVATIONS, apply_activation

__all__ = ["CsrWeight", "sparse_linear", "sparse_linear_reference", "to_csr"]

OP = "sparse_linear"
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# At most this many rows go through scipy's CSR product on CPU. At one row scipy's product beat torch's CSR call and
# the dense GEMV by >10x in every committed run (bench/results/sparse-mlp-cpu.md); at 2-8 rows torch's was ahead, and
# beyond that the two traded places between runs on the loaded machine, so the threaded torch path keeps them.
SCIPY_MAX_ROWS = 1
# Below this many stored weights the caller's thread alone does the scipy product. A one-row product is memory-bound
# (one core reads the 4096 x 4096 layer at 90% sparsity, 13 MB, in about 1.7 ms, already 4x less than the dense GEMV
# reads), and splitting it over a thread pool lost at every size measured on the 2-core machine, up to that layer
# (1.7 M stored weights): 1.5-8 ms threaded against 1.0-1.7 ms on one thread, interleaved, load 5-6
# (bench/results/sparse-mlp-cpu.md, "scipy CSR, 1 thread"): a pool thread waits for a core that other processes
# hold, and the caller waits for it. Larger layers, not measured, keep the threaded split.
SCIPY_THREADED_MIN_NNZ = 1 << 24
_pool: tuple[int, object] | None = None  # (workers, ThreadPoolExecutor), made on first use


@dataclass(frozen=True)
class CsrWeight:
    """A [N, K] weight in CSR form; build it with :func:`to_csr`."""

    crow_indices: torch.Tensor  # int32 [N + 1]
    col_indices: torch.Tensor  # int32 [nnz], increasing within a row
    values: torch.Tensor  # [nnz], the weight's dtype
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def to_dense(self) -> torch.Tensor:
        return _densify(self.crow_indices, self.col_indices, self.values, *self.shape)


def to_csr(w: torch.Tensor) -> CsrWeight:
    """CSR form of a dense 2-D floating-point weight (exact zeros are dropped)."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.dtype not in _FLOATS:
        got = f"{tuple(w.shape)} {w.dtype}" if isinstance(w, torch.Tensor) else type(w).__name__
        raise InputError(f"to_csr: needs a 2-D floating-point weight [N, K], got {got}")
    if w.numel() >= 2**31:
        raise InputError(f"to_csr: {tuple(w.shape)} has more elements than int32 indices can address")
    with warnings.catch_warnings():  # torch flags its CSR support as beta on every conversion; we use basics only
        warnings.simplefilter("ignore", UserWarning)
        csr = w.detach().to_sparse_csr()
    return CsrWeight(csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
                     csr.values().clone(), (int(w.shape[0]), int(w.shape[1])))


def _densify(crow, col, values, n: int, k: int) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow.long(), col.long(), values, (n, k), check_invariants=True).to_dense()


def _check(x, crow, col, values, n: int, k: int, bias, activation: str) -> None:
    for name, t, dtypes in (("x", x, _FLOATS), ("values", values, _FLOATS),
                            ("crow_indices", crow, (torch.int32,)), ("col_indices", col, (torch.int32,))):
        if not isinstance(t, torch.Tensor) or t.dtype not in dtypes:
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"{OP}: '{name}' must be a tensor of {', '.join(map(str, dtypes))}, got {got}")
    if values.dim() != 1 or col.shape != values.shape:
        raise InputError(f"{OP}: 'values' and 'col_indices' must be 1-D of equal length, got {tuple(values.shape)} "
                         f"and {tuple(col.shape)}")
    if crow.shape != (n + 1,):
        raise InputError(f"{OP}: 'crow_indices' must have n + 1 = {n + 1} entries, got {tuple(crow.shape)}")
    if x.dim() < 1 or x.shape[-1] != k:
        raise InputError(f"{OP}: x has shape {tuple(x.shape)} but the weight is [{n}, {k}]: last dim must be {k}")
    if x.dtype != values.dtype:
        raise InputError(f"{OP}: x is {x.dtype} but the weight values are {values.dtype}; cast one to the other")
    if bias is not None and (bias.shape != (n,) or not bias.is_floating_point()):
        raise InputError(f"{OP}: 'bias' must be a float [{n}] vector, got {tuple(bias.shape)} {bias.dtype}")
    if activation not in ACTIVATIONS:
        raise InputError(f"{OP}: unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
    devices = {t.device for t in (x, crow, col, values, bias) if t is not None}
    if len(devices) > 1:
        raise InputError(f"{OP}: all tensors must be on one device, got {sorted(map(str, devices))}")


def _scipy_rows(x2, crow, col, values, n: int, k: int):
    """scipy's CSR product for a few CPU rows, or None when scipy is missing or the dtype is not fp32/fp64."""
    if x2.device.type != "cpu" or x2.dtype not in (torch.float32, torch.float64):
        return None
    try:
        import scipy.sparse as sps
    except ImportError:
        return None
    xt = x2.numpy().T
    threads = min(torch.get_num_threads(), n)
    if threads <= 1 or values.numel() < SCIPY_THREADED_MIN_NNZ:
        return torch.from_numpy(sps.csr_matrix((values.numpy(), col.numpy(), crow.numpy()), shape=(n, k)) @ xt).T
    ptr = crow.numpy()
    # row blocks holding about the same number of stored weights (the work), as cut points into the rows
    cuts = np.searchsorted(ptr, np.linspace(0, ptr[-1], threads + 1)[1:-1]).tolist()
    bounds = list(zip([0, *cuts], [*cuts, n]))
    out = np.empty((n, xt.shape[1]), dtype=xt.dtype)

    def block(rows: tuple[int, int]) -> None:
        r0, r1 = rows
        lo, hi = int(ptr[r0]), int(ptr[r1])
        part = sps.csr_matrix((values.numpy()[lo:hi], col.numpy()[lo:hi], ptr[r0:r1 + 1] - lo), shape=(r1 - r0, k))
        out[r0:r1] = part @ xt

    list(_thread_pool(threads).map(block, [b for b in bounds if b[1] > b[0]]))
    return torch.from_numpy(out).T


def _thread_pool(workers: int):
    global _pool
    if _pool is None or _pool[0] != workers:  # first use, or torch.set_num_threads changed the count
        from concurrent.futures import ThreadPoolExecutor

        if _pool is not None:
            _pool[1].shutdown(wait=False)  # its idle threads exit; nothing is queued between calls
        _pool = (workers, ThreadPoolExecutor(workers, thread_name_prefix="slimgraph-sparse"))
    return _pool[1]


def _torch_rows(x2, crow, col, values, n: int, k: int) -> torch.Tensor:
    """torch's CSR product (MKL sparse BLAS on x86 CPUs, cuSPARSE on CUDA) as ``[rows, n]`` (a transposed view)."""
    if x2.shape[0] == 0:
        return x2.new_zeros((0, n))
    w = torch.sparse_csr_tensor(crow, col, values, (n, k), check_invariants=False)
    return torch.sparse.mm(w, x2.T).T


def _run(x, crow, col, values, n: int, k: int, bias, activation: str) -> torch.Tensor:
    _check(x, crow, col, values, n, k, bias, activation)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    rows = x2.shape[0]
    compute = x2.dtype
    if x2.device.type == "cpu" and compute in (torch.float16, torch.bfloat16):
        compute = torch.float32
    y = _scipy_rows(x2, crow, col, values, n, k) if rows <= SCIPY_MAX_ROWS else None
    if y is None:
        y = _torch_rows(x2.to(compute), crow, col, values.to(compute), n, k)
    if bias is not None:
        y = y + bias.to(compute)
    y = apply_activation(y, activation)
    return y.to(x.dtype).contiguous().reshape(*lead, n)  # y is a transposed view: callers expect row-major


def sparse_linear_reference(x, crow, col, values, n: int, k: int, bias=None, activation: str = "none"):
    """Pure torch, densifying the weight: what :func:`sparse_linear` must equal."""
    _check(x, crow, col, values, n, k, bias, activation)
    y = F.linear(x.double(), _densify(crow, col, values, n, k).double(), None if bias is None else bias.double())
    return apply_activation(y, activation).to(x.dtype)


@torch.library.custom_op(
    "slimgraph::sparse_linear",
    mutates_args=(),
    schema="(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, int n, int k, Tensor? bias, "
    "str activation) -> Tensor",
)
def _sparse_linear_op(x, crow_indices, col_indices, values, n, k, bias, activation):
    return _run(x, crow_indices, col_indices, values, n, k, bias, activation)


@_sparse_linear_op.register_fake
def _(x, crow_indices, col_indices, values, n, k, bias, activation):
    _check(x, crow_indices, col_indices, values, n, k, bias, activation)
    return x.new_empty((*x.shape[:-1], n))


@register_macs(torch.ops.slimgraph.sparse_linear.default)
def _sparse_linear_macs(ins, out) -> int:
    """Only the stored weights are multiplied: rows x nnz."""
    x, values = ins[0], ins[3]
    if x is None or values is None:
        return 0
    return prod(x[:-1]) * values[0]


def sparse_linear(x: torch.Tensor, w: CsrWeight, bias: torch.Tensor | None = None, activation: str = "none"):
    """``act(x @ w.T + bias)`` for a :class:`CsrWeight` ``w`` (see :func:`to_csr`)."""
    if not isinstance(w, CsrWeight):
        raise InputError(f"{OP}: 'w' must be a CsrWeight (see to_csr), got {type(w).__name__}")
    return torch.ops.slimgraph.sparse_linear(x, w.crow_indices, w.col_indices, w.values, *w.shape, bias, activation)


# ------------------------------------------------------------------------------------------------------------ ONNX


def onnx_translation():
    """The onnxscript translation of the op (imports onnxscript, so only called when exporting)."""
    import numpy as np
    import onnx_ir as ir
    from onnxscript import opset18 as op

    from ..quant.onnx_ops import _activation, _gemm, _restore_rows, _rows

    def const(array):
        return op.Constant(value=ir.tensor(array))

    def sparse_linear_onnx(x, crow_indices, col_indices, values, n: int, k: int, bias=None,
                           activation: str = "none"):
        # Row of every stored value: a 1 where each row's run starts (a row's start may repeat for empty rows,
        # hence reduction="add"; one spare slot takes the starts of trailing empty rows), then a running sum.
        nnz = op.Shape(values)
        starts = op.Slice(op.Cast(crow_indices, to=ir.DataType.INT64), const(np.array([1], np.int64)),
                          const(np.array([n], np.int64)))
        marks = op.ScatterElements(
            op.ConstantOfShape(op.Add(nnz, const(np.array([1], np.int64))), value=ir.tensor(np.zeros(1, np.int64))),
            starts, op.Expand(const(np.array([1], np.int64)), op.Shape(starts)), axis=0, reduction="add")
        rows = op.CumSum(op.Slice(marks, const(np.array([0], np.int64)), nnz), const(np.array(0, np.int64)))
        cols = op.Cast(col_indices, to=ir.DataType.INT64)
        indices = op.Concat(op.Unsqueeze(rows, const(np.array([1], np.int64))),
                            op.Unsqueeze(cols, const(np.array([1], np.int64))), axis=1)
        dense = op.ScatterND(op.CastLike(op.ConstantOfShape(const(np.array([n, k], np.int64))), values), indices,
                             values)
        y = _activation(_gemm(_rows(x, k), dense, bias), activation)
        return _restore_rows(y, x, n)

    return sparse_linear_onnx


def register_onnx_translation() -> bool:
    """Add the translation to the table ``export_onnx`` uses; False when onnxscript is not installed."""
    try:
        from ..quant.onnx_ops import TRANSLATIONS
    except ImportError:
        return False
    TRANSLATIONS.setdefault(torch.ops.slimgraph.sparse_linear.default, onnx_translation())
    return True
