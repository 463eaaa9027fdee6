import os

import pytest
import torch
import torch.nn as nn
from helpers import assert_identical, run

import slimgraph as sg
from slimgraph.errors import ArchiveError
from slimgraph.testing import make


@pytest.mark.parametrize("name", ["mlp", "residual_cnn", "bert", "llama_gqa", "swin"])
def test_roundtrip_reproduces_outputs_exactly(name, tmp_path):
    model, args, kwargs = make(name)
    opt = sg.optimize(model, args, example_kwargs=kwargs)
    path = sg.save(opt, tmp_path / "model.sg")
    loaded = sg.load(path)
    assert type(run(loaded, args, kwargs)) is type(run(opt, args, kwargs))  # output structure kept
    assert_identical(run(loaded, args, kwargs), run(opt, args, kwargs))
    assert sg.graph_info(loaded).applied == sg.graph_info(opt).applied
    assert sg.graph_info(loaded).dynamic_dims == sg.graph_info(opt).dynamic_dims
    # other sizes in the dims capture left symbolic: the archive accepts exactly what the saved module accepts
    other_args, other_kwargs = _resized(opt, args, kwargs)
    assert_identical(run(loaded, other_args, other_kwargs), run(opt, other_args, other_kwargs))
    # the reloaded graph is a full IR citizen: passes run on it again
    again = sg.PassManager("fold-bn,fuse", check_numerics=True).run(loaded).gm
    assert_identical(run(again, args, kwargs), run(opt, args, kwargs))


def _resized(gm, args, kwargs):
    """The example inputs grown by one in every dim capture recorded as dynamic (values drawn alike)."""
    import torch.utils._pytree as pytree

    flat, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    names = gm.graph._codegen.pytree_info.orig_args
    dynamic = sg.graph_info(gm).dynamic_dims
    assert dynamic, "the test needs a dynamic dim"
    grown = []
    for t, name in zip(flat, names):
        shape = [size + (d in dynamic.get(name, ())) for d, size in enumerate(t.shape)]
        grown.append(torch.randn(shape, dtype=t.dtype) if t.is_floating_point()
                     else torch.randint(0, int(t.max()) + 1, shape, dtype=t.dtype))
    return pytree.tree_unflatten(grown, spec)


def test_file_holds_no_pickle_and_is_plain_safetensors(tmp_path):
    from safetensors import safe_open

    model, args, _ = make("mlp")
    path = sg.save(sg.optimize(model, args), tmp_path / "m.sg")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == "slimgraph" and "graph" in meta
    assert "fc1.weight" in keys
    assert _safetensors_layout(path.read_bytes()) == keys  # every byte is header JSON or a listed tensor's data


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _safetensors_layout(data: bytes) -> set[str]:
    """Checks that ``data`` is nothing but the safetensors layout and returns its tensor names.

    Layout: an 8-byte little-endian header length N, N bytes of JSON (string metadata + one entry per tensor),
    then the tensors' raw bytes, which must tile the rest of the file exactly (no gaps, no overlaps, nothing
    after). A file that passes holds no room for a pickle (or any other) payload anywhere.
    """
    import json
    import math

    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    assert all(isinstance(v, str) for v in header.pop("__metadata__", {}).values())
    spans = []
    for name, entry in header.items():
        assert set(entry) == {"dtype", "shape", "data_offsets"}, (name, entry)
        start, end = entry["data_offsets"]
        assert end - start == math.prod(entry["shape"]) * _DTYPE_BYTES[entry["dtype"]], name
        spans.append((start, end))
    position = 0
    for start, end in sorted(spans):
        assert start == position, f"gap or overlap in the data region at byte {position}"
        position = end
    assert 8 + n + position == len(data), "bytes after the last tensor"
    return set(header)


def test_tied_weights_stay_tied(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))

    ids = torch.randint(0, 10, (2, 3))
    gm = sg.capture(Tied(), (ids,))
    loaded = sg.load(sg.save(gm, tmp_path / "t.sg"))
    assert_identical(loaded(ids), gm(ids))
    assert len({id(p) for p in loaded.parameters()}) == 1


def test_int8_and_buffers_keep_their_dtype(tmp_path):
    class Q(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.randint(-127, 128, (4, 6), dtype=torch.int8))
            self.register_buffer("s", torch.rand(4))

        def forward(self, x):
            return x @ (self.w.float() * self.s[:, None]).t()

    x = torch.randn(2, 6)
    gm = sg.capture(Q(), (x,))
    loaded = sg.load(sg.save(gm, tmp_path / "q.sg"))
    assert loaded.w.dtype == torch.int8
    assert_identical(loaded(x), gm(x))


def test_corrupt_truncated_and_foreign_files_get_clear_errors(tmp_path):
    model, args, _ = make("mlp")
    good = sg.save(sg.optimize(model, args), tmp_path / "good.sg")

    truncated = tmp_path / "truncated.sg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        sg.load(truncated)

    garbage = tmp_path / "garbage.sg"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(ArchiveError, match="not a readable slimgraph archive"):
        sg.load(garbage)

    pickled = tmp_path / "model.pt"
    torch.save(model, pickled)
    with pytest.raises(ArchiveError, match="never loaded"):
        sg.load(pickled)

    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ArchiveError, match="not a slimgraph archive"):
        sg.load(plain)

    with pytest.raises(ArchiveError, match="no such file"):
        sg.load(tmp_path / "missing.sg")


def test_tampered_graph_cannot_call_arbitrary_functions(tmp_path):
    from test_archive_attacks import reseal

    model, args, _ = make("mlp")
    path = sg.save(sg.optimize(model, args), tmp_path / "m.sg")

    def edit(description, metadata, tensors):
        next(n for n in description["nodes"] if n[1] == "call_function")[2] = "os.system"

    reseal(path, edit)
    with pytest.raises(ArchiveError, match="call target 'os.system' is not allowed"):
        sg.load(path)


@pytest.mark.parametrize("fail_at", ["open", "tensor bytes", "fsync", "replace"])
def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch, fail_at):
    from slimgraph.archive import container

    model, args, _ = make("mlp")
    opt = sg.optimize(model, args)
    path = sg.save(opt, tmp_path / "m.sg")
    before = path.read_bytes()

    def broken(*a, **k):
        raise OSError("disk full")

    def chunks_then_fail(t):
        yield memoryview(b"partial")
        raise OSError("disk full")

    if fail_at == "tensor bytes":
        monkeypatch.setattr(container, "_byte_chunks", chunks_then_fail)
    else:
        monkeypatch.setattr(container.os, fail_at, broken)
    with pytest.raises(ArchiveError, match="disk full"):
        sg.save(opt, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.sg"]  # no temporary files left behind


def test_interrupted_save_removes_its_temporary_file(tmp_path, monkeypatch):
    from slimgraph.archive import container

    model, args, _ = make("mlp")

    def interrupted(t):
        yield memoryview(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(container, "_byte_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sg.save(sg.optimize(model, args), tmp_path / "m.sg")
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_plain_modules(tmp_path):
    with pytest.raises(ArchiveError, match="produced by slimgraph"):
        sg.save(nn.Linear(2, 2), tmp_path / "x.sg")
