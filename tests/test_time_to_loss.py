"""bench/time_to_loss.py: the time a run's val loss reached a target, and an interleaved race of two configs to it.

    python -m pytest tests/test_time_to_loss.py -q
"""

import json
import re

import pytest

from conftest import run_script


def test_reads_the_first_evaluation_at_or_below_the_target(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"iter": 0, "kind": "eval", "val_loss": 4.2, "elapsed_s": 1.0},
               {"iter": 10, "kind": "train", "loss": 1.0, "elapsed_s": 2.0},
               {"iter": 100, "kind": "eval", "val_loss": 1.46, "elapsed_s": 30.5},
               {"iter": 200, "kind": "eval", "val_loss": 1.40, "elapsed_s": 61.0}]
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n{\"cut short")
    result = run_script("bench/time_to_loss.py", str(run), "--target=1.47")
    assert result.returncode == 0, result.stderr
    assert "val loss 1.4600 <= 1.47 at iteration 100, 30.5s" in result.stdout
    missed = run_script("bench/time_to_loss.py", str(run), "--target=1.0")
    assert "never reached 1.0 (best val loss 1.4000" in missed.stdout
    bad = run_script("bench/time_to_loss.py", "--target=1.47")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--race" in bad.stderr


@pytest.mark.slow
def test_a_race_runs_both_configs_in_turn_and_prints_medians(small_char_dataset, tmp_path):
    tiny = ("n_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 16\nbatch_size = 4\neval_iters = 2\n"
            "compile = \"false\"\ndevice = \"cpu\"\ndtype = \"float32\"\nmax_iters = 4\neval_interval = 4\n")
    (tmp_path / "base.toml").write_text(tiny + "learning_rate = 1e-3\n")
    (tmp_path / "new.toml").write_text(tiny + "learning_rate = 3e-3\n")
    result = run_script("bench/time_to_loss.py", "--race", str(tmp_path / "new.toml"), "--baseline",
                        str(tmp_path / "base.toml"), f"--dataset={small_char_dataset}", "--target=9.0", "--rounds=2",
                        "--", "--seed=3")
    assert result.returncode == 0, result.stderr
    order = re.findall(r"^  \S+/(base|new)\.toml: 4 updates", result.stdout, re.MULTILINE)
    assert order == ["base", "new", "base", "new"], result.stdout  # interleaved, the baseline first
    rows = {m.group(1): m for m in re.finditer(r"^\S+/(base|new)\.toml\s+4\s+([\d.]+)\s+[\d.]+\s+(\d) of 2$",
                                                result.stdout, re.MULTILINE)}
    assert set(rows) == {"base", "new"} and rows["new"].group(3) == "2", result.stdout
    # a run counts only when its process also ended within --within_seconds
    too_slow = run_script("bench/time_to_loss.py", "--race", str(tmp_path / "new.toml"), "--baseline",
                          str(tmp_path / "base.toml"), f"--dataset={small_char_dataset}", "--target=9.0", "--rounds=1",
                          "--within_seconds=0.5")
    assert too_slow.returncode == 0, too_slow.stderr
    assert "reached 9.0 in a process of at most 0.5 s" in too_slow.stdout
    assert re.search(r"^\S+/new\.toml\s+4\s+[\d.]+\s+[\d.]+\s+0 of 1$", too_slow.stdout, re.MULTILINE), too_slow.stdout
