"""A block pattern made by sparsify runs through the Triton BSR kernel (under the interpreter on CPU) and matches the
dense masked reference; 2:4 on CUDA is checked where a GPU exists."""

import pytest
import torch

import slimgraph as sg
from slimgraph.kernels.dispatch import INTERPRET_ENV
from slimgraph.kernels.launch import LAUNCHES
from slimgraph.sparse import last_report

BSR = torch.ops.slimgraph.block_sparse_matmul.default


class Small(torch.nn.Module):
    """Widths that are not multiples of the block: edge tiles are partial."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(40, 48)
        self.fc2 = torch.nn.Linear(48, 24)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_block_pattern_runs_through_the_triton_bsr_kernel_and_matches_dense(monkeypatch):
    model, x = Small().eval(), torch.randn(5, 40)
    dense = sg.sparsify(model, (x,), sparsity=0.5, pattern=(16, 16), scope="local", lower="off")
    lowered = sg.sparsify(model, (x,), sparsity=0.5, pattern=(16, 16), scope="local", lower="always")
    assert sum(n.target is BSR for n in lowered.graph.nodes) == 2
    assert all(r.lowered_to.startswith("slimgraph.block_sparse_matmul") for r in last_report(lowered).layers)
    monkeypatch.setenv(INTERPRET_ENV, "1")
    before = LAUNCHES["_bsr_matmul_kernel"]
    for batch in (x, torch.randn(1, 40), torch.randn(2, 3, 40)):
        torch.testing.assert_close(lowered(batch), dense(batch), rtol=1e-4, atol=1e-4)
    assert LAUNCHES["_bsr_matmul_kernel"] - before == 6  # the kernel ran, not the torch reference


def test_blocks_the_kernel_has_no_tile_for_lower_to_csr():
    model, x = Small().eval(), torch.randn(5, 40)
    sp = sg.sparsify(model, (x,), sparsity=0.5, pattern=(8, 8), lower="always")
    assert not any(n.target is BSR for n in sp.graph.nodes)
    assert all("CSR" in r.lowered_to for r in last_report(sp).layers)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 semi-structured sparsity needs an NVIDIA GPU")
def test_two_four_on_cuda_lowers_and_matches():  # pragma: no cover - GPU only
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128))
    model = model.half().cuda().eval()
    x = torch.randn(64, 128, dtype=torch.half, device="cuda")
    dense = sg.sparsify(model, (x,), pattern="2:4", lower="off")
    lowered = sg.sparsify(model, (x,), pattern="2:4", lower="always")
    assert all("2:4 tensor cores" in r.lowered_to for r in last_report(lowered).layers)
    assert sum(n.target is torch.ops.slimgraph.semi_structured_linear.default for n in lowered.graph.nodes) == 2
    for batch in (x, x[:5], x[:1]):  # row counts that are not a multiple of the kernel's input tile
        torch.testing.assert_close(lowered(batch), dense(batch), rtol=1e-2, atol=1e-2)


def test_two_four_packing_round_trips_and_the_op_runs_on_cpu():
    from slimgraph.ops.semi_structured_linear import semi_structured_problem, to_semi_structured

    model = torch.nn.Linear(128, 64)
    x = torch.randn(3, 128)
    sp = sg.sparsify(model, (x,), pattern="2:4", lower="off")
    w, b = sp.weight.detach().half(), sp.bias.detach().half()
    packed, meta = to_semi_structured(w)
    assert packed.shape == (64, 64)
    y = torch.ops.slimgraph.semi_structured_linear(x.half(), packed, meta, 64, 128, b, "relu")
    torch.testing.assert_close(y.float(), torch.relu(torch.nn.functional.linear(x, w.float(), b.float())),
                               rtol=2e-3, atol=2e-3)
    assert semi_structured_problem(w) == "2:4 tensor cores need an NVIDIA GPU"
    # on CPU the 2:4 pattern lowers to CSR instead
    lowered = sg.sparsify(model, (x,), pattern="2:4", lower="always")
    assert "CSR" in last_report(lowered).layers[0].lowered_to
