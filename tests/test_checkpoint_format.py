"""The checkpoint format has one home (checkpoint.py) and a version; a run resumes from its folder alone.

    python -m pytest tests/test_checkpoint_format.py -q
"""

import json

import pytest
from test_resume import read_metrics, tiny_args

import train
from conftest import run_script
from smallgpt.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from smallgpt.errors import UserError


@pytest.fixture(scope="module")
def run(small_char_dataset, tmp_path_factory):
    """A 5-iteration run written by train.py (unpadded vocabulary, as format 1 had)."""
    out = tmp_path_factory.mktemp("run")
    train.main(tiny_args(small_char_dataset, out, max_iters=5, vocab_multiple=1))
    return out


@pytest.mark.slow
def test_a_newer_format_is_refused_in_one_line(run, tmp_path):
    ckpt = load_checkpoint(run)
    assert ckpt["format_version"] == FORMAT_VERSION
    save_checkpoint({**ckpt, "format_version": FORMAT_VERSION + 1}, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match=rf"newer version of this code \(checkpoint format {FORMAT_VERSION + 1}; "
                                        rf"this code reads up to {FORMAT_VERSION}\): update the code"):
        load_checkpoint(tmp_path)
    result = run_script("sample.py", f"--out_dir={tmp_path}", "--max_new_tokens=5")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and "newer version" in result.stderr


def test_no_format_version_is_not_ours(tmp_path):
    save_checkpoint({"model": {}, "model_config": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match="not a checkpoint written by train.py"):
        load_checkpoint(tmp_path)


def as_format_1(ckpt: dict) -> dict:
    """The dict the previous version of train.py wrote: flat train_config, one "rng", no vocab_multiple."""
    old = dict(ckpt, format_version=1, rng=ckpt["rng_per_rank"][0])
    old["model_config"] = {k: v for k, v in ckpt["model_config"].items() if k != "vocab_multiple"}
    flat = {k: v for k, v in ckpt["train_config"].items() if k != "model"}
    flat.update({k: v for k, v in ckpt["train_config"]["model"].items() if k not in ("vocab_size", "vocab_multiple")})
    old["train_config"] = flat
    return old


def test_format_1_is_read_sampled_and_resumed(run, small_char_dataset, tmp_path, capsys):
    save_checkpoint(as_format_1(load_checkpoint(run)), tmp_path / "ckpt.pt")
    (tmp_path / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
    upgraded = load_checkpoint(tmp_path)
    assert upgraded["format_version"] == FORMAT_VERSION and upgraded["model_config"]["vocab_multiple"] == 1
    sample = run_script("sample.py", f"--out_dir={tmp_path}", "--max_new_tokens=20", "--start=ROMEO:")
    assert sample.returncode == 0 and sample.stdout.startswith("ROMEO:"), sample.stderr
    train.main(["--init_from=resume", f"--out_dir={tmp_path}", "--max_iters=8"])  # the run's own config
    assert load_checkpoint(tmp_path)["iter_num"] == 8
    assert [m["iter"] for m in read_metrics(tmp_path)] == [0, 5, 8]


def test_resume_needs_only_the_run_folder(run, tmp_path):
    """Shape, dataset, optimizer and schedule come from the run; keys given change what may change."""
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("ckpt.pt", "metrics.jsonl", "config.json"):
        (folder / name).write_bytes((run / name).read_bytes())
    train.main(["--init_from=resume", f"--out_dir={folder}", "--max_iters=10", "--learning_rate=5e-4"])
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model"]["n_layer"] == 2 and saved["model"]["n_embd"] == 32 and saved["model"]["dropout"] == 0.1
    assert saved["max_iters"] == 10 and saved["learning_rate"] == 5e-4 and saved["eval_interval"] == 5
    assert saved["dataset"] == json.loads((run / "config.json").read_text())["dataset"]
    assert load_checkpoint(folder)["iter_num"] == 10
    with pytest.raises(UserError, match=r"cannot resume .*n_head: 2 -> 4"):
        train.main(["--init_from=resume", f"--out_dir={folder}", "--n_head=4"])
    train.main(["--init_from=resume", f"--out_dir={folder}", "--max_iters=11", "--dropout=0.0"])
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model"]["dropout"] == 0.0 and saved["model"]["n_head"] == 2  # not the shape: it may change
