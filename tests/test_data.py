"""The memory-mapped batch loader and dataset checks."""

import json
from pathlib import Path

import numpy as np
import pytest

from smallgpt.data import BatchSampler, load_dataset
from smallgpt.errors import UserError


def write_tokens(folder, train, val, dtype="uint16", vocab_size=1000, **meta_overrides):
    folder.mkdir(parents=True, exist_ok=True)
    np.asarray(train, dtype=dtype).tofile(folder / "train.bin")
    np.asarray(val, dtype=dtype).tofile(folder / "val.bin")
    meta = {"format_version": 1, "tokenizer": "byte", "vocab_size": vocab_size, "dtype": dtype,
            "train_tokens": len(train), "val_tokens": len(val), "eot_token": None,
            "documents": {"train": 1, "val": 1}, "source": "test"}
    meta.update(meta_overrides)
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_windows_stay_in_bounds_and_targets_are_shifted(tmp_path):
    n, block = 200, 16
    folder = write_tokens(tmp_path / "d", np.arange(n) % 256, np.arange(50) % 256, vocab_size=256)
    sampler = BatchSampler(folder / "train.bin", "uint16", block, seed=0)
    starts = sampler.draw_offsets(10_000)
    assert starts.min() == 0 and starts.max() == n - block - 1  # every window fits, all are reachable
    x, y, _ = sampler.batch(starts[:64])
    assert x.shape == y.shape == (64, block) and x.dtype == y.dtype == torch_int64()
    assert (y[:, :-1] == x[:, 1:]).all()
    np.testing.assert_array_equal(x[:, 0].numpy(), starts[:64] % 256)


def torch_int64():
    import torch
    return torch.int64


def test_uint32_tokens_are_read(tmp_path):
    folder = write_tokens(tmp_path / "d", np.arange(100) + 70_000, np.arange(40) + 70_000, dtype="uint32",
                          vocab_size=70_200)
    folder, meta = load_dataset(str(folder))
    x, _, _ = BatchSampler(folder / "train.bin", meta["dtype"], 8, seed=0).batch(np.array([5]))
    assert x.tolist() == [list(range(70_005, 70_013))]


def test_sampler_state_round_trip(tmp_path):
    folder = write_tokens(tmp_path / "d", np.zeros(500), np.zeros(50))
    a = BatchSampler(folder / "train.bin", "uint16", 8, seed=3)
    a.draw_offsets(7)
    state = json.loads(json.dumps(a.state_dict()))  # plain data
    expected = a.draw_offsets(20)
    b = BatchSampler(folder / "train.bin", "uint16", 8, seed=99)
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.draw_offsets(20), expected)


def test_too_short_split_is_a_clear_error(tmp_path):
    folder = write_tokens(tmp_path / "d", np.zeros(500), np.zeros(10))
    with pytest.raises(UserError, match="val.bin has 10 tokens, too few for block_size 64"):
        BatchSampler(folder / "val.bin", "uint16", 64, seed=0)


def test_missing_dataset_names_the_prepare_scripts(tmp_path):
    with pytest.raises(UserError, match="prepare/text.py"):
        load_dataset(str(tmp_path / "nothing"))


def test_files_that_disagree_with_meta(tmp_path):
    folder = write_tokens(tmp_path / "d", np.zeros(500), np.zeros(50), train_tokens=400)
    with pytest.raises(UserError, match="holds 1000 bytes but meta.json says 400 uint16 tokens; the folder's files disagree"):
        load_dataset(str(folder))


# ----------------------------------------------------------------------------- finding a dataset

def test_missing_dataset_path_is_named_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        load_dataset("data/nosuch")
    message = str(info.value)
    assert "data/nosuch is not a folder" in message and "data/data" not in message


def test_dataset_name_resolves_in_the_checkout_from_elsewhere(tmp_path, monkeypatch):
    from smallgpt import data

    checkout, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_tokens(checkout / "data" / "mine", np.arange(100) % 256, np.arange(20) % 256, vocab_size=256)
    monkeypatch.setattr(data, "CHECKOUT", checkout)
    monkeypatch.chdir(elsewhere)
    folder, meta = load_dataset("mine")
    assert folder == checkout / "data" / "mine" and meta["train_tokens"] == 100
    # the current folder comes first: ./data/<name> (where the prepare scripts write by default) wins
    write_tokens(elsewhere / "data" / "mine", np.arange(30) % 256, np.arange(20) % 256, vocab_size=256)
    folder, meta = load_dataset("mine")
    assert folder == Path("data") / "mine" and meta["train_tokens"] == 30
    # a path is only that path, never looked up in the checkout
    with pytest.raises(UserError, match="dataset './mine' not found: ./mine is not a folder"):
        load_dataset("./mine")


def test_missing_dataset_name_lists_every_place_tried(tmp_path, monkeypatch):
    from smallgpt import data

    monkeypatch.setattr(data, "CHECKOUT", tmp_path / "checkout")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        load_dataset("nosuch")
    message = str(info.value)
    assert "\n" not in message and "prepare/text.py" in message
    for place in ("nosuch", "data/nosuch", str(tmp_path / "checkout" / "data" / "nosuch")):
        assert place in message
    assert data.dataset_candidates("nosuch") == [Path("nosuch"), Path("data") / "nosuch",
                                                 tmp_path / "checkout" / "data" / "nosuch"]
