"""Config parsing: TOML files and --key=value overrides into a typed dataclass, with clear errors."""

import hashlib
import math
import os
import re
import resource
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import run_script
from smallgpt import device
from smallgpt.cli import parse_config
from smallgpt.errors import UserError
from train import TrainConfig


def parse(*argv):
    return parse_config(TrainConfig, list(argv))


def test_values_are_parsed_by_the_fields_type():
    cfg = parse("--learning_rate=1", "--max_iters=7", "--compile=False", "--bias=TRUE", "--dataset=x")
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    assert cfg.max_iters == 7 and cfg.compile == "false" and cfg.model.bias is True and cfg.dataset == "x"
    assert parse("--compile").compile == "true" and parse("--compile=auto").compile == "auto"
    assert parse("--weight_decay=1e-2").weight_decay == 0.01


def test_toml_then_command_line_in_order(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('n_layer = 3\nlearning_rate = 2  # an int for a float key is fine\ndataset = "d"\n')
    cfg = parse(str(path), "--n_layer=5")
    assert (cfg.model.n_layer, cfg.learning_rate, cfg.dataset) == (5, 2.0, "d")


def test_model_keys_flat_or_in_a_model_table(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('max_iters = 3\n[model]\nn_layer = 2\nmlp_ratio = 3\nrope_base = 500\n')
    cfg = parse(str(path), "--n_head=2", "--n_embd=64")
    assert (cfg.max_iters, cfg.model.n_layer, cfg.model.mlp_ratio, cfg.model.rope_base) == (3, 2, 3.0, 500.0)
    assert (cfg.model.n_head, cfg.model.n_embd) == (2, 64)


def test_every_model_field_is_a_key_with_help():
    """Derived from GPTConfig: a new model field is a config key, documented by its comment."""
    import dataclasses

    from model import GPTConfig
    from smallgpt.cli import config_keys

    keys = config_keys(TrainConfig)
    for f in dataclasses.fields(GPTConfig):
        if f.name == "vocab_size":  # set from the dataset, not a key
            assert f.name not in keys
            continue
        assert keys[f.name].group == "model" and keys[f.name].type is not None
        assert len(keys[f.name].help) > 10, f"{f.name} has no comment in model.py"


@pytest.mark.parametrize("text", ['max_iters = "10"\n', 'learning_rate = "3e-4"\n', 'bias = "true"\n'])
def test_toml_types_are_enforced(tmp_path, text):
    path = tmp_path / "typed.toml"
    path.write_text(text)
    key = text.split(" =")[0]
    with pytest.raises(UserError, match=rf"bad value for {key} in .*typed.toml: .* is not .*without quotes"):
        parse(str(path))


@pytest.mark.parametrize("argv, message", [
    (["--n_layr=3"], "did you mean n_layer"),
    (["--learning_rate=fast"], "learning_rate.*not a float"),
    (["--max_iters=1.5"], "max_iters.*not an int"),
    (["--compile=maybe"], "compile.*choose one of auto, true, false"),
    (["--bias=maybe"], "bias.*not a bool"),
    (["--dtype=float8"], "dtype.*choose one of"),
    (["--n_layer"], "missing value for --n_layer"),
    (["-x"], "options are written --key=value"),
])
def test_bad_command_lines(argv, message):
    with pytest.raises(UserError, match=message):
        parse(*argv)


@pytest.mark.parametrize("text, message", [
    ("batch_sise = 3\n", "unknown config key 'batch_sise' in .*did you mean batch_size"),
    ("batch_size = 'big'\n", "batch_size.*not an int"),
    ("compile = 1\n", "compile.*not a string"),
    ("bias = 1\n", "bias.*not a bool"),
    ("dataset = 3\n", "dataset.*not a string"),
    ("n_layer = = 3\n", "invalid TOML"),
])
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        parse(str(path))


def test_missing_config_file():
    with pytest.raises(UserError, match="config file not found"):
        parse("config/nope.toml")


def test_config_files_in_the_repo_are_valid():
    from conftest import REPO_ROOT
    files = sorted((REPO_ROOT / "config").glob("*.toml"))
    assert files
    for path in files:
        parse(str(path))


def number(text: str) -> int:
    return int(text.replace(",", "").replace("_", ""))


def test_shipped_configs_state_their_batch_arithmetic_right():
    """What a config's comments say of its batch holds: products ("1 sequence x 32 accumulation steps x
    1024 tokens = 32,768", "12 sequences of 64 = 768", "2^19 = 524,288", "2^19 tokens = 512 sequences" at
    the config's block_size), and each "on G GPUs S sequences per GPU in M micro-batches of B" is what
    train.py plans on G processes. A comment that speaks of sequences per GPU or of micro-batches states
    such a line, so that it is checked (gpt2_xl's once said an update was 64 sequences, not 512)."""
    from conftest import REPO_ROOT
    from smallgpt.data import plan_batches, sequences_per_update

    word = r"(?: [a-z]+)*"  # the words between a number and the next operator ("accumulation steps")
    product = re.compile(rf"(\d[\d,]*){word}((?: x \d[\d,]*{word})+) = (\d[\d,]*)")
    per_gpu = re.compile(r"on (\d+) GPUs? (\d[\d,]*) sequences(?: per GPU)? in (\d+) micro-batch(?:es)? of (\d+)")
    checked = 0
    for path in sorted((REPO_ROOT / "config").glob("*.toml")):
        cfg = parse(str(path))
        comments = [line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line]
        text = re.sub(r"\s+", " ", " ".join(comments))
        for m in product.finditer(text):
            factors = [number(m.group(1))] + [number(f) for f in re.findall(r"x (\d[\d,]*)", m.group(2))]
            assert math.prod(factors) == number(m.group(3)), (path.name, m.group(0))
            checked += 1
        for m in re.finditer(r"(\d[\d,]*) sequences of (\d+) = (\d[\d,]*)", text):
            assert number(m.group(1)) * number(m.group(2)) == number(m.group(3)), (path.name, m.group(0))
            checked += 1
        for m in re.finditer(r"2\^(\d+) (?:tokens )?= (\d[\d,]*)( sequences)?", text):
            unit = cfg.model.block_size if m.group(3) else 1
            assert 2 ** int(m.group(1)) == number(m.group(2)) * unit, (path.name, m.group(0))
            checked += 1
        seqs = sequences_per_update(cfg.tokens_per_update, cfg.model.block_size,
                                    cfg.gradient_accumulation_steps * cfg.batch_size)
        claims = per_gpu.findall(text)
        if re.search(r"per GPU|micro-batch", text):
            assert claims, f"{path.name} speaks of its batch per GPU: state it as 'on G GPUs S sequences per GPU " \
                           f"in M micro-batches of B'"
        for gpus, share, micro, size in claims:
            plan = plan_batches(seqs, cfg.batch_size, cfg.model.block_size, 0, int(gpus))
            stated = (number(share), [number(size)] * int(micro))
            assert (plan.stop - plan.start, plan.micro_sizes) == stated, (path.name, gpus, share, micro, size)
            checked += 1
    assert checked >= 6


def test_help_lists_every_key_with_type_and_default():
    result = run_script("train.py", "--help")
    assert result.returncode == 0
    from smallgpt.cli import config_keys
    for name in config_keys(TrainConfig):
        assert f"--{name}=" in result.stdout
    assert "--debug" in result.stdout and "--version" in result.stdout
    assert "--learning_rate=0.0006  (float)" in result.stdout


@pytest.mark.slow
def test_cli_errors_are_one_line_without_traceback():
    result = run_script("train.py", "--n_layr=3")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: unknown config key 'n_layr' on the command line; did you mean n_layer?"
    result = run_script("train.py", "--n_layr=3", env={"GPT_DEBUG": "1"})
    assert "Traceback" in result.stderr


@pytest.fixture
def two_usable_cores():
    """This process may run on exactly 2 CPUs (as on CI), whatever the machine has: its affinity, restored after."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 or more CPUs and os.sched_setaffinity (Linux)")
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(before)[:2])
    yield
    os.sched_setaffinity(0, before)


@pytest.mark.slow  # (its threads, one per core, wait on the other programs of a loaded machine)
def test_threads_above_the_usable_cores_are_capped_with_one_line(small_char_dataset, tmp_path, capsys):
    """--threads=1000 on 2 cores once ran 3.5x slower (load average 151) without a word."""
    import train
    from test_resume import tiny_args

    cores = len(os.sched_getaffinity(0))
    used = []
    train.main(tiny_args(small_char_dataset, tmp_path, max_iters=0, eval_iters=1, threads=1000),
               hook=lambda event, state, run: used.append(torch.get_num_threads()))
    out = capsys.readouterr().out
    assert out.count(f"threads=1000 is more than the {cores} core(s) this process may use: using {cores}") == 1, out
    assert set(used) == {cores}


def test_fsdp_without_torchrun_says_it_runs_as_one_process(small_char_dataset, tmp_path, capsys):
    import train
    from test_resume import tiny_args

    train.main(tiny_args(small_char_dataset, tmp_path, max_iters=1, eval_iters=1, parallel="fsdp"))
    lines = [line for line in capsys.readouterr().out.splitlines() if "parallel=fsdp" in line]
    assert lines == ["parallel=fsdp without torchrun: this runs as one process holding the whole model (start it "
                     "with torchrun --nproc_per_node=N to shard it over N processes)"], lines


@pytest.mark.parametrize("others, threads", [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (2.0, 1)])
def test_threads_leave_out_the_cores_other_processes_keep_busy(others, threads, monkeypatch, two_usable_cores):
    # 2 s later: all cores were busy for others + 0.5 core-seconds per second, 0.5 of them ours
    monkeypatch.setattr(device, "cpu_snapshot", lambda: (100.0 + 2 * (others + 0.5), 11.0, 52.0))
    since = (100.0, 10.0, 50.0)
    assert device.cores_used_by_others(since) == pytest.approx(others)
    assert device.free_cpu_threads(2, since) == threads
    assert device.free_cpu_threads(2, None) == 2  # no measurement (not Linux): the default


def test_a_run_refits_its_threads_when_other_programs_come_and_go(monkeypatch, two_usable_cores):
    """CpuThreads (train.py's threads on a CPU) re-reads how busy the others keep the cores every
    CHECK_EVERY_S: one busy program of 2 cores -> 1 thread, said in one line; gone -> 2 again."""
    readings = []  # (busy CPU seconds of all processes, ours, time): each second `others` cores more than ours

    def snapshot():
        busy, own, now = readings[-1]
        readings.append((busy + others + 0.5, own + 0.5, now + 1.0))
        return readings[-1]

    monkeypatch.setattr(device, "cpu_snapshot", snapshot)
    monkeypatch.setattr(device.CpuThreads, "CHECK_EVERY_S", 0.0)
    lines = []
    torch.set_num_threads(2)
    others, readings[:] = 0.0, [(100.0, 10.0, 50.0)]
    threads = device.CpuThreads(2, readings[0], lines.append)
    assert torch.get_num_threads() == 2 and lines == []  # an idle machine: no change, nothing said
    others = 1.0  # a busy loop starts
    threads.fit()
    assert torch.get_num_threads() == 1
    assert lines == ["other programs keep 1.0 of 2 cores busy: torch now uses 1 thread(s), was 2 "
                     "(--threads=N fixes the number)"]
    others = 0.1  # it ends
    threads.fit()
    assert torch.get_num_threads() == 2 and len(lines) == 2 and "uses 2 thread(s), was 1" in lines[1]
    monkeypatch.setattr(device.CpuThreads, "CHECK_EVERY_S", 3600.0)
    others, calls = 1.0, len(readings)
    threads.fit()  # too soon: /proc/stat is not read, nothing changes
    assert len(readings) == calls and torch.get_num_threads() == 2


# The machine may be shared: other processes add an unknown, changing load to every reading, and
# when they keep every core busy, a busy process only takes CPU time from them. So the live tests below
# do not compare readings with fixed numbers; they check bounds that hold whatever else runs:
#   * another program's CPU time is part of what others used:   others >= its CPU time / wall time
#   * our own CPU time is not, nor our children's (torch.compile's worker processes):
#                                                               others <= cores - our CPU time / wall time
# (all cores together cannot be busy for more than cores x wall time). If our own time were counted,
# the second bound would fail on a quiet machine (our threads hold every core) and on a saturated one
# (others would read `cores`) alike; if the other program were left out, the first would fail wherever
# it ran on otherwise idle cores (a quiet machine).
SLACK = 0.15  # cores: /proc/stat and os.times() count in 10 ms ticks, over windows of about a second
LINUX_ONLY = pytest.mark.skipif(device.cpu_snapshot() is None, reason="no /proc/stat on this system (Linux only)")
SPIN_HALF_A_SECOND = "import time\nwhile time.process_time() < 0.5: pass"  # 0.5 s of CPU, however loaded


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has finished
    except OSError:
        return False


@LINUX_ONLY
def test_another_program_is_measured():
    since = device.cpu_snapshot()
    start = time.monotonic()
    # sh starts the spinner in the background and exits at once: the orphaned spinner is not ours (as a
    # browser is not), so its time is the others'
    pid = int(subprocess.run(["sh", "-c", f"'{sys.executable}' -c '{SPIN_HALF_A_SECOND}' >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True).stdout)
    while _running(pid):
        assert time.monotonic() - start < 120, "the spinner did not finish"
        time.sleep(0.01)
    others = device.cores_used_by_others(since)
    wall = time.monotonic() - start
    assert 0.5 / wall - SLACK <= others <= _cores() + SLACK, (others, wall)


@LINUX_ONLY
def test_our_children_are_ours():
    child_before = _children_cpu_seconds()
    since = device.cpu_snapshot()
    start = time.monotonic()
    # one spinner per core, so that counting them as others would break the bound on a quiet machine
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN_HALF_A_SECOND]) for _ in range(_cores())]
    assert all(spinner.wait() == 0 for spinner in spinners)
    others = device.cores_used_by_others(since)
    wall = time.monotonic() - start
    child = (_children_cpu_seconds() - child_before) / wall
    assert child >= 0.5 * _cores() / wall
    assert 0 <= others <= _cores() - child + SLACK, (others, child, wall)


@LINUX_ONLY
def test_our_own_work_is_not_counted():
    cores = _cores()
    block = os.urandom(1 << 20)

    def spin(until):
        while time.monotonic() < until:
            hashlib.sha256(block).digest()  # releases the GIL: the threads run on every core

    own_before = sum(os.times()[:2])
    since = device.cpu_snapshot()
    start = time.monotonic()
    threads = [threading.Thread(target=spin, args=(start + 1.0,)) for _ in range(cores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    others = device.cores_used_by_others(since)
    wall = time.monotonic() - start
    own = (sum(os.times()[:2]) - own_before) / wall
    assert own > 0.05  # the threads ran (on a quiet machine own is about `cores`, under load less)
    assert 0 <= others <= cores - own + SLACK, (others, own, cores)
