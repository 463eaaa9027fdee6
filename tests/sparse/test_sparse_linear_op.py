"""slimgraph::sparse_linear: matches the dense layer (both CPU backends, odd shapes, dtypes, activations), traces
with fake tensors, counts its MACs, rejects bad arguments, and exports to ONNX exactly."""

import pytest
import torch
import torch.nn.functional as F

from slimgraph import InputError
from slimgraph.ops.sparse_linear import SCIPY_MAX_ROWS, CsrWeight, sparse_linear, sparse_linear_reference, to_csr


def sparse_weight(n, k, density=0.2, dtype=torch.float32):
    w = torch.randn(n, k) * (torch.rand(n, k) < density)
    w[min(2, n - 1)] = 0  # an empty row
    return w.to(dtype)


@pytest.mark.parametrize("lead", [(1,), (SCIPY_MAX_ROWS,), (SCIPY_MAX_ROWS + 1,), (3, 7), (0,)])
@pytest.mark.parametrize(("n", "k"), [(37, 53), (1, 13), (64, 31)])
@pytest.mark.parametrize("act", ["none", "relu", "gelu"])
def test_matches_the_dense_layer(lead, n, k, act):
    w, b = sparse_weight(n, k), torch.randn(n)
    x = torch.randn(*lead, k)
    csr = to_csr(w)
    assert isinstance(csr, CsrWeight) and csr.nnz == int((w != 0).sum()) and torch.equal(csr.to_dense(), w)
    y = sparse_linear(x, csr, b, act)
    expected = F.linear(x.double(), w.double(), b.double())
    expected = {"none": expected, "relu": torch.relu(expected), "gelu": F.gelu(expected)}[act].float()
    assert y.shape == (*lead, n) and y.is_contiguous()
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse_linear_reference(x, csr.crow_indices, csr.col_indices, csr.values, n, k, b,
                                                       act), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 2e-3), (torch.bfloat16, 2e-2), (torch.float64, 1e-12)])
def test_other_float_dtypes(dtype, tol):
    w = sparse_weight(24, 40, dtype=dtype)
    x = torch.randn(9, 40, dtype=dtype)
    y = sparse_linear(x, to_csr(w))
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), F.linear(x.double(), w.double()), rtol=tol, atol=tol)


def test_all_zero_weight_gives_the_bias():
    b = torch.randn(5)
    y = sparse_linear(torch.randn(3, 8), to_csr(torch.zeros(5, 8)), b)
    torch.testing.assert_close(y, b.expand(3, 5))


def test_fake_tensors_and_macs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from slimgraph.ir.cost import _RULES

    csr = to_csr(sparse_weight(16, 32))
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.randn(2, 3, 32))
        parts = [mode.from_tensor(t) for t in (csr.crow_indices, csr.col_indices, csr.values)]
        y = torch.ops.slimgraph.sparse_linear(x, *parts, 16, 32, None, "none")
    assert y.shape == (2, 3, 16)
    rule = _RULES[torch.ops.slimgraph.sparse_linear.default]
    assert rule([(2, 3, 32), (17,), (csr.nnz,), (csr.nnz,)], (2, 3, 16)) == 6 * csr.nnz


@pytest.mark.parametrize(("change", "match"), [
    (lambda a: a.update(x=torch.randn(2, 31)), "last dim must be 32"),
    (lambda a: a.update(x=torch.randn(2, 32, dtype=torch.float64)), "cast one to the other"),
    (lambda a: a.update(crow=a["crow"].long()), "'crow_indices' must be a tensor of torch.int32"),
    (lambda a: a.update(crow=a["crow"][:-1]), "n \\+ 1 = 17"),
    (lambda a: a.update(bias=torch.randn(15)), "'bias' must be a float \\[16\\]"),
    (lambda a: a.update(act="swish"), "unknown activation"),
])
def test_bad_arguments_are_input_errors(change, match):
    csr = to_csr(sparse_weight(16, 32))
    args = {"x": torch.randn(2, 32), "crow": csr.crow_indices, "col": csr.col_indices, "values": csr.values,
            "bias": None, "act": "none"}
    change(args)
    with pytest.raises(InputError, match=match):
        torch.ops.slimgraph.sparse_linear(args["x"], args["crow"], args["col"], args["values"], 16, 32, args["bias"],
                                          args["act"])
    with pytest.raises(InputError, match="2-D floating-point"):
        to_csr(torch.ones(3, 4, dtype=torch.int64))


@pytest.mark.slow  # torch.onnx export plus the onnxscript import: ~10 s on 2 cores
def test_lowered_model_exports_to_onnx_and_matches(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import slimgraph as sg

    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.GELU(), torch.nn.Linear(40, 6)).eval()
    x = torch.randn(3, 24)
    sp = sg.sparsify(model, (x,), sparsity=0.8, lower="always")
    assert sum(n.target == torch.ops.slimgraph.sparse_linear.default for n in sp.graph.nodes) == 2
    path = sg.export_onnx(sp, (x,), tmp_path / "sparse.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), sp(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_threaded_scipy_row_blocks_match_one_thread(monkeypatch, threads):
    pytest.importorskip("scipy")
    import slimgraph.ops.sparse_linear as sl

    w = sparse_weight(37, 50)
    w[5:12] = 0  # empty rows: block cuts may fall on them
    w[30:] = 0
    csr = to_csr(w)
    x = torch.randn(1, 50)
    old = torch.get_num_threads()
    monkeypatch.setattr(sl, "SCIPY_THREADED_MIN_NNZ", 0)
    try:
        torch.set_num_threads(1)
        single = sparse_linear(x, csr)
        torch.set_num_threads(threads)
        threaded = sparse_linear(x, csr)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(threaded, single)  # each row is the same product, only computed on another thread
    torch.testing.assert_close(threaded, F.linear(x.double(), w.double()).float(), rtol=1e-5, atol=1e-5)
    assert sl._pool is not None and sl._pool[0] == threads
