"""The main job on a user's own model, data and metric: sg.compress and `slimgraph compress --data --eval`."""

import json
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimgraph.defaults as defaults
from slimgraph.cli import build_parser, main
from slimgraph.compress import CompressConfig, compress
from slimgraph.data.batches import as_batches, load_data_file, split_batches
from slimgraph.errors import InputError

USER_MODULE = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 4)

        def forward(self, x):
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


    def _x(seed):
        return torch.randn(16, 16, generator=torch.Generator().manual_seed(seed))


    def factory():
        torch.manual_seed(0)
        return Net().eval(), (_x(100),)


    def batches():
        return [(_x(i),) for i in range(12)]


    def metric(model):
        x = _x(999)
        with torch.no_grad():
            return float(-(model(x) - factory()[0](x)).pow(2).mean())
''')


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 4)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _batches(n=8, rows=16):
    return [(torch.randn(rows, 16, generator=torch.Generator().manual_seed(i)),) for i in range(n)]


FAST = {"onnx": False, "timing_rounds": 1}


def test_cli_compresses_a_user_module_with_its_own_data_and_metric(tmp_path, monkeypatch, capsys):
    (tmp_path / "mymod.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)  # resolved from the module's own directory, no PYTHONPATH
    code = main(["compress", "mymod:factory", "--data", "mymod:batches", "--eval", "mymod:metric", "--out", "out",
                 "--distill", "5", "--no-onnx", "--timing-rounds", "2"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["original", "pruned", "distilled", "quantized"]
    values = [s["metrics"]["metric"] for s in report["stages"]]
    assert values[0] == 0.0 and all(v < 0 for v in values[1:])  # the user's metric: exact for the original only
    assert report["metric"] == "metric" and "eval_fn" in report["metric_source"]
    assert "3 batches" in report["data"] and "batch 3, 7, 11" in report["data"]
    assert report["settings"]["importance"] == "act" and report["settings"]["reconstruct"] is True
    md = (tmp_path / "out" / "report.md").read_text()
    table = md.split("```")[1]
    assert "metric" in table.strip().splitlines()[0]
    assert all(name in table for name in ("original", "pruned", "distilled", "quantized"))
    assert "What the figures mean" in md and "interleaved rounds" in md and "Effective settings" in md
    assert "quantized" in capsys.readouterr().out


@pytest.mark.parametrize("spec, message", [
    ("nosuchmod_xyz:batches", "cannot import 'nosuchmod_xyz'"),
    ("mymod:nothing", "has no attribute 'nothing'"),
    ("mymod:factory", "data batch 0"),  # returns (model, args): not batches
])
def test_cli_data_spec_errors_name_the_spec(tmp_path, monkeypatch, capsys, spec, message):
    (tmp_path / "mymod.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    assert main(["compress", "mymod:factory", "--data", spec, "--out", "out", "--no-onnx"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("names", [("x",), ("arg0",)])
def test_data_file_npz_and_safetensors(tmp_path, suffix, names):
    x = torch.randn(20, 16)
    path = tmp_path / f"inputs{suffix}"
    if suffix == ".npz":
        np.savez(path, **{names[0]: x.numpy()})
    else:
        from safetensors.torch import save_file

        save_file({names[0]: x}, str(path))
    batches = load_data_file(path, Net(), batch_size=8)
    assert [b.args[0].shape[0] for b in batches] == [8, 8, 4]
    assert torch.equal(torch.cat([b.args[0] for b in batches]), x)
    result = compress(Net(), (x[:4],), data=batches, prune=0.5, quant=None, **FAST)
    assert result.stage("pruned").params < result.stage("original").params


def test_data_file_names_map_to_forward_parameters(tmp_path):
    class Two(nn.Module):
        def forward(self, input_ids, attention_mask=None, scale=1.0):
            return input_ids * attention_mask * scale

    path = tmp_path / "d.npz"
    np.savez(path, attention_mask=np.ones((4, 3), np.float32), input_ids=np.zeros((4, 3), np.float32))
    b = load_data_file(path, Two(), batch_size=2)[0]
    assert [t.shape for t in b.args] == [(2, 3), (2, 3)] and not b.kwargs  # positional in signature order
    np.savez(path, input_ids=np.zeros((4, 3), np.float32), scale=np.ones((4,), np.float32))
    b = load_data_file(path, Two(), batch_size=2)[0]
    assert not b.args and set(b.kwargs) == {"input_ids", "scale"}  # not a leading run: by keyword
    np.savez(path, nope=np.zeros((4, 3), np.float32))
    with pytest.raises(InputError, match=r"not parameters of the model's forward\(input_ids"):
        load_data_file(path, Two())
    np.savez(path, a=np.zeros((4, 3), np.float32), input_ids=np.zeros((5, 3), np.float32))
    with pytest.raises(InputError, match="same first dimension"):
        load_data_file(path, Two())


def test_cli_data_file(tmp_path, monkeypatch):
    (tmp_path / "mymod.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "inputs.npz", x=np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    assert main(["compress", "mymod:factory", "--data", "inputs.npz", "--batch-size", "8", "--out", "o",
                 "--no-onnx", "--timing-rounds", "1", "--quant", "w8a8"]) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["metric"] == "heldout_cosine" and "held-out" in report["metric_source"]
    assert "8 batches" in report["data"] and report["settings"]["quant"] == "w8a8"
    assert main(["prune", "mymod:factory", "--data", "inputs.npz", "--ratio", "0.5"]) == 0
    assert main(["quantize", "mymod:factory", "--data", "inputs.npz", "--scheme", "w8a8"]) == 0


def test_split_holds_out_every_fourth_batch_and_never_trains_on_it():
    batches = as_batches(_batches(10))
    split = split_batches(batches, 0.25)
    assert split.eval_index == (3, 7) and set(split.train_index).isdisjoint(split.eval_index)
    assert len(split.train) + len(split.eval) == 10
    assert split_batches(batches, 0.25) == split  # deterministic
    with pytest.raises(InputError, match="at least 2"):
        split_batches(as_batches(_batches(1)), 0.25)


def test_calibration_and_training_never_see_held_out_batches(monkeypatch):
    import sys

    prune_mod, quant_mod = sys.modules["slimgraph.prune"], sys.modules["slimgraph.quant"]

    seen = []
    real_prune, real_quant = prune_mod.prune, quant_mod.quantize
    monkeypatch.setattr(prune_mod, "prune", lambda *a, **k: seen.extend(k["calib"]) or real_prune(*a, **k))
    monkeypatch.setattr(quant_mod, "quantize", lambda *a, **k: seen.extend(k["calib"]) or real_quant(*a, **k))
    data = _batches(8)
    result = compress(Net(), data[0], data=data, quant="w8a8", **FAST)
    held_out = {id(data[i][0]) for i in (3, 7)}
    assert seen and not any(id(t) in held_out for args, _ in seen for t in args)
    assert result.settings["calib_batches"] == 6


@pytest.mark.parametrize("options, message", [
    ({"distill_steps": 5}, "distill_steps=5 needs training batches"),
    ({"quant": "w8a8"}, "static activation ranges"),
    ({"reconstruct": True}, "reconstruct=True refits"),
])
def test_steps_that_need_data_refuse_to_run_without_it(options, message):
    with pytest.raises(InputError, match=message):
        compress(Net(), _batches(1)[0], **options, **FAST)


def test_distillation_without_pruning_is_refused():
    with pytest.raises(InputError, match="pruning is off"):
        compress(Net(), _batches(1)[0], data=_batches(4), prune=None, distill_steps=3, **FAST)


def test_refit_with_too_few_rows_is_an_error_when_asked_and_a_reported_fallback_on_auto(tmp_path):
    tiny = [(torch.randn(2, 16),) for _ in range(4)]  # 3 training batches x 2 rows << 33 kept inputs + bias
    with pytest.raises(InputError, match=r"refit needs about \d+ calibration rows at fc\d"):
        compress(Net(), tiny[0], data=tiny, reconstruct=True, **FAST)
    result = compress(Net(), tiny[0], data=tiny, quant=None, out=tmp_path, **FAST)
    assert result.settings["reconstruct"] is False
    assert any("without the refit" in f for f in result.fallbacks)
    assert "without the refit" in (tmp_path / "report.md").read_text()


def test_importance_without_data_is_a_reported_fallback_or_l2_by_default():
    x = _batches(1)[0]
    assert compress(Net(), x, quant=None, **FAST).settings["importance"] == "l2"
    result = compress(Net(), x, quant=None, importance="act", **FAST)
    assert any("example inputs only" in f for f in result.fallbacks)
    assert result.metric == "heldout_cosine" and "example inputs (no data given)" in result.metric_source


@pytest.mark.parametrize("eval_fn, message", [
    (lambda m: 1 / 0, "eval_fn raised on the original model: ZeroDivisionError"),
    (lambda m: "good", "returned a str"),
])
def test_a_broken_metric_stops_before_any_work(eval_fn, message):
    with pytest.raises(InputError, match=message):
        compress(Net(), _batches(1)[0], data=_batches(4), eval_fn=eval_fn, **FAST)


def test_user_model_untouched_and_every_stage_has_the_metric():
    model = Net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def score(m):
        with torch.no_grad():
            return float(m(torch.ones(2, 16)).sum())

    result = compress(model, data=_batches(8), eval_fn=score, distill_steps=3, **FAST)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [s.name for s in result.stages] == ["original", "pruned", "distilled", "quantized"]
    assert all("score" in s.metrics and "heldout_cosine" in s.metrics for s in result.stages)
    assert result.stage("original").metrics["heldout_cosine"] == pytest.approx(1.0)
    assert all(s.latency is not None for s in result.stages)


def test_defaults_are_shared_by_api_and_cli():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    compress_args = sub["compress"].parse_args(["m", "--out", "o"])
    config = CompressConfig()
    assert float(compress_args.prune) == config.prune == defaults.COMPRESS_PRUNE
    assert float(compress_args.heads) == config.heads == defaults.COMPRESS_HEADS
    from slimgraph.cli import _quant

    assert _quant(compress_args) == config.quant == defaults.QUANT_SCHEME
    assert _quant(sub["compress"].parse_args(["m", "--out", "o", "--share-bits", "5"])) is None
    assert compress_args.importance == config.importance == defaults.PRUNE_IMPORTANCE
    assert compress_args.round_to == config.round_to == defaults.PRUNE_ROUND_TO
    assert compress_args.smoothquant == config.smoothquant == defaults.SMOOTHQUANT
    prune_args = sub["prune"].parse_args(["m"])
    assert float(prune_args.ratio) == defaults.PRUNE_RATIO and prune_args.importance == defaults.PRUNE_IMPORTANCE
    assert sub["quantize"].parse_args(["m"]).scheme == defaults.QUANT_SCHEME
    assert defaults.resolve_importance("auto", True) == "act" and defaults.resolve_importance("auto", False) == "l2"
    assert defaults.resolve_smoothquant("auto", "w8a16") is None
    assert defaults.resolve_smoothquant("auto", "w8a8-dynamic") == defaults.SMOOTHQUANT_ALPHA


def test_report_names_groups_not_pruned_and_flags_slower_stages(tmp_path):
    from slimgraph.compress_report import slower_stages
    from slimgraph.timing import Timing, speedup

    result = compress(Net(), data=_batches(8), quant=None, out=tmp_path, **FAST)
    md = (tmp_path / "report.md").read_text()
    assert "## Groups not pruned" in md
    fast, slow = Timing("a", (1.0, 1.1, 0.9)), Timing("b", (3.0, 3.1, 2.9))
    result.stages[0].latency, result.stages[1].latency = fast, slow
    result.stages[1].vs_previous = speedup(fast, slow)
    assert slower_stages(result) and "pruned is slower than original" in slower_stages(result)[0]


def test_deep_compression_options_report_bytes_on_disk(tmp_path):
    data = _batches(8)
    result = compress(Net(), data=data, quant=None, sparsity=0.8, share_bits=4, entropy=True, out=tmp_path, **FAST)
    assert [s.name for s in result.stages] == ["original", "pruned", "sparse", "shared"]
    disk = [s.disk_bytes for s in result.stages]
    assert all(d > 0 for d in disk) and disk[1] < disk[0]
    assert result.coded_bytes is not None and result.coded_bytes < disk[-1]  # entropy coding pays on 4-bit codes
    md = (tmp_path / "report.md").read_text()
    assert "## Bytes on disk" in md and "coded (shared, entropy coded)" in md and "% of dense" in md
    assert (tmp_path / "model.coded.slimgraph").is_file()
    report = json.loads((tmp_path / "report.json").read_text())
    assert [row["step"] for row in report["disk_bytes"]][-1].startswith("coded")
    with pytest.raises(InputError, match="int8 quantization would replace the shared codebooks"):
        compress(Net(), data=data, share_bits=4, quant="w8a8-dynamic", **FAST)


def test_a_dict_metric_names_the_headline_and_its_description_reaches_the_report(tmp_path):
    def quality(model):
        return {"acc": 0.5, "loss": 1.0}

    quality.description = "accuracy on my own test set"
    result = compress(Net(), data=_batches(8), eval_fn=quality, quant=None, out=tmp_path, **FAST)
    assert result.metric == "acc" and result.metric_source == "acc: accuracy on my own test set (higher is better)"
    assert "accuracy on my own test set" in (tmp_path / "report.md").read_text()


def test_int8_that_does_not_pay_off_is_a_reported_fallback(monkeypatch):
    import slimgraph.layer_choice as autotune

    def slower(model, args, scheme, **kw):
        return autotune.ProfitableResult(model, [], ["fc1"], float_ms=1.0, int8_ms=2.0, used_int8=False)

    monkeypatch.setattr(autotune, "keep_profitable", slower)
    result = compress(Net(), data=_batches(8), **FAST)
    assert result.settings["keep_profitable"] is True and result.settings["layers_kept_float"] == ["fc1"]
    assert any("was not faster than float" in f and "2.00 vs 1.00 ms" in f for f in result.fallbacks)
    assert result.stage("quantized").note.startswith("float")
    forced = compress(Net(), data=_batches(8), keep_profitable=False, **FAST)  # int8 everywhere, as asked
    assert "layers int8" in forced.stage("quantized").note and not any("not faster" in f for f in forced.fallbacks)


def test_an_archive_that_cannot_be_written_is_a_reported_fallback_and_the_report_still_appears(tmp_path, monkeypatch):
    import sys

    from slimgraph.errors import ArchiveError

    def refuse(*args, **kwargs):
        raise ArchiveError("applied pass must be a string of at most 256 characters")

    monkeypatch.setattr(sys.modules["slimgraph.serialize"], "save", refuse)
    result = compress(Net(), data=_batches(8), quant=None, out=tmp_path, **FAST)
    assert result.checks["reload_exact"] is False and "model" not in result.files
    assert any("could not be saved" in f for f in result.fallbacks)
    assert "could not be saved" in (tmp_path / "report.md").read_text()
