"""plot.py: pictures of runs from metrics.jsonl, labels from config.json, save_loss_plot never raises.

    python -m pytest tests/test_plot.py -q
"""

import json
import math
import os
import sys

import pytest

from conftest import run_script
from smallgpt import plot
from smallgpt.cli import run_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(folder, learning_rate=1e-3, n_layer=4, nested=False, iters=1000, every=100, extra_line="",
             legacy=False):
    """A run folder as train.py leaves it: metrics.jsonl (evaluation records, a training line's record
    between them, a key plot.py does not know) and config.json. legacy: evaluations only, without
    "kind", as train.py wrote them before training lines were recorded."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for it in range(0, iters + 1, every):
        val = 1.5 + 2.7 * math.exp(-6 * it / iters)
        if it and not legacy:
            lines.append(json.dumps({"iter": it, "kind": "train", "loss": val + 0.3, "grad_norm": 0.5,
                                     "lr": learning_rate, "ms_per_iter": 50.0, "tok_per_s": 1000, "elapsed_s": 0.05 * it}))
        lines.append(json.dumps({"iter": it, **({} if legacy else {"kind": "eval"}), "train_loss": val - 0.02,
                                 "val_loss": val, "lr": learning_rate, "elapsed_s": 0.05 * it, "tokens_per_s": 1000}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n" + extra_line)
    config = {"out_dir": str(folder), "learning_rate": learning_rate, "batch_size": 12}
    if nested:
        config["model"] = {"n_layer": n_layer}
    else:
        config["n_layer"] = n_layer
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_two_runs_make_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install -e \".[plot]\")")
    from matplotlib.image import imread

    a = fake_run(tmp_path / "out-a", extra_line='{"iter": 11')  # a half-written last line is skipped
    b = fake_run(tmp_path / "out-b", learning_rate=3e-3, nested=True)
    out = plot.main([str(a), str(b), f"--out={tmp_path / 'runs.png'}"])
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    height, width, _ = imread(out).shape
    assert width > 800 and height > 500
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as any file written there, not private (0600)


@pytest.mark.parametrize("legacy", [False, True])
def test_the_evaluations_are_read_and_training_records_left_out(tmp_path, legacy):
    run = fake_run(tmp_path / "run", iters=300, legacy=legacy, extra_line='{"iter": 4')
    evaluations = plot.read_metrics(run)
    assert [r["iter"] for r in evaluations] == [0, 100, 200, 300]
    assert all("val_loss" in r for r in evaluations)


def test_labels_name_the_options_that_differ_flat_or_nested():
    configs = [plot.flatten({"learning_rate": 1e-3, "batch_size": 12, "out_dir": "a", "n_layer": 4}),
               plot.flatten({"learning_rate": 3e-3, "batch_size": 12, "out_dir": "b", "model": {"n_layer": 4}}),
               plot.flatten({"learning_rate": 1e-3, "batch_size": 12, "out_dir": "c", "model": {"n_layer": 6}})]
    assert plot.differing_options(configs) == [["learning_rate=0.001", "n_layer=4"],
                                               ["learning_rate=0.003", "n_layer=4"],
                                               ["learning_rate=0.001", "n_layer=6"]]
    assert plot.differing_options(configs[:1]) == [[]]  # one run: nothing to compare
    assert plot.differing_options([{"a": 1}, {}]) == [["a=1"], ["a=-"]]
    resumed = [{"init_from": "scratch"}, {"init_from": "resume"}, {}]
    assert plot.differing_options(resumed) == [[], [], []]


def test_run_names_are_told_apart(tmp_path):
    names = plot.run_names([tmp_path / "x" / "out", tmp_path / "y" / "out", tmp_path / "z"])
    assert names == ["x/out", "y/out", "z"]


def test_missing_matplotlib_is_one_line(tmp_path, capsys, monkeypatch):
    run = fake_run(tmp_path / "run")
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setattr(sys, "argv", ["plot.py"])
    with pytest.raises(SystemExit) as info:
        run_main(plot.main, [str(run), f"--out={tmp_path / 'x.png'}"])
    err = capsys.readouterr().err
    assert info.value.code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: plotting needs matplotlib") and '.[plot]' in err
    assert plot.save_loss_plot(run) is None and not (run / "loss.png").exists()


def test_save_loss_plot_never_raises(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install -e \".[plot]\")")
    assert plot.save_loss_plot(tmp_path / "nothing") is None  # no folder
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("not json\n")
    assert plot.save_loss_plot(empty) is None  # no records
    blocked = fake_run(tmp_path / "blocked")
    (blocked / "loss.png").mkdir()  # a folder where the picture goes: the rename fails
    assert plot.save_loss_plot(blocked) is None
    assert list(blocked.glob(".loss.png.*")) == []  # no temporary file left behind
    good = fake_run(tmp_path / "good")
    assert plot.save_loss_plot(good) == good / "loss.png"
    assert (good / "loss.png").read_bytes().startswith(PNG_MAGIC)


def test_script_errors_are_one_line(tmp_path):
    result = run_script("-m smallgpt.plot", str(tmp_path / "no_run"), f"--out={tmp_path / 'x.png'}")
    assert result.returncode == 1 and result.stderr.startswith("error: no metrics.jsonl in")
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_script("-m smallgpt.plot")
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "RUN" in result.stderr


def test_training_draws_loss_png_and_runs_on_without_matplotlib(small_char_dataset, tmp_path, monkeypatch, capsys):
    """train.py leaves out_dir/loss.png with every evaluation drawn; without matplotlib it trains the same
    and draws nothing."""
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install -e \".[plot]\")")
    from test_resume import tiny_args

    import train

    train.main(tiny_args(small_char_dataset, tmp_path / "drawn", max_iters=10))
    picture = tmp_path / "drawn" / "loss.png"
    assert picture.read_bytes().startswith(PNG_MAGIC)
    assert picture.stat().st_mtime >= (tmp_path / "drawn" / "metrics.jsonl").stat().st_mtime  # the last one too

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    train.main(tiny_args(small_char_dataset, tmp_path / "plain", max_iters=10))
    assert "done: " in capsys.readouterr().out
    assert (tmp_path / "plain" / "ckpt.pt").is_file() and not (tmp_path / "plain" / "loss.png").exists()
