"""The ahead-of-time compile check (bench/aot.py): its IR analysis on hand-written TTIR, and the --fast subset
compiled for sm_90a through the kernels' own launchers (CPU only: Triton's compiler and the wheel's ptxas)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.aot import ARCHS, ctas_per_sm, i32_offset_multiplies

ROOT = Path(__file__).resolve().parent.parent

# x_ptr + rows * stride (i32 x i32: flagged), + pid * 16 (a tile index: not flagged), + rows64 * stride64 (int64).
TTIR = """
  tt.func public @k(%x_ptr: !tt.ptr<i8>, %stride: i32) {
    %c16_i32 = arith.constant 16 : i32 loc(#loc1)
    %pid = tt.get_program_id x : i32 loc(#loc2)
    %start = arith.muli %pid, %c16_i32 : i32 loc(#loc3)
    %range = tt.make_range {end = 16 : i32, start = 0 : i32} : tensor<16xi32> loc(#loc4)
    %splat = tt.splat %start : i32 -> tensor<16xi32> loc(#loc5)
    %rows = arith.addi %splat, %range : tensor<16xi32> loc(#loc6)
    %strides = tt.splat %stride : i32 -> tensor<16xi32> loc(#loc7)
    %offs = arith.muli %rows, %strides : tensor<16xi32> loc(#loc8)
    %ptrs = tt.splat %x_ptr : !tt.ptr<i8> -> tensor<16x!tt.ptr<i8>> loc(#loc9)
    %p1 = tt.addptr %ptrs, %offs : tensor<16x!tt.ptr<i8>>, tensor<16xi32> loc(#loc10)
    %p2 = tt.addptr %ptrs, %rows : tensor<16x!tt.ptr<i8>>, tensor<16xi32> loc(#loc11)
    %rows64 = arith.extsi %offs : tensor<16xi32> to tensor<16xi64> loc(#loc12)
    %s64 = arith.extsi %stride : i32 to i64 loc(#loc13)
    %s64t = tt.splat %s64 : i64 -> tensor<16xi64> loc(#loc14)
    %offs64 = arith.muli %rows64, %s64t : tensor<16xi64> loc(#loc15)
    %p3 = tt.addptr %ptrs, %offs64 : tensor<16x!tt.ptr<i8>>, tensor<16xi64> loc(#loc16)
    tt.return
  }
"""


def test_i32_offset_analysis_flags_index_times_stride_only():
    assert i32_offset_multiplies(TTIR) == ["%offs"]
    widened_only = TTIR.replace("%p1 = tt.addptr %ptrs, %offs", "%p1 = tt.addptr %ptrs, %rows")
    assert i32_offset_multiplies(widened_only) == []


def test_occupancy_estimate():
    h100 = ARCHS[90]
    assert ctas_per_sm(h100, 128, 8, 96 * 1024) == 2  # 128 regs x 256 threads = half the register file
    assert ctas_per_sm(h100, 168, 8, 96 * 1024) == 1
    assert ctas_per_sm(h100, 64, 4, 200 * 1024) == 1  # shared memory bound


@pytest.mark.slow
def test_fast_subset_compiles_for_hopper(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.aot", "--fast", "--jobs", "1", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads((tmp_path / "aot-fast.json").read_text())
    rows = payload["rows"]
    assert payload["environment"]["triton"] and payload["environment"]["command"].startswith("python -m bench.aot")
    assert {r["kernel"] for r in rows} == {"int8_matmul", "w8a16_matmul", "block_sparse", "int8_conv", "quantize"}
    assert all(r["ok"] and r["arch"] == "sm_90a" and not r["spill_stores"] and not r["i32_offset_muls"] for r in rows)
    (gluon,) = [r for r in rows if r["function"] == "_int8_matmul_wgmma_kernel"]
    assert gluon["mma_in_flight"] and 1 in gluon["wgmma_wait_depths"] and gluon["loads"] == "TMA"
    plain = [r for r in rows if r["function"] == "_int8_matmul_kernel"]
    assert plain and all(r["mma"].startswith("wgmma") for r in plain)
    assert "in flight" in (tmp_path / "aot-fast.md").read_text()
