"""A block pattern made by sparsify runs through the Triton BSR kernel (under the interpreter on CPU) and matches the
dense masked reference; 2:4 on CUDA is checked where a GPU exists."""

import pytest
import torch

import slimgraph as sg
from slimgraph.kernels._triton_utils import INTERPRET_ENV, LAUNCHES
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
    assert last_report(lowered).lowered
    torch.testing.assert_close(lowered(x), dense(x), rtol=1e-2, atol=1e-2)
