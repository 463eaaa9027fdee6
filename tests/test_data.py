from slimgraph.data import english_sentences


def test_heldout_text_never_leaks_into_training_text():
    train, heldout = english_sentences("train"), english_sentences("heldout")
    assert len(heldout) >= 200 and len(train) > 5 * len(heldout)
    assert not set(train) & set(heldout)
    assert set(english_sentences("all")) >= set(train) | set(heldout)


def test_extra_training_text_is_optional_and_deterministic():
    small = english_sentences("train", extra_training_text=False)
    assert 500 < len(small) < len(english_sentences("train"))
    assert english_sentences("train") == english_sentences("train")
    assert all(s[0].isupper() and s[-1] in ".!?" for s in small[:100])
