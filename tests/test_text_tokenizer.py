"""The CLIP BPE tokenizer gives dino.txt's official token ids, offline, and names a bad vocabulary file."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from engine.text import Tokenizer, VocabularyError
from engine.text.tokenizer import END, N_MERGES, VOCAB_SIZE, default_vocab_path

SOT, EOT = 49406, 49407

# Ids printed by the official code (dinov2/hub/text/tokenizer.py over CLIP's SimpleTokenizer, fetched checkout)
# for the shipped vocabulary; they cover ftfy's repairs and the double HTML unescape that other tokenizers skip.
OFFICIAL = {
    "a red motorcycle": [SOT, 320, 736, 10297, EOT],
    "Caf&eacute; &amp;amp; crème brûlée": [SOT, 15304, 261, 1075, 12138, 614, 711, 127, 119, 75, 13489, EOT],
    "schÃ¶n": [SOT, 844, 7255, 333, EOT],
    "fish &amp;amp;amp; chips": [SOT, 2759, 261, 8855, EOT],
    "<b>fish &amp;amp; chips</b>": [SOT, 283, 321, 285, 2759, 261, 8855, 34308, 321, 285, EOT],
    "東京の夜景 🌃🚀": [SOT, 48338, 21078, 105, 21575, 23170, 250, 48132, 363, 1576, 225, 13542, EOT],
    "  A\tPhoto\n of  a DOG!!  ": [SOT, 320, 1125, 539, 320, 1929, 748, EOT],
    "Привет мир": [SOT, 26302, 16370, 29503, 110, 22176, 141, 480, 38018, 16701, 141, 478, EOT],
}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def test_the_vocabulary_ships_with_the_app_and_has_clips_size(tok):
    assert default_vocab_path().is_file()
    assert len(tok.vocab) == VOCAB_SIZE
    assert tok.vocab["<|startoftext|>"] == SOT and tok.vocab[END] == EOT


@pytest.mark.parametrize("text", list(OFFICIAL))
def test_ids_equal_the_official_tokenizers(tok, text):
    ids = tok.tokenize(text)
    assert ids.dtype == torch.long and ids.shape == (1, 77)
    expected = OFFICIAL[text]
    assert ids[0, : len(expected)].tolist() == expected
    assert not ids[0, len(expected) :].any()  # zero padding


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory, tok):
    """transformers' CLIPTokenizer built from the same merges: an independent BPE and pre-tokenizer."""
    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip")
    with gzip.open(default_vocab_path(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : N_MERGES + 1]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "vocab.json").write_text(json.dumps(tok.vocab), encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


TEXTS = [
    "a red motorcycle", "A photo of a DOG!!", "", "don't you've it'll we'd 1234 3.14", "東京の夜景 🌃🚀",
    "Привет мир", "emoji 👨‍👩‍👧 family ❤️", "مرحبا بالعالم", "ελληνικά κείμενα", "tab\tnew\nline",
    "C'est l'été à Paris!", "snake_case-and/slashes\\ #hash @at", "x" * 300,
]


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_transformers_clip_tokenizer(tok, hf_clip, text):
    ours = tok.tokenize(text)[0].tolist()
    theirs = hf_clip(text, max_length=77, truncation=True)["input_ids"]
    assert ours[: len(theirs)] == theirs
    assert not any(ours[len(theirs) :])


def test_empty_and_blank_text_are_start_and_end_only(tok):
    ids = tok.tokenize(["", "   \n\t "])
    assert ids[:, :2].tolist() == [[SOT, EOT], [SOT, EOT]]
    assert not ids[:, 2:].any()


def test_a_long_text_keeps_76_tokens_and_ends_with_the_end_token(tok):
    text = "word " * 100
    assert tok.token_count(text) == 102  # start + 100 + end: the caller can say it was cut
    ids = tok.tokenize(text)[0]
    assert ids.shape == (77,)
    assert ids[0] == SOT and ids[-1] == EOT
    assert (ids[1:-1] == tok.vocab["word</w>"]).all()
    assert tok.tokenize(text, context_length=5)[0].tolist() == [SOT, *[tok.vocab["word</w>"]] * 3, EOT]


def test_batches_and_decode_round_trip(tok):
    ids = tok.tokenize(["a cat", "a red motorcycle"])
    assert ids.shape == (2, 77)
    assert tok.decode(tok.encode("Crème brûlée in 東京")) == "crème brûlée in 東京"


def test_missing_vocabulary_names_the_file(tmp_path):
    missing = tmp_path / "nope.txt.gz"
    with pytest.raises(VocabularyError, match=r"nope\.txt\.gz.*missing"):
        Tokenizer(missing)


def test_corrupt_vocabulary_names_the_file(tmp_path):
    bad = tmp_path / "bpe.txt.gz"
    bad.write_bytes(b"this is not gzip at all")
    with pytest.raises(VocabularyError, match=r"bpe\.txt\.gz.*not a readable gzip"):
        Tokenizer(bad)
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wt") as f:
        f.write("#version: 0.2\ni n\nt h\n")
    with pytest.raises(VocabularyError, match=r"short\.txt\.gz"):
        Tokenizer(short)


def test_vocab_path_overrides_the_bundled_file(tmp_path):
    copy = tmp_path / "my_vocab.txt.gz"
    copy.write_bytes(default_vocab_path().read_bytes())
    assert Tokenizer(copy).tokenize("a dog").tolist() == Tokenizer().tokenize("a dog").tolist()
