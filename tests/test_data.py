"""The memory-mapped batch loader and dataset checks."""

import json

import numpy as np
import pytest

from cli import UserError
from data import BatchSampler, load_dataset


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
    x, y = sampler.batch(starts[:64])
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
    x, _ = BatchSampler(folder / "train.bin", meta["dtype"], 8, seed=0).batch(np.array([5]))
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
