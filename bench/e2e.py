"""End-to-end benchmark: whole models through every deployment path, in one run.

    python -m bench.e2e [--quick] [--models minilm,bert-b1,...] [--out bench/results]   (default: a scratch dir)

Variants (same inputs, same device, timed the same way):
  eager            the model as written (fp16 on GPU, fp32 on CPU)
  inductor         torch.compile(model) with Inductor
  sg-fuse          torch.compile(model, backend="slimgraph")                       lossless passes only
  sg-int8          ... options={"quant": "w8a8-dynamic"} (decode: "w8a16", the memory-bound choice)
  sg-pruned-int8   sg.prune (50% FFN/channels, 25% heads) [MiniLM: as the demo, act importance + least-squares
                   refit, then distilled] then the sg-int8 path
  torchao-int8     torchao Int8DynamicActivationInt8WeightConfig + Inductor (when torchao imports)

Models: all-MiniLM-L6-v2 (real weights; batch 32 x 32 tokens), BERT-base (seq 128; batch 1 and 32), a
Llama-style decoder (prefill 1 x 128 and batch-1 decode against a 128-token prefix, no KV cache), ResNet-50
(torchvision on GPU, transformers ResNetConfig() on CPU; batch 1 and 64). Reported per row: median latency,
throughput, peak memory (GPU only), and fidelity (cosine of the outputs to eager's). Latency comes from the
harness's interleaved timing (bench/harness.py): every variant of a model is built first, then all are timed
round by round in rotating order; median and interquartile range per row, and the ratio to eager with its
spread ("no change" when the spread contains 1.0).

On a machine without CUDA the same pipeline runs on CPU and every file says so; sizes shrink with --quick.
GPU targets (issue 6, H100): pruned + int8 BERT-base batch 32 >= 2.5x Inductor fp16; ResNet-50 batch 64
>= 2x Inductor fp16; int8 decode never slower than fp16.
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from bench.harness import (
    figure,
    finish_figure,
    finish_metadata,
    meta_lines,
    run_metadata,
    script_parser,
    speedup,
    time_variants,
    write_results,
)

VARIANTS = ("eager", "inductor", "sg-fuse", "sg-int8", "sg-pruned-int8", "torchao-int8")
TARGETS = [
    ("bert-b32", "sg-pruned-int8", "inductor", 2.5, "pruned + int8 BERT-base batch 32 >= 2.5x Inductor fp16"),
    ("resnet50-b64", "sg-int8", "inductor", 2.0, "ResNet-50 batch 64 >= 2x Inductor fp16"),
    ("llama-decode", "sg-int8", "eager", 1.0, "int8 decode never slower than fp16"),
]


@dataclass
class Row:
    model: str
    variant: str
    ok: bool
    latency_ms: float = float("nan")  # median
    latency_q1_ms: float = float("nan")
    latency_q3_ms: float = float("nan")
    vs_eager: str = "-"  # ratio to eager with its spread, or "no change"
    throughput: float = float("nan")  # samples (or tokens) per second
    peak_mem_mb: float = float("nan")
    cosine: float = float("nan")  # min over the batch's rows (samples) of cosine(output, eager output)
    cosine_mean: float = float("nan")
    compile_s: float = float("nan")
    note: str = ""


@dataclass
class Case:
    name: str
    model: torch.nn.Module
    args: tuple
    kwargs: dict = field(default_factory=dict)
    samples: int = 1
    decode: bool = False
    distill: object = None  # callable(pruned) -> distilled, for the real-weights model
    prune_options: dict = field(default_factory=dict)  # extra sg.prune options (calibration data for real weights)
    distill_steps: int = 0
    real_weights: bool = False


def _device_and_dtype():
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def _to(case: Case, device, dtype) -> Case:
    def move(t):
        if isinstance(t, torch.Tensor):
            return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        return t

    model = case.model.to(device=device, dtype=dtype).eval()
    options = {k: [tuple(move(t) for t in b) for b in v] if k == "calib" else v
               for k, v in case.prune_options.items()}
    return replace(case, model=model, args=tuple(move(a) for a in case.args),
                   kwargs={k: move(v) for k, v in case.kwargs.items()}, prune_options=options)


def build_cases(quick: bool, selected: set[str] | None) -> list[Case]:
    import transformers

    torch.manual_seed(0)
    cases: list[Case] = []

    def want(name):
        return selected is None or name in selected

    if want("minilm"):
        from slimgraph.demos.minilm import DISTILL, load_encoder, text_batches

        tok_batches = text_batches("heldout", batch_size=8 if quick else 32)
        ids, mask = tok_batches[0]
        encoder = load_encoder()
        train = text_batches("train", batch_size=16)

        def distill_minilm(pruned, teacher=encoder, train=train):
            import slimgraph as sg

            settings = {k: v for k, v in DISTILL.items() if k != "steps"}
            return sg.distill(pruned, teacher, train, steps=DISTILL["steps"], **settings)

        # pruned and distilled as `slimgraph demo` does: activation-aware importance + least-squares refit on
        # train text, then DISTILL (--quick skips the distillation: a few dozen steps only disturb the refit)
        cases.append(Case("minilm", encoder, (ids, mask), {}, ids.shape[0], distill=None if quick else distill_minilm,
                          prune_options={"importance": "act", "calib": train[:8], "reconstruct": True},
                          distill_steps=0 if quick else DISTILL["steps"], real_weights=True))
    bert_cfg = transformers.BertConfig() if not quick else transformers.BertConfig(num_hidden_layers=2)
    for batch in (1, 32):
        name = f"bert-b{batch}"
        if want(name):
            seq = 128 if not quick else 32
            b = batch if not quick else min(batch, 4)
            ids = torch.randint(0, bert_cfg.vocab_size, (b, seq))
            cases.append(Case(name, transformers.BertModel(bert_cfg), (ids,),
                              {"attention_mask": torch.ones(b, seq, dtype=torch.long)}, b))
    llama_cfg = transformers.LlamaConfig(hidden_size=1024 if not quick else 128, intermediate_size=2816 if not quick
                                         else 256, num_hidden_layers=4 if not quick else 2, num_attention_heads=16
                                         if not quick else 4, num_key_value_heads=4 if not quick else 2,
                                         vocab_size=32000 if not quick else 1000, use_cache=False)
    if want("llama-prefill") or want("llama-decode"):
        llama = transformers.LlamaModel(llama_cfg)
        prefix = 128 if not quick else 16
        if want("llama-prefill"):
            ids = torch.randint(0, llama_cfg.vocab_size, (1, prefix))
            cases.append(Case("llama-prefill", llama, (ids,), {}, prefix))
        if want("llama-decode"):
            # no KV cache in the captured graph: "decode" is the batch-1, one-new-token GEMM shape (M = 1)
            ids = torch.randint(0, llama_cfg.vocab_size, (1, 1))
            cases.append(Case("llama-decode", copy.deepcopy(llama), (ids,), {}, 1, decode=True))
    for batch in (1, 64):
        name = f"resnet50-b{batch}"
        if want(name):
            b = batch if not quick else min(batch, 2)
            cases.append(Case(name, _resnet50(quick), (torch.randn(b, 3, 224 if not quick else 64,
                                                                      224 if not quick else 64),), {}, b))
    return cases


def _resnet50(quick: bool):
    if torch.cuda.is_available():
        try:
            import torchvision

            return torchvision.models.resnet50()
        except Exception:  # noqa: BLE001 - torchvision missing or broken: the transformers ResNet is equivalent
            pass
    import transformers

    cfg = transformers.ResNetConfig() if not quick else transformers.ResNetConfig(depths=[1, 1, 1, 1])
    return transformers.ResNetModel(cfg)


def _first_tensor(out) -> torch.Tensor:
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return leaves[0]


def _variant_model(case: Case, variant: str, device):
    import slimgraph as sg

    torch._dynamo.reset()
    quant = "w8a16" if case.decode else "w8a8-dynamic"
    if variant == "eager":
        return case.model
    if variant == "inductor":
        return torch.compile(case.model)
    if variant == "sg-fuse":
        return torch.compile(case.model, backend="slimgraph")
    if variant == "sg-int8":
        return torch.compile(case.model, backend="slimgraph", options={"quant": quant})
    if variant == "sg-pruned-int8":
        pruned = sg.prune(case.model, case.args, ratio=0.5, ratios={"heads": 0.25}, example_kwargs=case.kwargs,
                          check=False, **case.prune_options)
        if case.distill is not None:
            pruned = case.distill(pruned)
        return torch.compile(pruned, backend="slimgraph", options={"quant": quant})
    if variant == "torchao-int8":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        model = copy.deepcopy(case.model)
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
        return torch.compile(model)
    raise ValueError(variant)


def run_case(case: Case, variants, device, rounds: int) -> list[Row]:
    """Build every variant (compiling on its first call), then time them all interleaved."""
    rows: dict[str, Row] = {}
    built = {}
    with torch.no_grad():
        reference = _first_tensor(case.model(*case.args, **case.kwargs)).float()
    for variant in variants:
        try:
            start = time.perf_counter()
            model = _variant_model(case, variant, device)
            with torch.no_grad():
                out = _first_tensor(model(*case.args, **case.kwargs)).float()  # compiles
            compile_s = time.perf_counter() - start
            per_row = F.cosine_similarity(out.flatten(1) if out.dim() > 1 else out[None],
                                          reference.flatten(1) if reference.dim() > 1 else reference[None])
            rows[variant] = Row(case.name, variant, True, cosine=per_row.min().item(),
                                cosine_mean=per_row.mean().item(), compile_s=compile_s, note=_note(case, variant))
            built[variant] = model
        except Exception as exc:  # noqa: BLE001 - one failing variant must not lose the others
            rows[variant] = Row(case.name, variant, False, note=f"{type(exc).__name__}: {str(exc)[:200]}")
            logging.debug(traceback.format_exc())
    if built:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run = time_variants({v: (lambda m=m: m(*case.args, **case.kwargs)) for v, m in built.items()},
                            rounds=rounds, min_rounds=min(rounds, 5), max_seconds=60.0)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        for v in built:
            t, row = run[v], rows[v]
            row.latency_ms, row.latency_q1_ms, row.latency_q3_ms = t.median_ms, t.q1_ms, t.q3_ms
            row.throughput, row.peak_mem_mb = case.samples / t.median_ms * 1e3, peak
            if "eager" in built:
                row.vs_eager = speedup(run["eager"], t).label() if v != "eager" else "1.00x"
        print(f"  {case.name}: {run.conditions()}", flush=True)
    for r in rows.values():
        print(f"  {case.name:15s} {r.variant:15s} " + (f"{r.latency_ms:9.2f} ms  {r.vs_eager:24s} cos min "
                                                       f"{r.cosine:.4f}" if r.ok else r.note), flush=True)
    return [rows[v] for v in variants]


def _note(case: Case, variant: str) -> str:
    if variant != "sg-pruned-int8":
        return ""
    return (f"pruned ({case.prune_options.get('importance', 'l2')}"
            + (" + least-squares refit" if case.prune_options.get("reconstruct") else "") + "), "
            + (f"distilled {case.distill_steps} steps" if case.distill is not None
               else "not distilled" + ("" if case.real_weights else
                                       " (random weights: cosine shows pruning damage only)")))


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__, "e2e", quick="small shapes and models", rounds=20)
    parser.add_argument("--models", default=None, help="comma-separated subset, e.g. minilm,bert-b1,llama-decode")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    logging.getLogger("slimgraph").setLevel(logging.ERROR)
    device, dtype = _device_and_dtype()
    selected = set(args.models.split(",")) if args.models else None
    variants = [v for v in args.variants.split(",") if v]
    label = "gpu" if device.type == "cuda" else "cpu"
    print(f"e2e on {device} ({'fp16' if dtype == torch.float16 else 'fp32'})"
          + ("" if device.type == "cuda" else ": NO GPU FOUND - CPU figures, not GPU targets"), flush=True)
    rows: list[Row] = []
    meta = run_metadata("bench.e2e", argv, dtype=str(dtype), quick=args.quick)
    for case in build_cases(args.quick, selected):
        rows.extend(run_case(_to(case, device, dtype), variants, device, args.rounds))
    finish_metadata(meta, start)
    speedups = _targets(rows)
    stem = f"e2e-{label}" + ("-quick" if args.quick else "") + ("-" + "-".join(sorted(selected)) if selected else "")
    write_results(args.out, stem, {"meta": meta, "rows": [asdict(r) for r in rows], "targets": speedups},
                  _markdown(meta, rows, speedups, device))
    _plot(rows, args.out, stem, meta)
    print(f"wrote {args.out}/{stem}.json/.md/.png")
    return 0


def _targets(rows: list[Row]) -> list[dict]:
    by = {(r.model, r.variant): r for r in rows if r.ok}
    result = []
    for model, variant, baseline, need, text in TARGETS:
        a, b = by.get((model, variant)), by.get((model, baseline))
        got = b.latency_ms / a.latency_ms if a and b else None
        result.append({"target": text, "needed": need, "measured": got,
                       "met": None if got is None else got >= need})
    return result


def _markdown(meta, rows, targets, device) -> list[str]:
    lines = [f"# End-to-end benchmark ({'GPU' if device.type == 'cuda' else 'CPU'})", ""]
    if device.type != "cuda":
        lines += ["**No CUDA GPU was found: these are CPU figures.** On CPU the int8 ops run their portable torch "
                  "references (the Triton kernels need a GPU), so int8 rows measure correctness and overhead, "
                  "not the GPU speed-ups the targets are about.", ""]
    lines += [*meta_lines(meta), f"- dtype {meta['dtype']}", "",
              "Latency: median of interleaved rounds (IQR in brackets); `vs eager`: median ratio, > 1 = faster, "
              "with the range from both interquartile ranges; `no change` when that range contains 1.0.", "",
              "| model | variant | latency ms (IQR) | throughput /s | vs eager | peak MB | cosine vs eager (mean / min "
              "over samples) | compile s | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.variant} | {r.latency_ms:.2f} ({r.latency_q1_ms:.2f}-{r.latency_q3_ms:.2f}) "
                     f"| {r.throughput:.1f} | {r.vs_eager} | {r.peak_mem_mb:.0f} | {r.cosine_mean:.4f} / "
                     f"{r.cosine:.4f} | {r.compile_s:.1f} | {r.note} |")
    lines += ["", "## Targets (H100)", "", "| target | needed | measured here | met |", "|---|---|---|---|"]
    for t in targets:
        got = "-" if t["measured"] is None else f"{t['measured']:.2f}x"
        met = "n/a (not a GPU run)" if device.type != "cuda" else ("yes" if t["met"] else "no")
        lines.append(f"| {t['target']} | {t['needed']}x | {got} | {met} |")
    return lines


def _plot(rows, out, stem, meta) -> None:
    models = list(dict.fromkeys(r.model for r in rows))
    fig, ax = figure(figsize=(max(6, 1.6 * len(models)), 4))
    width = 0.8 / len(VARIANTS)
    eager = {r.model: r.latency_ms for r in rows if r.variant == "eager" and r.ok}
    ok = {(r.model, r.variant): r.latency_ms for r in rows if r.ok}
    for i, v in enumerate(VARIANTS):
        ys = [eager.get(m, float("nan")) / ok[(m, v)] if (m, v) in ok else 0.0 for m in models]
        ax.bar([j + i * width for j in range(len(models))], ys, width=width, label=v)
    ax.set_xticks([j + 0.4 for j in range(len(models))])
    ax.set_xticklabels(models, rotation=20)
    ax.axhline(1.0, color="grey", lw=0.8)
    finish_figure(fig, ax, out, stem, title=f"end to end on {meta['device']}",
                  ylabel="speed-up vs eager (x, median ratio)", legend={"fontsize": 7})


if __name__ == "__main__":
    raise SystemExit(main())
