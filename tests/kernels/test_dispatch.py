"""The dispatch rule and launch plumbing shared by the kernels: where kernel functions run, which configs a launch
may use, the tile tables, the activation codes and the interpreter twins."""

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from slimgraph import InputError
from slimgraph.kernels import dispatch, epilogue, interpreter, launch, tiles
from slimgraph.kernels.int8_matmul import CONFIGS, INTERPRETER_CONFIG

REPO = Path(__file__).resolve().parents[2]


def test_dispatch_rule(monkeypatch):
    cpu = torch.ones(1)
    assert dispatch.use_triton(cpu)  # the conftest sets TRITON_INTERPRET=1
    assert dispatch.use_triton(None, cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not dispatch.use_triton(cpu)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not dispatch.use_triton(cpu)
    assert not dispatch.use_triton(torch.ones(1, device="meta"))


def test_candidate_configs(monkeypatch):
    bucket = CONFIGS["large"]
    assert launch.candidate_configs(bucket, interpreter_config=INTERPRETER_CONFIG) == [INTERPRETER_CONFIG]
    assert launch.candidate_configs(bucket, interpreter_config=INTERPRETER_CONFIG, config=bucket[2]) == [bucket[2]]
    monkeypatch.delenv("TRITON_INTERPRET")
    assert launch.candidate_configs(bucket, interpreter_config=INTERPRETER_CONFIG) == bucket  # autotune over the bucket
    monkeypatch.setenv(dispatch.AUTOTUNE_ENV, "0")
    assert launch.candidate_configs(bucket, interpreter_config=INTERPRETER_CONFIG) == [bucket[0]]


def test_m_buckets():
    assert [tiles.m_bucket(m) for m in (1, 16, 17, 64, 65, 256, 257, 8192)] == [
        "m16", "m16", "m64", "m64", "m256", "m256", "large", "large",
    ]  # fmt: skip


def test_every_bucket_lists_only_tensor_core_legal_tiles():
    # import_module: the package attributes int8_matmul / w8a16_matmul are the functions, not the modules.
    module = lambda name: importlib.import_module(f"slimgraph.kernels.{name}")
    for name, int8 in (("int8_matmul", True), ("w8a16_matmul", False), ("int8_conv", True)):
        configs = module(name).CONFIGS
        # conv: few channels per group (the RGB stem) take the "narrow" configs whatever M is
        assert set(configs) == {"m16", "m64", "m256", "large"} | ({"narrow"} if name == "int8_conv" else set())
        for config in (c for bucket in configs.values() for c in bucket):
            kw = config.kwargs
            assert kw["BLOCK_M"] >= 16 and kw["BLOCK_N"] >= 16 and kw["BLOCK_K"] >= (32 if int8 else 16)
            assert config.num_warps in (4, 8)
    assert set(module("block_sparse").CONFIGS) == {"m16", "m64", "m256", "large"}


def test_activation_codes_follow_the_shared_table():
    assert epilogue.activation_code("op", None) == 0
    assert epilogue.activation_code("op", "gelu") == epilogue.ACTIVATION_CODES["gelu"]
    with pytest.raises(InputError, match="op: unknown activation 'mish'"):
        epilogue.activation_code("op", "mish")


def test_interpreter_twin_of_a_gpu_compiled_kernel():
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from slimgraph.kernels.int8_matmul import _int8_matmul_kernel

    twin = interpreter.interpreter_twin(_int8_matmul_kernel)
    assert isinstance(twin, InterpretedFunction)
    if isinstance(_int8_matmul_kernel, JITFunction):  # imported before TRITON_INTERPRET was set (the usual case)
        assert interpreter.interpreter_twin(_int8_matmul_kernel) is twin  # cached
        helper = twin.fn.__globals__["k_major_tiles"]  # a helper in another module, and the helper it calls
        assert helper is interpreter.interpreter_twin(tiles.k_major_tiles)
        assert helper.fn.__globals__["grouped_tile"] is interpreter.interpreter_twin(tiles.grouped_tile)


def test_interpreter_set_before_import_in_a_fresh_process():
    # The other way to run the interpreter: TRITON_INTERPRET=1 before triton is imported, as Triton documents.
    script = textwrap.dedent(
        """
        import torch
        from slimgraph.kernels import int8_matmul, quantize_per_token
        from slimgraph.kernels.launch import LAUNCHES
        from slimgraph.kernels.int8_matmul import _int8_matmul_kernel, int8_matmul_reference
        from triton.runtime.interpreter import InterpretedFunction
        assert isinstance(_int8_matmul_kernel, InterpretedFunction)
        x = torch.randn(5, 40)
        q, s = quantize_per_token(x)
        w = torch.randint(-127, 128, (9, 40), dtype=torch.int8)
        ws = torch.rand(9) * 0.01
        out = int8_matmul(q, w, s, ws, activation="relu", out_dtype=torch.float32)
        torch.testing.assert_close(out, int8_matmul_reference(q, w, s, ws, None, "relu", torch.float32))
        assert LAUNCHES["_int8_matmul_kernel"] == 1 and LAUNCHES["_norm_quant_kernel"] == 1, LAUNCHES
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
