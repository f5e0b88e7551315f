"""The search box's text encoder through OpenVINO gives torch's vectors, and its converted model is cached."""

from __future__ import annotations

import pytest
import torch

from engine.models import load_dinotxt
from engine.text import Tokenizer
from engine.text.openvino_text import OpenVinoText, available, cache_key
from engine.text.query import embed_texts, encode_text_ids
from tests.dinotxt_helpers import TEXT_ENCODER, save_tiny_dinotxt

pytestmark = [pytest.mark.skipif(not available(), reason="OpenVINO is not installed"), pytest.mark.openvino]

TEXTS = ["a red motorcycle", "東京の夜景 🌃🚀", "word " * 90, "a photo of a dog <|endoftext|> and more"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_dinotxt(save_tiny_dinotxt(tmp_path_factory.mktemp("dinotxt")))


def test_openvino_f32_matches_torch(model):
    ids = Tokenizer().tokenize(TEXTS)
    with torch.no_grad():
        expected = model.encode_text(ids)
    got = OpenVinoText(model.text_model, "fp32")(ids)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4)
    bf16 = OpenVinoText(model.text_model, "bf16")(ids)
    assert torch.nn.functional.cosine_similarity(bf16, expected).min() > 0.999


def test_the_converted_model_is_cached_and_reused(model, tmp_path):
    key = cache_key(model.files["text_encoder"])
    first = OpenVinoText(model.text_model, "fp32", tmp_path, key)
    assert not first.from_cache
    assert (tmp_path / f"dinotxt_text_{key}.xml").is_file() and (tmp_path / f"dinotxt_text_{key}.bin").is_file()
    second = OpenVinoText(model.text_model, "fp32", tmp_path, key)
    assert second.from_cache
    ids = Tokenizer().tokenize(TEXTS[:2])
    assert torch.equal(first(ids), second(ids))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ov-")] == []  # no temp folder left


def test_a_changed_text_encoder_file_gets_a_new_key(model, tmp_path):
    copy = tmp_path / TEXT_ENCODER
    copy.write_bytes(model.files["text_encoder"].read_bytes())
    key = cache_key(copy)
    copy.write_bytes(copy.read_bytes() + b"\0")
    assert cache_key(copy) != key


def test_int8_weights_keep_the_vectors_and_are_cached_apart(model, tmp_path):
    """The search box's precision: int8 weights, decompressed in f32 matmuls; its own converted graph on disk."""
    ids = Tokenizer().tokenize(TEXTS)
    with torch.no_grad():
        expected = model.encode_text(ids)
    key = cache_key(model.files["text_encoder"])
    int8 = OpenVinoText(model.text_model, "int8", tmp_path, key)
    cos = torch.nn.functional.cosine_similarity(int8(ids), expected)
    assert cos.min() > 0.999 and cos.min() < 1 - 1e-7  # close, and not the f32 graph under another name
    assert (tmp_path / f"dinotxt_text_{key}_int8.xml").is_file()
    assert not OpenVinoText(model.text_model, "fp32", tmp_path, key).from_cache  # f32 is not the int8 graph
    assert OpenVinoText(model.text_model, "int8", tmp_path, key).from_cache
    with torch.no_grad():
        assert torch.equal(model.encode_text(ids), expected)  # the torch model itself was left in f32


def test_search_vectors_are_the_same_with_either_backend(model):
    ov = embed_texts(model, ["a red motorcycle", "coffee"], backend="openvino")
    pt = embed_texts(model, ["a red motorcycle", "coffee"], backend="torch")
    assert (ov.vectors * pt.vectors).sum(1).min() > 0.999  # unit vectors: the cosine
    with pytest.raises(ValueError, match="unknown backend"):
        encode_text_ids(model, Tokenizer().tokenize("x"), backend="tensorrt")
