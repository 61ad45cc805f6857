"""Tokenizer: CLIP BPE with IRRA's <|mask|> (method.md 1.2), checked against open_clip's."""

import os

import pytest
import torch

from iclf.tokenizer import (
    EOT_ID,
    MASK_ID,
    MASK_TOKEN,
    PAD_ID,
    SOT_ID,
    VOCAB_SIZE,
    Tokenizer,
    bpe_vocab_path,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CAPTIONS = [
    "a person wearing a red jacket and black trousers",
    "The WOMAN is carrying a   bag, and she's wearing jeans!!",
    "A man with short hair wears a grey T-shirt; he'll walk past the 7-11 store.",
    "café naïve façade 東京 😀 — über-cool",
    "She&#39;s got a white &amp;amp; blue striped shirt &lt;and&gt; shorts",
    "  leading and trailing\twhitespace\n\nand new lines  ",
    "numbers 12345 and 3.14 and 1st 2nd 3rd",
    "they've said we'd go, I'm sure you're right, it's isn't",
    "a young girl in a pink dress holding a yellow umbrella in the rain",
    "THE MAN'S SHOES ARE BROWN LEATHER, HIS BACKPACK IS NAVY.",
    "!!! ??? ... --- *** ###",
    "the pedestrian is wearing a black coat over a white shirt " * 8,  # longer than 77 tokens
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def test_constants():
    assert (MASK_ID, SOT_ID, EOT_ID, VOCAB_SIZE, PAD_ID) == (49405, 49406, 49407, 49408, 0)


def test_vocab_file_is_open_clips(tok):
    path = bpe_vocab_path()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz" and path.parent.name == "open_clip"
    assert len(tok.encoder) == VOCAB_SIZE == tok.vocab_size


def test_reference_caption(tok):
    ids = tok("a person wearing a red jacket and black trousers")
    expected = [49406, 320, 2533, 3309, 320, 736, 6164, 537, 1449, 23172, 49407]
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, : len(expected)].tolist() == expected
    assert ids[0, len(expected):].eq(PAD_ID).all()
    assert tok.encode("a person wearing a red jacket and black trousers") == expected[1:-1]


def test_matches_open_clip(tok):
    import open_clip

    reference = open_clip.get_tokenizer("ViT-B-16")
    ours, theirs = tok(CAPTIONS), reference(CAPTIONS)
    assert ours.shape == theirs.shape == (len(CAPTIONS), 77)
    assert not (theirs == MASK_ID).any()  # none of these captions uses the dropped merge
    assert torch.equal(ours, theirs)


def test_dropped_merge_is_the_only_difference(tok):
    import open_clip

    theirs = open_clip.get_tokenizer("ViT-B-16")("jekyll")[0]
    ours = tok("jekyll")[0]
    assert MASK_ID in theirs.tolist()  # open_clip still applies the last merge "jeky ll</w>"
    assert MASK_ID not in ours.tolist()
    assert tok.decode(tok.encode("jekyll")) == "jekyll"


def test_truncation_keeps_eot_last(tok):
    ids = tok("the pedestrian is wearing a black coat over a white shirt " * 10)[0]
    assert ids.shape == (77,)
    assert ids[0] == SOT_ID and ids[-1] == EOT_ID
    assert (ids == EOT_ID).sum() == 1 and not (ids == PAD_ID).any()
    assert ids.argmax() == 76


def test_context_length_is_used():
    short = Tokenizer(context_length=8)("a person wearing a red jacket and black trousers")
    assert short.shape == (1, 8)
    assert short[0].tolist() == [49406, 320, 2533, 3309, 320, 736, 6164, 49407]


def test_mask_token_string(tok):
    assert tok.encode(MASK_TOKEN) == [MASK_ID]
    around = tok.encode("a man in a") + [MASK_ID] + tok.encode("coat")
    assert tok.encode("a man in a <|mask|> coat") == around
    assert tok.encode("<|MASK|>") == [MASK_ID]  # lower-cased before matching
    assert tok.encode("<|startoftext|><|endoftext|>") == [SOT_ID, EOT_ID]


def test_no_bpe_output_is_the_mask_id(tok):
    # Every 7th vocabulary word (decoded), plus the dropped merge's word in several contexts.
    words = [tok.decode([i]) for i in range(512, MASK_ID, 7)]
    text = " ".join(words) + " jekyll Jekyll's JEKYLL. dr.jekyll mr-jekyll"
    ids = tok.encode(text)
    assert len(ids) > 5000
    assert MASK_ID not in ids and SOT_ID not in ids and EOT_ID not in ids
    assert max(ids) < MASK_ID


def test_batch_and_single_string(tok):
    one = tok("red shirt")
    many = tok(["red shirt", "blue jeans and a long grey coat"])
    assert one.shape == (1, 77) and many.shape == (2, 77)
    assert torch.equal(one[0], many[0])
    assert (many.argmax(-1) == torch.tensor([3, 8])).all()  # EOT is the largest id


def test_bad_context_length():
    with pytest.raises(ValueError, match="context_length"):
        Tokenizer(context_length=1)


def test_not_a_vocab_file(tmp_path):
    bad = tmp_path / "vocab.txt.gz"
    bad.write_text("not gzip")
    with pytest.raises((FileNotFoundError, ValueError), match="vocab.txt.gz"):
        Tokenizer(vocab_path=bad)
