"""The architecture matrix: small random configs of transformers' own classes plus plain torch models.

Every entry builds ``(model, args, kwargs)`` deterministically, and ``other_inputs(name, args, kwargs)`` gives
a second input of another shape (batch + 1, and another sequence length or image size where the model
accepts it) so every step can be checked at two shapes. Sizes are tiny (hidden 32-64, two layers) so one model
goes through capture -> prune -> quantize -> save/load -> ONNX in seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import _randomize_bn


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[], tuple[nn.Module, tuple, dict]]
    family: str  # "encoder" | "decoder" | "encoder-decoder" | "moe" | "vision" | "cnn" | "audio" | "dual" | "torch"
    seq_dim: int | None = 1  # the dim of the first input that is a sequence length (None: fixed / image)


VOCAB = 100
_TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=64)


def _ids(batch=2, seq=16, vocab=VOCAB, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, seq), generator=g)


def _hf(cls_name: str, cfg_name: str, inputs: str = "text", image=32, **cfg):
    def build():
        import transformers

        torch.manual_seed(0)
        config = getattr(transformers, cfg_name)(**cfg)
        model = getattr(transformers, cls_name)(config)
        model = _randomize_bn(model)
        if inputs == "text":
            ids = _ids()
            return model, (ids,), {"attention_mask": torch.ones_like(ids)}
        if inputs == "ids":
            return model, (_ids(),), {}
        if inputs == "image":
            return model, (torch.randn(2, 3, image, image, generator=torch.Generator().manual_seed(0)),), {}
        if inputs == "audio":
            return model, (torch.randn(2, 800, generator=torch.Generator().manual_seed(0)),), {}
        if inputs == "seq2seq":
            ids = _ids()
            return model, (ids,), {"decoder_input_ids": _ids(seq=8, seed=1)}
        if inputs == "whisper":
            feats = torch.randn(2, config.num_mel_bins, 2 * config.max_source_positions,
                                generator=torch.Generator().manual_seed(0))
            return model, (feats,), {"decoder_input_ids": _ids(seq=8, seed=1)}
        if inputs == "clip":
            ids = _ids()
            pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
            return model, (ids, pixels), {"attention_mask": torch.ones_like(ids)}
        raise ValueError(inputs)

    return build


_DEC = dict(vocab_size=VOCAB, use_cache=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_LLAMA_LIKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64, **_DEC)


# ------------------------------------------------------------------------------------- plain torch


class LSTMNet(nn.Module):
    def __init__(self, cell=nn.LSTM):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 32)
        self.rnn = cell(32, 48, num_layers=2, batch_first=True)
        self.head = nn.Linear(48, 10)

    def forward(self, ids):
        out, _ = self.rnn(self.emb(ids))
        return self.head(out)


class TransformerEncoderNet(nn.Module):
    def __init__(self, norm_first=True):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(64, 10)

    def forward(self, ids):
        return self.head(self.enc(self.emb(ids)))


def _conv_block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding="same"), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """Two-level UNet: skip connections concatenated with upsampled features, "same"-padded convs."""

    def __init__(self, c=16):
        super().__init__()
        self.d1, self.d2 = _conv_block(3, c), _conv_block(c, 2 * c)
        self.mid = _conv_block(2 * c, 2 * c)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.u1 = _conv_block(2 * c, c)
        self.out = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        a = self.d1(x)
        b = self.mid(self.d2(F.max_pool2d(a, 2)))
        return self.out(self.u1(torch.cat([a, self.up(b)], 1)))


class DepthwiseSeparable(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU6())
        self.blocks = nn.Sequential(*[nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.ReLU6(),
            nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU6()) for _ in range(2)])
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class EmbeddingBagNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(VOCAB, 32, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, ids):
        return self.mlp(self.bag(ids))


def _torch(cls, inputs="ids", **kw):
    def build():
        torch.manual_seed(0)
        model = _randomize_bn(cls(**kw))
        if inputs == "ids":
            return model, (_ids(),), {}
        return model, (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),), {}

    return build


# ------------------------------------------------------------------------------------------ the list

_V = dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
          intermediate_size=128, num_labels=10)

ARCHS: dict[str, Arch] = {a.name: a for a in [
    # encoders
    Arch("bert", _hf("BertModel", "BertConfig", vocab_size=VOCAB, **_TEXT), "encoder"),
    Arch("roberta", _hf("RobertaModel", "RobertaConfig", vocab_size=VOCAB, pad_token_id=0, **{
        **_TEXT, "max_position_embeddings": 80}), "encoder"),
    Arch("albert", _hf("AlbertModel", "AlbertConfig", vocab_size=VOCAB, embedding_size=32, **_TEXT), "encoder"),
    Arch("electra", _hf("ElectraModel", "ElectraConfig", vocab_size=VOCAB, embedding_size=32, **_TEXT), "encoder"),
    Arch("distilbert", _hf("DistilBertModel", "DistilBertConfig", vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4,
                           hidden_dim=128, max_position_embeddings=64), "encoder"),
    Arch("deberta_v2", _hf("DebertaV2Model", "DebertaV2Config", vocab_size=VOCAB, relative_attention=True,
                           position_buckets=16, pos_att_type=["p2c", "c2p"], **_TEXT), "encoder"),
    Arch("mpnet", _hf("MPNetModel", "MPNetConfig", vocab_size=VOCAB, **{**_TEXT, "max_position_embeddings": 80}),
         "encoder"),
    # decoders
    Arch("gpt2", _hf("GPT2Model", "GPT2Config", "ids", n_embd=64, n_layer=2, n_head=4, n_positions=64, **_DEC),
         "decoder"),
    Arch("gpt_neox", _hf("GPTNeoXModel", "GPTNeoXConfig", "ids", hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=128, max_position_embeddings=64, rotary_pct=0.5,
                         **_DEC), "decoder"),
    Arch("gptj", _hf("GPTJModel", "GPTJConfig", "ids", n_embd=64, n_layer=2, n_head=4, n_positions=64, rotary_dim=8,
                     **_DEC), "decoder"),
    Arch("opt", _hf("OPTModel", "OPTConfig", "ids", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    ffn_dim=128, max_position_embeddings=64, word_embed_proj_dim=64, **_DEC), "decoder"),
    Arch("bloom", _hf("BloomModel", "BloomConfig", "ids", hidden_size=64, n_layer=2, n_head=4, **_DEC), "decoder"),
    Arch("falcon", _hf("FalconModel", "FalconConfig", "ids", hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, new_decoder_architecture=True, num_kv_heads=2, **_DEC), "decoder"),
    Arch("llama", _hf("LlamaModel", "LlamaConfig", "ids", **_LLAMA_LIKE), "decoder"),
    Arch("mistral", _hf("MistralModel", "MistralConfig", "ids", **_LLAMA_LIKE), "decoder"),
    Arch("qwen2", _hf("Qwen2Model", "Qwen2Config", "ids", **_LLAMA_LIKE), "decoder"),
    Arch("qwen3", _hf("Qwen3Model", "Qwen3Config", "ids", head_dim=16, **_LLAMA_LIKE), "decoder"),
    Arch("phi", _hf("PhiModel", "PhiConfig", "ids", **{**_LLAMA_LIKE, "num_key_value_heads": 4}), "decoder"),
    Arch("phi3", _hf("Phi3Model", "Phi3Config", "ids", **{**_LLAMA_LIKE, "num_key_value_heads": 4}), "decoder"),
    Arch("gemma", _hf("GemmaModel", "GemmaConfig", "ids", head_dim=16, **_LLAMA_LIKE), "decoder"),
    # mixture of experts
    Arch("mixtral", _hf("MixtralModel", "MixtralConfig", "ids", num_local_experts=4, num_experts_per_tok=2,
                        **_LLAMA_LIKE), "moe"),
    Arch("qwen2_moe", _hf("Qwen2MoeModel", "Qwen2MoeConfig", "ids", num_experts=4, num_experts_per_tok=2,
                          moe_intermediate_size=64, shared_expert_intermediate_size=64, **_LLAMA_LIKE), "moe"),
    # encoder-decoders
    Arch("bart", _hf("BartModel", "BartConfig", "seq2seq", vocab_size=VOCAB, d_model=64, encoder_layers=2,
                     decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                     decoder_ffn_dim=128, max_position_embeddings=64, use_cache=False, pad_token_id=0,
                     bos_token_id=1, eos_token_id=2, decoder_start_token_id=2), "encoder-decoder"),
    Arch("t5", _hf("T5Model", "T5Config", "seq2seq", vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                   num_heads=4, use_cache=False, pad_token_id=0, decoder_start_token_id=0), "encoder-decoder"),
    Arch("whisper", _hf("WhisperModel", "WhisperConfig", "whisper", vocab_size=VOCAB, d_model=64, encoder_layers=2,
                        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                        decoder_ffn_dim=128, num_mel_bins=16, max_source_positions=32, max_target_positions=32,
                        use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                        decoder_start_token_id=1), "encoder-decoder", seq_dim=None),
    # audio
    Arch("wav2vec2", _hf("Wav2Vec2Model", "Wav2Vec2Config", "audio", hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=128, conv_dim=(32, 32), conv_stride=(5, 4),
                         conv_kernel=(10, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
         "audio"),
    # vision transformers
    Arch("vit", _hf("ViTForImageClassification", "ViTConfig", "image", **_V), "vision", seq_dim=None),
    Arch("deit", _hf("DeiTForImageClassification", "DeiTConfig", "image", **_V), "vision", seq_dim=None),
    Arch("beit", _hf("BeitForImageClassification", "BeitConfig", "image", use_relative_position_bias=True, **_V),
         "vision", seq_dim=None),
    Arch("dinov2", _hf("Dinov2Model", "Dinov2Config", "image", **{**_V, "mlp_ratio": 2}), "vision", seq_dim=None),
    Arch("swin", _hf("SwinForImageClassification", "SwinConfig", "image", patch_size=2, embed_dim=16, depths=[1, 1],
                     num_heads=[2, 4], window_size=4, num_labels=10, image_size=32), "vision", seq_dim=None),
    Arch("segformer", _hf("SegformerForSemanticSegmentation", "SegformerConfig", "image", num_encoder_blocks=2,
                          depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
                          patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=32,
                          num_labels=4), "vision", seq_dim=None),
    Arch("mobilevit", _hf("MobileViTForImageClassification", "MobileViTConfig", "image", hidden_sizes=[32, 48, 64],
                          neck_hidden_sizes=[8, 16, 24, 32, 40, 48, 64], num_attention_heads=2, num_labels=10,
                          image_size=32), "vision", seq_dim=None),
    # CNNs
    Arch("convnext", _hf("ConvNextForImageClassification", "ConvNextConfig", "image", num_stages=2,
                         hidden_sizes=[16, 32], depths=[1, 1], num_labels=10), "cnn", seq_dim=None),
    Arch("convnextv2", _hf("ConvNextV2ForImageClassification", "ConvNextV2Config", "image", num_stages=2,
                           hidden_sizes=[16, 32], depths=[1, 1], num_labels=10), "cnn", seq_dim=None),
    Arch("resnet", _hf("ResNetForImageClassification", "ResNetConfig", "image", embedding_size=16,
                       hidden_sizes=[16, 32], depths=[1, 1], layer_type="bottleneck", num_labels=10), "cnn",
         seq_dim=None),
    Arch("mobilenet_v2", _hf("MobileNetV2ForImageClassification", "MobileNetV2Config", "image", image_size=32,
                             depth_multiplier=0.35, num_labels=10), "cnn", seq_dim=None),
    Arch("regnet", _hf("RegNetForImageClassification", "RegNetConfig", "image", embedding_size=16,
                       hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, num_labels=10), "cnn", seq_dim=None),
    # dual encoders
    Arch("clip", _hf("CLIPModel", "CLIPConfig", "clip",
                     text_config=dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, max_position_embeddings=64),
                     vision_config=dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=128), projection_dim=32), "dual"),
    # plain torch
    Arch("lstm", _torch(LSTMNet), "torch"),
    Arch("gru", _torch(LSTMNet, cell=nn.GRU), "torch"),
    Arch("transformer_encoder", _torch(TransformerEncoderNet), "torch"),
    Arch("transformer_encoder_postnorm", _torch(TransformerEncoderNet, norm_first=False), "torch"),
    Arch("unet", _torch(UNet, inputs="image"), "cnn", seq_dim=None),
    Arch("depthwise_separable", _torch(DepthwiseSeparable, inputs="image"), "cnn", seq_dim=None),
    Arch("embedding_bag", _torch(EmbeddingBagNet), "torch", seq_dim=None),
]}


def make_arch(name: str) -> tuple[nn.Module, tuple, dict]:
    """Build matrix model ``name``: ``(model, args, kwargs)``."""
    return ARCHS[name].build()


def other_inputs(name: str, args: tuple, kwargs: dict, *, seq: bool = True) -> tuple[tuple, dict]:
    """Inputs of another shape: batch + 1, and (``seq``) the sequence 3/4 as long for sequence models."""
    arch = ARCHS[name]

    def grow(t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        t = torch.cat([t, t[:1]])
        if seq and arch.seq_dim is not None and t.dim() > arch.seq_dim and t.shape[arch.seq_dim] >= 8:
            t = t.narrow(arch.seq_dim, 0, t.shape[arch.seq_dim] * 3 // 4)
        return t

    return tuple(grow(a) for a in args), {k: grow(v) for k, v in kwargs.items()}
