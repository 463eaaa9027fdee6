"""Archive format 2: integrity seal, entropy-coded archives, dynamic shapes and graph metadata round trips."""

import operator

import pytest
import torch
import torch.nn as nn
from helpers import assert_identical
from test_archive_attacks import reseal

import slimgraph as sg
from slimgraph.errors import ArchiveError


class Heads(nn.Module):
    """Splits channels into heads with a reshape whose sizes are computed from the input's (symbolic) shape."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        flat = self.qkv(x).reshape(b * t, c)  # SymInt product
        h = flat.reshape(b, t, self.heads, c // self.heads).transpose(1, 2)
        return self.out(h.transpose(1, 2).reshape(b, t, c))[:, : (t + 1) // 2]  # SymInt sum and division


def test_a_flipped_bit_anywhere_is_detected(tmp_path):
    """Every byte of a small archive, each with one bit flipped (bit index cycling): never a silent load."""
    path = sg.save(sg.capture(nn.Linear(3, 2), (torch.randn(2, 3),)), tmp_path / "m.sg")
    good = path.read_bytes()
    assert len(good) < 4096
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 1 << (i % 8)
        path.write_bytes(bytes(bad))
        with pytest.raises(ArchiveError):
            sg.load(path)


def test_file_is_plain_safetensors(tmp_path):
    from safetensors.torch import load_file

    gm = sg.capture(nn.Linear(3, 2), (torch.randn(2, 3),))
    tensors = load_file(str(sg.save(gm, tmp_path / "m.sg")))
    assert torch.equal(tensors["weight"], gm.weight) and torch.equal(tensors["bias"], gm.bias)


def _sparse_int8_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))
    with torch.no_grad():
        model[0].weight[torch.rand_like(model[0].weight) < 0.9] = 0  # 90% zeros
    gm = sg.capture(model, (torch.randn(4, 64),))
    gm.register_buffer("codes", torch.randint(-127, 128, (96, 64), dtype=torch.int8))  # int8 weights
    gm.register_buffer("scale", torch.rand(96) / 100)
    node = next(n for n in gm.graph.nodes if n.op == "call_function")
    with gm.graph.inserting_before(node):
        codes, scale = gm.graph.get_attr("codes"), gm.graph.get_attr("scale")
        deq = gm.graph.call_function(torch.ops.aten.mul.Tensor, (
            gm.graph.call_function(torch.ops.aten._to_copy.default, (codes,), {"dtype": torch.float32}),
            gm.graph.call_function(torch.ops.aten.unsqueeze.default, (scale, 1))))
    node.args = (node.args[0], deq, *node.args[2:])
    gm.recompile()
    return gm


def test_compressed_archive_round_trips_sparse_and_int8_weights(tmp_path):
    gm = _sparse_int8_model()
    x = torch.randn(5, 64)
    plain = sg.save(gm, tmp_path / "plain.sg")
    packed = sg.save(gm, tmp_path / "packed.sg", compress=True)
    assert packed.stat().st_size < 0.6 * plain.stat().st_size
    loaded = sg.load(packed)
    assert loaded.codes.dtype == torch.int8 and torch.equal(loaded.codes, gm.codes)
    assert torch.equal(loaded.get_parameter("0.weight"), gm.get_parameter("0.weight"))
    assert_identical(loaded(x), gm(x))
    assert_identical(sg.load(plain)(x), gm(x))


def test_compressed_archive_checks_the_decoded_tensor_against_its_declaration(tmp_path):
    path = sg.save(_sparse_int8_model(), tmp_path / "m.sg", compress=True)

    def edit(d, m, t):
        d["encoded"]["codes"]["dtype"] = "uint8"

    reseal(path, edit)
    with pytest.raises(ArchiveError, match="entropy-coded tensor 'codes' decoded to torch.int8"):
        sg.load(path)


def test_compressed_archive_bit_flips_are_detected(tmp_path):
    path = sg.save(_sparse_int8_model(), tmp_path / "m.sg", compress=True)
    good = path.read_bytes()
    for i in range(0, len(good), max(1, len(good) // 300)):
        bad = bytearray(good)
        bad[i] ^= 1 << (i % 8)
        path.write_bytes(bytes(bad))
        with pytest.raises(ArchiveError):
            sg.load(path)


def test_dynamic_batch_and_sequence_survive_the_round_trip(tmp_path):
    from torch.export import Dim

    model = Heads().eval()
    x = torch.randn(3, 5, 8)
    gm = sg.capture(model, (x,), dynamic_shapes=({0: Dim.AUTO, 1: Dim.AUTO},))
    symbolic = {operator.mul, operator.floordiv, torch.ops.aten.sym_size.int}
    assert symbolic <= {n.target for n in gm.graph.nodes}, "the test needs SymInt arithmetic in the graph"
    loaded = sg.load(sg.save(gm, tmp_path / "m.sg"))
    assert symbolic <= {n.target for n in loaded.graph.nodes}
    for shape in [(1, 7, 8), (6, 2, 8), (2, 33, 8)]:
        y = torch.randn(shape)
        assert_identical(loaded(y), gm(y))
    val = next(n for n in loaded.graph.nodes if n.op == "placeholder").meta["val"]
    assert [isinstance(s, torch.SymInt) for s in val.shape] == [True, True, False]  # metadata stays symbolic
    assert sg.graph_info(loaded).dynamic_dims == sg.graph_info(gm).dynamic_dims


def test_sparsity_record_is_stored_and_validated(tmp_path):
    gm = sg.capture(nn.Linear(3, 2), (torch.randn(2, 3),))
    sg.graph_info(gm).sparsity = {"weight": "2:4"}
    path = sg.save(gm, tmp_path / "m.sg")
    assert sg.graph_info(sg.load(path)).sparsity == {"weight": "2:4"}
    for bad, match in [({"weight": "2:4; rm -rf"}, "sparsity pattern"), ({"nothere": "2:4"}, "not attributes"),
                       ({"__class__": "unstructured"}, "not a plain identifier")]:
        reseal(path, lambda d, m, t, bad=bad: d["info"].update(sparsity=bad))
        with pytest.raises(ArchiveError, match=match):
            sg.load(path)


def test_save_refuses_what_load_would_refuse(tmp_path):
    gm = sg.capture(nn.Linear(3, 2), (torch.randn(2, 3),))
    node = next(n for n in gm.graph.nodes if n.op == "get_attr")
    gm.register_buffer("__evil", torch.ones(1))  # a name the loader's grammar refuses
    node.target = "__evil"
    with pytest.raises(ArchiveError, match="attribute '__evil'.* is not a plain identifier"):
        sg.save(gm, tmp_path / "m.sg")
    assert not (tmp_path / "m.sg").exists()


def test_loading_onto_a_missing_cuda_device_is_a_clear_error(tmp_path):
    path = sg.save(sg.capture(nn.Linear(3, 2), (torch.randn(2, 3),)), tmp_path / "m.sg")
    if not torch.cuda.is_available():
        with pytest.raises(ArchiveError, match="no CUDA device"):
            sg.load(path, device="cuda")
    else:
        assert sg.load(path, device="cuda").weight.is_cuda


def test_dunder_aten_ops_and_their_node_names_round_trip(tmp_path):
    """fx names an aten.__and__ node '__and___tensor': a leading double underscore is not a dunder."""
    graph = torch.fx.Graph()
    a, b = graph.placeholder("a"), graph.placeholder("b")
    node = graph.call_function(torch.ops.aten.__and__.Tensor, (a, b))
    graph.output(graph.call_function(torch.ops.aten.__or__.Tensor, (node, b)))
    gm = torch.fx.GraphModule(nn.Module(), graph)
    x, y = torch.randint(0, 8, (3,)), torch.randint(0, 8, (3,))
    sg.graph_info(gm).example_args = (x, y)
    loaded = sg.load(sg.save(gm, tmp_path / "m.sg"))
    assert node.name.startswith("__") and node.name in {n.name for n in loaded.graph.nodes}
    assert torch.equal(loaded(x, y), (x & y) | y)


def test_failed_symbolic_propagation_falls_back_to_static_metadata_and_says_so(tmp_path, monkeypatch):
    from torch.export import Dim

    from slimgraph.archive import reader
    from slimgraph.errors import VerificationError

    gm = sg.capture(Heads().eval(), (torch.randn(3, 5, 8),), dynamic_shapes=({0: Dim.AUTO, 1: Dim.AUTO},))
    path = sg.save(gm, tmp_path / "m.sg")
    real = reader.refresh

    def symbolic_fails(g, **kwargs):
        vals = [n.meta["val"] for n in g.graph.nodes if n.op == "placeholder"]
        if any(isinstance(s, torch.SymInt) for v in vals for s in v.shape):
            raise VerificationError("guard failed")
        return real(g, **kwargs)

    monkeypatch.setattr(reader, "refresh", symbolic_fails)
    with pytest.warns(UserWarning, match="symbolic input dims failed"):
        loaded = sg.load(path)
    assert "guard failed" in sg.graph_info(loaded).shape_notes[-1]
    y = torch.randn(2, 9, 8)
    assert_identical(loaded(y), gm(y))  # the graph itself still takes other shapes


def test_a_quant_pass_with_long_per_layer_options_round_trips(tmp_path):
    # keep-if-faster names every layer it leaves in float: the applied-pass record outgrows a name's bound
    torch.manual_seed(0)
    layers = [torch.nn.Linear(8, 8) for _ in range(24)]
    model = torch.nn.Sequential(*layers).eval()
    x = torch.randn(2, 8)
    names = {f"{i}.very_long_layer_name_for_this_test_{i}": "float" for i in range(24)}
    per_layer = {**names, "0": "float", "1": "float"}
    q = sg.quantize(model, (x,), scheme="w8a8-dynamic", per_layer=per_layer)
    applied = sg.graph_info(q).applied
    assert max(len(a) for a in applied) > 256
    sg.save(q, tmp_path / "q.sg")
    loaded = sg.load(tmp_path / "q.sg")
    assert sg.graph_info(loaded).applied == applied
    assert torch.equal(loaded(x), q(x))
