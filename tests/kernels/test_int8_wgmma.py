"""The Hopper int8 GEMM (Gluon, wgmma in flight): when int8_matmul takes it, the fallback to the plain kernel when
Gluon is missing or too old, and its launch plumbing. The kernel itself cannot run under the interpreter: its
compile is checked by bench/aot.py (tests/test_aot.py), its numbers by the gpu tests on a Hopper GPU."""

import importlib.util
import sys

import pytest
import torch

from slimgraph.kernels import int8_matmul_wgmma
from slimgraph.kernels.dispatch import INTERPRET_ENV
from slimgraph.kernels.launch import LAUNCHES, recording_launches


class _FakeCuda:
    """Just what use_wgmma reads of a CUDA tensor."""

    def __init__(self, *shape, ptr=0):
        self.shape, self._ptr, self.device = shape, ptr, torch.device("cuda", 0)

    def data_ptr(self):
        return self._ptr


@pytest.fixture
def hopper(monkeypatch):
    monkeypatch.delenv(INTERPRET_ENV, raising=False)
    monkeypatch.setattr(int8_matmul_wgmma, "_capability", lambda device: (9, 0))


def test_dispatch_rule_on_hopper(hopper, monkeypatch):
    use = int8_matmul_wgmma.use_wgmma
    assert use(_FakeCuda(128, 4096), _FakeCuda(4096, 4096))
    assert not use(_FakeCuda(64, 4096), _FakeCuda(4096, 4096))  # decode / small batches: the plain kernel
    assert not use(_FakeCuda(128, 4100), _FakeCuda(4096, 4100))  # TMA needs 16-byte row strides
    assert not use(_FakeCuda(128, 4096, ptr=8), _FakeCuda(4096, 4096))  # and 16-byte aligned bases
    monkeypatch.setattr(int8_matmul_wgmma, "_capability", lambda device: (8, 0))
    assert not use(_FakeCuda(128, 4096), _FakeCuda(4096, 4096))  # Ampere: no wgmma
    assert not use(torch.zeros(128, 4096, dtype=torch.int8), torch.zeros(16, 4096, dtype=torch.int8))  # CPU


def test_interpreter_never_takes_gluon(monkeypatch):
    monkeypatch.setattr(int8_matmul_wgmma, "_capability", lambda device: (9, 0))
    assert not int8_matmul_wgmma.use_wgmma(_FakeCuda(128, 4096), _FakeCuda(4096, 4096))


def test_falls_back_when_gluon_is_missing(hopper, monkeypatch):
    # A triton without Gluon: the module still imports, says why, and the dispatch keeps the plain kernel.
    monkeypatch.setitem(sys.modules, "triton.experimental.gluon", None)
    spec = importlib.util.find_spec("slimgraph.kernels.int8_matmul_wgmma")
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    ok, why = fresh.gluon_available()
    assert not ok and "not importable" in why
    monkeypatch.setattr(fresh, "_capability", lambda device: (9, 0))
    assert not fresh.use_wgmma(_FakeCuda(128, 4096), _FakeCuda(4096, 4096))
    with pytest.raises(RuntimeError, match="unavailable"):
        fresh.launch_wgmma(None, None, None, None, None, 0, None, "large")


def test_falls_back_on_older_triton(hopper, monkeypatch):
    monkeypatch.setattr(int8_matmul_wgmma.triton, "__version__", "3.6.0")
    ok, why = int8_matmul_wgmma.gluon_available()
    assert not ok and "3.6.0" in why
    assert not int8_matmul_wgmma.use_wgmma(_FakeCuda(128, 4096), _FakeCuda(4096, 4096))


@pytest.mark.parametrize("bucket,M", [("large", 300), ("m256", 100)])
def test_launch_records_tma_descriptors(bucket, M):
    if not int8_matmul_wgmma.gluon_available()[0]:
        pytest.skip(int8_matmul_wgmma.gluon_available()[1])
    cfg = int8_matmul_wgmma.WGMMA_CONFIGS[bucket]
    bm, bn, bk = (cfg.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    a, b = torch.zeros(M, 256, dtype=torch.int8), torch.zeros(520, 256, dtype=torch.int8)
    out = torch.empty(M, 520, dtype=torch.float16)
    with recording_launches() as records:
        int8_matmul_wgmma.launch_wgmma(a, b, torch.ones(M), torch.ones(520), None, 0, out, bucket)
    (rec,) = records
    assert rec.kernel.fn.__name__ == "_int8_matmul_wgmma_kernel"
    a_desc, b_desc = rec.args[:2]
    assert (a_desc.block_shape, b_desc.block_shape) == ([bm, bk], [bn, bk])
    assert (a_desc.shape, b_desc.shape) == ([M, 256], [520, 256])
    assert rec.constexprs["STAGES"] == cfg.num_stages and rec.constexprs["HAS_BIAS"] is False
    assert rec.args[6:9] == (M, 520, 256)
    assert LAUNCHES["_int8_matmul_wgmma_kernel"] == 0  # recorded, not run
