"""Patterns: parsing, exact masks (unstructured / N:M / blocks, odd and prime shapes) and the verifier."""

import pytest
import torch

from slimgraph import InputError, VerificationError
from slimgraph.sparse.patterns import (
    Pattern,
    keep_masks,
    lowest_k,
    parse_pattern,
    verify_pattern,
    zero_fraction,
)


@pytest.mark.parametrize(("spec", "text"), [
    ("unstructured", "unstructured"), ("2:4", "2:4"), (" 1 : 8 ", "1:8"), ((32, 32), "32x32"), ([16, 64], "16x64"),
    ("32x16", "32x16"), (Pattern("n:m", n=2, m=4), "2:4"),
])
def test_parse_pattern_accepts_every_spelling(spec, text):
    assert str(parse_pattern(spec)) == text
    assert str(parse_pattern(text)) == text  # the recorded string parses back to the same pattern


@pytest.mark.parametrize("spec", ["dense", "4:2", "0:4", "2:2", (32,), (0, 32), (32.0, 32), "32x", 7, None])
def test_parse_pattern_rejects_unknown_patterns(spec):
    with pytest.raises(InputError):
        parse_pattern(spec)


def test_lowest_k_is_exact_even_with_ties():
    scores = torch.tensor([3.0, 1.0, 1.0, 1.0, 2.0, 0.5])
    mask = lowest_k(scores, 3)
    assert int(mask.sum()) == 3 and mask[5] and mask[1] and mask[2] and not mask[3]
    assert int(lowest_k(torch.zeros(10), 4).sum()) == 4
    assert not lowest_k(scores, 0).any() and lowest_k(scores, 6).all()


@pytest.mark.parametrize("shape", [(7, 13), (31, 17), (1, 5), (16, 3, 3, 3)])
def test_unstructured_local_zeroes_exactly_round_sparsity_times_numel_per_layer(shape):
    scores = {"a": torch.rand(shape), "b": torch.rand(11, 29)}
    masks = keep_masks(scores, parse_pattern("unstructured"), 0.6, "local")
    for k, s in scores.items():
        assert int((~masks[k]).sum()) == round(0.6 * s.numel())
        # the zeroed ones are the lowest scores
        assert s[~masks[k]].max() <= s[masks[k]].min()


def test_unstructured_global_is_exact_over_all_layers_and_favours_the_low_scored_layer():
    scores = {"small": torch.rand(13, 7) * 0.1, "big": torch.rand(17, 19)}
    masks = keep_masks(scores, parse_pattern("unstructured"), 0.5, "global")
    zeros = {k: int((~m).sum()) for k, m in masks.items()}
    assert sum(zeros.values()) == round(0.5 * (13 * 7 + 17 * 19))
    assert zeros["small"] == 13 * 7  # every weight of the low-scored layer goes first


@pytest.mark.parametrize(("shape", "nm"), [((8, 16), "2:4"), ((5, 12), "1:4"), ((6, 24), "2:8"),
                                           ((8, 8, 3, 3), "2:4"), ((3, 12, 1), "2:4")])
def test_nm_keeps_exactly_n_of_every_m_along_the_input_dim(shape, nm):
    pattern = parse_pattern(nm)
    w = torch.randn(shape)
    keep = keep_masks({"w": w.abs()}, pattern, pattern.fixed_sparsity, "global")["w"]
    sparse = w * keep
    verify_pattern(sparse, pattern, min_sparsity=pattern.fixed_sparsity)
    # groups along dim 1 (input features / input channels) at every other index
    groups = keep.movedim(1, -1).reshape(-1, shape[1] // pattern.m, pattern.m)
    assert (groups.sum(-1) == pattern.n).all()
    assert zero_fraction(sparse, pattern) == pytest.approx(1 - pattern.n / pattern.m)


def test_verify_pattern_names_the_weight_and_the_first_bad_group():
    w = torch.ones(4, 8)
    w[:, 2:4] = 0
    w[:, 4:6] = 0
    w[2, 5] = 1.0
    with pytest.raises(VerificationError, match=r"layer 'fc'.*breaks pattern 2:4.*row 2.*columns 4\.\.7 hold 3"):
        verify_pattern(w, "2:4", name="layer 'fc'")
    with pytest.raises(VerificationError, match="not a multiple of M=4"):
        verify_pattern(torch.zeros(4, 6), "2:4", name="w")


@pytest.mark.parametrize(("shape", "block"), [((64, 64), (32, 32)), ((70, 45), (32, 16)), ((37, 53), (16, 16)),
                                              ((16, 8, 3, 3), (8, 16))])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_block_masks_zero_whole_tiles_closest_to_the_target(shape, block, scope):
    pattern = parse_pattern(block)
    w = torch.randn(shape)
    keep = keep_masks({"w": w.abs()}, pattern, 0.5, scope)["w"]
    sparse = w * keep
    view = keep.reshape(shape[0], -1).float()
    bn, bk = block
    for r in range(0, view.shape[0], bn):
        for c in range(0, view.shape[1], bk):
            tile = view[r:r + bn, c:c + bk]
            assert tile.min() == tile.max(), f"tile at ({r}, {c}) is partly kept"
    achieved = zero_fraction(sparse, pattern)
    assert achieved == pytest.approx(float((~keep).sum()) / keep.numel())
    biggest_tile = bn * bk / w.numel()
    assert abs(achieved - 0.5) <= biggest_tile / 2 + 1e-9  # the closest reachable count of tiles
    verify_pattern(sparse, pattern, min_sparsity=achieved)


def test_verify_pattern_counts_only_whole_zero_tiles_for_blocks():
    w = torch.ones(32, 32)
    w[::2] = 0  # half the elements are zero, but no 16x16 tile is
    assert zero_fraction(w, parse_pattern((16, 16))) == 0.0
    with pytest.raises(VerificationError, match="all-zero 16x16 tiles"):
        verify_pattern(w, (16, 16), name="w", min_sparsity=0.5)
    verify_pattern(w, "unstructured", name="w", min_sparsity=0.5)
