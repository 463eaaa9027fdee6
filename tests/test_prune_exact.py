"""Exactness you can trust: plant dead units (every incoming and outgoing weight zero) in exactly half of
every prunable group; at ratio 0.5 the l2 pruner must remove exactly those and reproduce the outputs.

The dead units are planted by hand from each architecture's known structure, not from slimgraph's own
dependency analysis, so the test checks the analysis instead of trusting it.
"""

import pytest
import torch
import torch.nn as nn
from helpers import assert_close_outputs, run

import slimgraph as sg
from slimgraph.testing import make


def _zero_out(module: nn.Module, idx):
    """Kill output channels/features ``idx`` of a conv/linear (rows and bias)."""
    with torch.no_grad():
        module.weight[idx] = 0
        if getattr(module, "bias", None) is not None:
            module.bias[idx] = 0


def _zero_in(module: nn.Module, idx):
    with torch.no_grad():
        module.weight[:, idx] = 0


def _zero_bn(bn: nn.BatchNorm2d, idx):
    with torch.no_grad():
        bn.weight[idx] = 0
        bn.bias[idx] = 0


def _half(n: int, offset: int = 0) -> torch.Tensor:
    return torch.arange(offset % 2, n, 2)


def _plant_mlp(m):
    d1, d2 = _half(64), _half(64, 1)
    _zero_out(m.fc1, d1), _zero_in(m.fc2, d1)
    _zero_out(m.fc2, d2), _zero_in(m.fc3, d2)
    return {"fc1.weight": {0: d1}, "fc2.weight": {0: d2, 1: d1}, "fc3.weight": {1: d2}}


def _plant_residual_cnn(m):
    s1, s2 = _half(16), _half(32, 1)  # residual streams of stage 1 and stage 2
    _zero_out(m.stem[0], s1), _zero_bn(m.stem[1], s1)
    _zero_out(m.b1[3], s1), _zero_bn(m.b1[4], s1)
    _zero_in(m.b1[0], s1), _zero_in(m.b2[0], s1), _zero_in(m.down[0], s1)
    i1 = _half(16, 1)  # inside block 1
    _zero_out(m.b1[0], i1), _zero_bn(m.b1[1], i1), _zero_in(m.b1[3], i1)
    i2 = _half(32)  # inside block 2
    _zero_out(m.b2[0], i2), _zero_bn(m.b2[1], i2), _zero_in(m.b2[3], i2)
    _zero_out(m.down[0], s2), _zero_bn(m.down[1], s2)
    _zero_out(m.b2[3], s2), _zero_bn(m.b2[4], s2)
    _zero_in(m.fc, s2)
    return {"stem.0.weight": {0: s1}, "b1.0.weight": {0: i1, 1: s1}, "b2.0.weight": {0: i2, 1: s1},
            "b2.3.weight": {0: s2, 1: i2}, "fc.weight": {1: s2}}


def _plant_flatten_cnn(m):
    c1, c2, f1 = _half(8), _half(16, 1), _half(32)
    _zero_out(m.c1, c1), _zero_bn(m.bn1, c1), _zero_in(m.c2, c1)
    _zero_out(m.c2, c2), _zero_bn(m.bn2, c2)
    features = torch.cat([torch.arange(c * 16, (c + 1) * 16) for c in c2.tolist()])  # channel c -> 4x4 block
    _zero_in(m.fc1, features)
    _zero_out(m.fc1, f1), _zero_in(m.fc2, f1)
    return {"c2.weight": {0: c2, 1: c1}, "fc1.weight": {0: f1, 1: features}}


def _plant_concat_cnn(m):
    a, b, c, mix = _half(8), _half(12, 1), _half(4), _half(16)
    _zero_out(m.a[0], a), _zero_bn(m.a[1], a), _zero_in(m.mix, a)
    _zero_out(m.b[0], b), _zero_bn(m.b[1], b), _zero_in(m.mix, b + 8)
    _zero_out(m.c[0], c), _zero_in(m.mix, c + 20)
    _zero_out(m.mix, mix), _zero_in(m.head, mix)
    return {"mix.weight": {0: mix, 1: torch.cat([a, b + 8, c + 20])}}


def _plant_bert(m):
    dead = {}
    for i, layer in enumerate(m.encoder.layer):
        att = layer.attention
        heads = [1, 2] if i == 0 else [0, 3]
        feats = torch.cat([torch.arange(h * 16, (h + 1) * 16) for h in heads])
        for lin in (att.self.query, att.self.key, att.self.value):
            _zero_out(lin, feats)
        _zero_in(att.output.dense, feats)
        ffn = _half(128, i)
        _zero_out(layer.intermediate.dense, ffn), _zero_in(layer.output.dense, ffn)
        dead[f"encoder.layer.{i}.attention.self.query.weight"] = {0: feats}
        dead[f"encoder.layer.{i}.attention.output.dense.weight"] = {1: feats}
        dead[f"encoder.layer.{i}.output.dense.weight"] = {1: ffn}
    return dead


def _plant_llama(m):
    dead = {}
    for i, layer in enumerate(m.layers):
        att = layer.self_attn
        kv = 1 - i % 2  # kv head to kill; with 4 q heads on 2 kv heads it carries q heads 2kv, 2kv+1
        kv_feats = torch.arange(kv * 16, (kv + 1) * 16)
        q_feats = torch.arange(kv * 32, (kv + 1) * 32)
        _zero_out(att.k_proj, kv_feats), _zero_out(att.v_proj, kv_feats)
        _zero_out(att.q_proj, q_feats), _zero_in(att.o_proj, q_feats)
        ffn = _half(128, i)
        _zero_out(layer.mlp.gate_proj, ffn), _zero_out(layer.mlp.up_proj, ffn), _zero_in(layer.mlp.down_proj, ffn)
        dead[f"layers.{i}.self_attn.k_proj.weight"] = {0: kv_feats}
        dead[f"layers.{i}.self_attn.q_proj.weight"] = {0: q_feats}
        dead[f"layers.{i}.mlp.down_proj.weight"] = {1: ffn}
    return dead


CASES = {
    "mlp": _plant_mlp,
    "residual_cnn": _plant_residual_cnn,
    "flatten_cnn": _plant_flatten_cnn,
    "concat_cnn": _plant_concat_cnn,
    "bert": _plant_bert,
    "llama_gqa": _plant_llama,
}


@pytest.mark.parametrize("name", list(CASES))
def test_dead_units_are_removed_exactly(name):
    model, args, kwargs = make(name)
    dead = CASES[name](model)
    expected = run(model, args, kwargs)
    pruned = sg.prune(model, args, ratio=0.5, importance="l2", round_to=1, example_kwargs=kwargs)
    report = sg.prune_report(pruned)
    assert report.pruned, "nothing was pruned"
    for g in report.groups:
        if g.status == "pruned" or g.status == "kept":
            assert g.units_after * 2 == g.units_before, f"group {g.name}: {g.units_before}->{g.units_after}"
    assert not [g for g in report.groups if g.status == "kept"], "a prunable group was left whole"
    assert_close_outputs(run(pruned, args, kwargs), expected, rel=1e-5)
    # the remaining weights are exactly the live slices of the original: the dead units, and only they, went
    state = dict(model.state_dict())
    for target, dims in dead.items():
        expected_weight = state[target]
        for dim, idx in dims.items():
            dead_set = set(idx.tolist())
            live = torch.tensor([i for i in range(expected_weight.shape[dim]) if i not in dead_set])
            expected_weight = expected_weight.index_select(dim, live)
        got = pruned.get_parameter(target)
        assert torch.equal(got, expected_weight), f"{target}: not the live slice of the original"
    assert report.params_after < report.params_before


def test_dead_units_survive_dynamic_batch():
    model, args, kwargs = make("bert")
    _plant_bert(model)
    pruned = sg.prune(model, args, ratio=0.5, round_to=1, example_kwargs=kwargs)
    ids = torch.randint(0, 100, (5, 16))
    mask = torch.ones(5, 16, dtype=torch.long)
    assert_close_outputs(run(pruned, (ids,), {"attention_mask": mask}), run(model, (ids,), {"attention_mask": mask}),
                         rel=1e-5)
