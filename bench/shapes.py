"""The one shape table of the kernel microbenchmarks (``python -m bench.kernels``).

GEMMs are ``out[M, N] = x[M, K] @ w[N, K].T`` (nn.Linear layout): M counts tokens (or output pixels), N output
features, K input features. ResNet-50 convs carry their conv geometry too and are benchmarked both as the
implicit-GEMM int8 conv and as the equivalent GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Conv:
    """NHWC conv geometry: input [batch, h, w, c], weight [oc, k, k, c], square kernel and stride."""

    batch: int
    h: int
    w: int
    c: int
    oc: int
    k: int
    stride: int = 1
    padding: int = 0

    @property
    def out_hw(self) -> tuple[int, int]:
        oh = (self.h + 2 * self.padding - self.k) // self.stride + 1
        ow = (self.w + 2 * self.padding - self.k) // self.stride + 1
        return oh, ow


@dataclass(frozen=True)
class Shape:
    name: str
    group: str  # bert | llama | resnet | square | decode
    M: int
    N: int
    K: int
    conv: Conv | None = None
    quick: bool = False  # part of the --quick subset
    sparse: bool = False  # also benchmark block-sparse weights (50% / 75% zero blocks)

    @property
    def flops(self) -> int:
        return 2 * self.M * self.N * self.K


def _conv(name: str, conv: Conv, quick: bool = False) -> Shape:
    oh, ow = conv.out_hw
    return Shape(name, "resnet", conv.batch * oh * ow, conv.oc, conv.k * conv.k * conv.c, conv, quick=quick)


BERT_TOKENS = 128 * 32  # sequence 128 x batch 32
LLAMA_TOKENS = 4096  # prefill of 2 x 2048 tokens
RESNET_BATCH = 32

SHAPES: tuple[Shape, ...] = (
    # BERT-base: hidden 768, FFN 3072.
    Shape("bert.attn_proj", "bert", BERT_TOKENS, 768, 768),
    Shape("bert.ffn_up", "bert", BERT_TOKENS, 3072, 768, quick=True),
    Shape("bert.ffn_down", "bert", BERT_TOKENS, 768, 3072),
    # Llama-2-7B (hidden 4096, MLP 11008) and Llama-3-8B (MLP 14336, GQA: 8 KV heads of 128 -> k/v N = 1024).
    Shape("llama7b.attn_qkvo", "llama", LLAMA_TOKENS, 4096, 4096),
    Shape("llama7b.mlp_up", "llama", LLAMA_TOKENS, 11008, 4096, quick=True, sparse=True),
    Shape("llama7b.mlp_down", "llama", LLAMA_TOKENS, 4096, 11008),
    Shape("llama8b.attn_kv", "llama", LLAMA_TOKENS, 1024, 4096),
    Shape("llama8b.mlp_up", "llama", LLAMA_TOKENS, 14336, 4096),
    Shape("llama8b.mlp_down", "llama", LLAMA_TOKENS, 4096, 14336),
    # ResNet-50 at batch 32: one conv of each kind per stage.
    _conv("resnet50.stem7x7", Conv(RESNET_BATCH, 224, 224, 3, 64, 7, 2, 3)),
    _conv("resnet50.c2_1x1", Conv(RESNET_BATCH, 56, 56, 64, 256, 1)),
    _conv("resnet50.c2_3x3", Conv(RESNET_BATCH, 56, 56, 64, 64, 3, 1, 1), quick=True),
    _conv("resnet50.c3_3x3", Conv(RESNET_BATCH, 28, 28, 128, 128, 3, 1, 1)),
    _conv("resnet50.c4_3x3", Conv(RESNET_BATCH, 14, 14, 256, 256, 3, 1, 1)),
    _conv("resnet50.c4_1x1", Conv(RESNET_BATCH, 14, 14, 256, 1024, 1)),
    _conv("resnet50.c5_3x3", Conv(RESNET_BATCH, 7, 7, 512, 512, 3, 1, 1)),
    # Squares: the GEMM targets live at 4096^3 and 8192^3.
    Shape("square1024", "square", 1024, 1024, 1024),
    Shape("square2048", "square", 2048, 2048, 2048),
    Shape("square4096", "square", 4096, 4096, 4096, quick=True, sparse=True),
    Shape("square8192", "square", 8192, 8192, 8192, sparse=True),
    # Decode: one token per sequence, K = N = 4096 (a Llama attention projection).
    *(Shape(f"decode.m{m}", "decode", m, 4096, 4096, quick=m in (1, 16)) for m in (1, 2, 4, 8, 16)),
)

# Square block-sparse benchmarks: fraction of zero blocks, and the BSR blocks (bn, bk) tried. 64x64 refetches a
# 128x64 slice of x per stored block; 128x64 and 128x128 halve and quarter the x bytes per FLOP.
SPARSITIES = (0.5, 0.75)
BSR_BLOCKS = ((64, 64), (128, 64), (128, 128))


def tiny(shape: Shape) -> Shape:
    """A CPU-sized stand-in of ``shape`` (same name and kind; dims capped) for runs without a GPU."""
    conv = shape.conv
    if conv is not None:
        conv = Conv(1, min(conv.h, 16), min(conv.w, 16), min(conv.c, 32), min(conv.oc, 64), conv.k, conv.stride,
                    conv.padding)  # fmt: skip
        oh, ow = conv.out_hw
        return Shape(shape.name, shape.group, oh * ow, conv.oc, conv.k * conv.k * conv.c, conv, shape.quick,
                     shape.sparse)  # fmt: skip
    shrink = -(-max(shape.N, shape.K) // 256)  # keep the N:K proportions
    return Shape(shape.name, shape.group, min(shape.M, 64), -(-shape.N // shrink), -(-shape.K // shrink), None,
                 shape.quick, shape.sparse)  # fmt: skip
