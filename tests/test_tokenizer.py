"""Tests of tokenizer.py: round trips, errors, dtypes, meta.json validation, offline gpt2."""

import json
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest

from smallgpt.errors import UserError
from smallgpt.tokenizer import (ByteTokenizer, CharTokenizer, GPT2Tokenizer, build_tokenizer, read_meta, token_dtype,
                                tokenizer_from_meta)

REPO_ROOT = Path(__file__).resolve().parents[1]
TIKTOKEN_CACHE = REPO_ROOT.parent / "shared" / "tiktoken_cache"


@pytest.fixture
def gpt2_cache(monkeypatch):
    if not TIKTOKEN_CACHE.is_dir():
        pytest.skip(f"no tiktoken cache at {TIKTOKEN_CACHE} (expected ../shared beside the checkout; "
                    "`python prepare/shared.py` fills it while online)")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))


@pytest.fixture
def no_network(monkeypatch):
    """No download can happen: sockets refuse, and so does tiktoken's own downloader."""
    import tiktoken.load

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)


def test_char_round_trip():
    text = "hello, world\nO Romeo!"
    tok = build_tokenizer("char", sorted(set(text)))
    assert tok.kind == "char" and tok.eot_token is None
    assert tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == tok.encode_array(text).tolist()
    assert tok.vocab == sorted(set(text))


def test_char_keeps_the_vocabulary_order():
    tok = CharTokenizer(list("cab"))  # ids are positions, even in an unsorted vocabulary
    assert tok.encode("abc") == [1, 2, 0] == tok.encode_array("abc").tolist()
    assert tok.decode([1, 2, 0]) == "abc"


def test_char_missing_characters_named():
    tok = CharTokenizer(list("abc"))
    with pytest.raises(UserError) as err:
        tok.encode("abzé")
    msg = str(err.value)
    assert "'z'" in msg and "'é'" in msg and "re-prepare" in msg and "prompt" in msg
    with pytest.raises(UserError, match="'z'"):
        tok.encode_array("abz")


def test_char_vocab_must_be_distinct_characters():
    with pytest.raises(UserError):
        CharTokenizer(["a", "a"])
    with pytest.raises(UserError):
        CharTokenizer(["ab"])
    with pytest.raises(UserError, match="vocabulary"):
        build_tokenizer("char")


@pytest.mark.parametrize("text", ["plain ascii", "héllo wörld ✓ 日本語 🙂", ""])
def test_byte_round_trip(text):
    tok = build_tokenizer("byte")
    assert tok.kind == "byte" and tok.vocab_size == 256 and tok.eot_token is None
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.encode_array(text).tolist() == ids


def test_byte_decode_replaces_broken_sequences():
    tok = ByteTokenizer()
    ids = tok.encode("é")[:1] + tok.encode("a")
    assert tok.decode(ids) == "\ufffda"


def test_gpt2_round_trip(gpt2_cache):
    tok = build_tokenizer("gpt2")
    assert tok.kind == "gpt2" and tok.vocab_size == 50257 and tok.eot_token == 50256
    assert tok.encode("Hello world") == [15496, 995]
    text = "First Citizen:\nBefore we proceed any further, hear me speak. ünïcödé 🙂"
    assert tok.decode(tok.encode(text)) == text
    # special-token text in a document is ordinary text, in both encode paths
    special = "a <|endoftext|> b"
    assert 50256 not in tok.encode(special)
    assert tok.encode_array(special).tolist() == tok.encode(special)
    assert tok.decode(tok.encode(special)) == special


def test_gpt2_lone_surrogate_does_not_crash(gpt2_cache):
    tok = GPT2Tokenizer()
    assert tok.encode_array("a\ud800b").tolist() == tok.encode("a\ud800b")


def test_gpt2_without_cache_or_network(tmp_path, monkeypatch, no_network):
    """The error says what is missing, where it was looked for, and every way to get it or do without it."""
    import tiktoken.registry

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget encodings loaded by other tests
    with pytest.raises(UserError) as err:
        build_tokenizer("gpt2")
    msg = str(err.value)
    assert "\n" not in msg
    assert "r50k_base" in msg and f"TIKTOKEN_CACHE_DIR={tmp_path}" in msg  # what is missing, and where
    assert "python prepare/shared.py" in msg and "online" in msg  # how to get it
    assert f"TIKTOKEN_CACHE_DIR={REPO_ROOT.parent / 'shared' / 'tiktoken_cache'}" in msg  # where that puts it
    assert "--tokenizer=byte" in msg and "--tokenizer=char" in msg  # how to prepare data without it
    assert list(tmp_path.iterdir()) == []  # nothing was fetched


def test_gpt2_error_names_tiktokens_default_cache(tmp_path, monkeypatch, no_network):
    import tiktoken.registry

    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tiktoken's default cache: an empty tmp/data-gym-cache
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    with pytest.raises(UserError) as err:
        build_tokenizer("gpt2")
    assert f"{tmp_path / 'data-gym-cache'} (TIKTOKEN_CACHE_DIR is not set)" in str(err.value)


def test_unknown_kind_names_the_choices():
    with pytest.raises(UserError) as err:
        build_tokenizer("sentencepiece")
    msg = str(err.value)
    assert "'sentencepiece'" in msg and all(kind in msg for kind in ("char", "byte", "gpt2", "bpe"))
    with pytest.raises(UserError, match="--tokenizer=bpe"):  # trained on a corpus, never built by name
        build_tokenizer("bpe")


def test_token_dtype_boundaries():
    assert token_dtype(65) == "uint16"
    assert token_dtype(256) == "uint16"
    assert token_dtype(50257) == "uint16"
    assert token_dtype(65535) == "uint16"
    assert token_dtype(65536) == "uint32"
    assert token_dtype(100_000) == "uint32"
    with pytest.raises(ValueError):
        token_dtype(0)


def _write_dataset(folder: Path, meta: dict, train=4, val=2):
    folder.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(meta.get("dtype", "uint16"))
    np.zeros(train, dtype).tofile(folder / "train.bin")
    np.zeros(val, dtype).tofile(folder / "val.bin")
    (folder / "meta.json").write_text(json.dumps(meta))


def _char_meta(**changes):
    meta = {"format_version": 1, "tokenizer": "char", "vocab_size": 3, "dtype": "uint16", "train_tokens": 4,
            "val_tokens": 2, "vocab": ["a", "b", "c"], "eot_token": None, "documents": {"train": 1, "val": 1},
            "source": "test"}
    meta.update(changes)
    return meta


def test_read_meta_and_tokenizer_from_meta(tmp_path):
    _write_dataset(tmp_path, _char_meta())
    meta = read_meta(tmp_path)
    tok = tokenizer_from_meta(meta)
    assert tok.kind == "char" and tok.decode(tok.encode("cab")) == "cab"
    assert tokenizer_from_meta({"tokenizer": "byte", "vocab_size": 256}).kind == "byte"


def test_read_meta_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_meta(tmp_path / "nowhere")
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        read_meta(tmp_path)
    _write_dataset(tmp_path, {k: v for k, v in _char_meta().items() if k != "dtype"})
    with pytest.raises(UserError, match="'dtype'"):
        read_meta(tmp_path)
    _write_dataset(tmp_path, _char_meta(tokenizer="sentencepiece"))
    with pytest.raises(UserError, match="sentencepiece"):
        read_meta(tmp_path)
    _write_dataset(tmp_path, _char_meta(dtype="uint8"))
    with pytest.raises(UserError, match="dtype"):
        read_meta(tmp_path)
    _write_dataset(tmp_path, _char_meta(), train=5)  # train.bin does not match train_tokens
    with pytest.raises(UserError, match="train.bin"):
        read_meta(tmp_path)
    _write_dataset(tmp_path, _char_meta(vocab=["a"]))
    with pytest.raises(UserError, match="vocab"):
        read_meta(tmp_path)
