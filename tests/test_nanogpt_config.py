"""Coming from nanoGPT: its config files are read (never run) and mean here what they meant there, and its
README's command lines, with `.py` changed to `.toml`, train the same tokens per iteration.

NANOGPT_CONFIGS holds the assignments of nanoGPT's shipped config/*.py files (their content without
the comments, written out here; no nanoGPT code is in this repo). Hostile files are refused with one
line naming the file, line and construct, run nothing and take no time.

    python -m pytest tests/test_nanogpt_config.py -q
"""

import dataclasses
import re
import time

import pytest
import torch
from test_hf import gpt2_dataset  # noqa: F401  (a fixture: GPT-2 BPE data for the GPT-2 configs)

import sample
import train
from conftest import REPO_ROOT, run_script
from smallgpt import device
from smallgpt.checkpoint import load_checkpoint
from smallgpt.cli import build_config, read_overrides
from smallgpt.errors import UserError

NANOGPT_CONFIGS = {
    "train_shakespeare_char.py": """
out_dir = 'out-shakespeare-char'
eval_interval = 250
eval_iters = 200
log_interval = 10
always_save_checkpoint = False
wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
""",
    "train_gpt2.py": """
wandb_log = True
wandb_project = 'owt'
wandb_run_name='gpt2-124M'
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8
max_iters = 600000
lr_decay_iters = 600000
eval_interval = 1000
eval_iters = 200
log_interval = 10
weight_decay = 1e-1
""",
    "finetune_shakespeare.py": """
import time

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())
dataset = 'shakespeare'
init_from = 'gpt2-xl'
always_save_checkpoint = False
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20
learning_rate = 3e-5
decay_lr = False
""",
    **{f"eval_gpt2{suffix}.py": f"""
batch_size = 8
eval_iters = 500
eval_only = True
wandb_log = False
init_from = 'gpt2{suffix.replace("_", "-")}'
""" for suffix in ("", "_medium", "_large", "_xl")},
}
TRAINING = ["train_shakespeare_char.py", "train_gpt2.py", "finetune_shakespeare.py"]
README_CPU = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
              "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
              "--lr_decay_iters=2000", "--dropout=0.0"]


def nanogpt_file(tmp_path, name: str) -> str:
    path = tmp_path / "nanoGPT" / "config" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(NANOGPT_CONFIGS[name].lstrip())
    return str(path)


def config_of(*argv, sources=None) -> train.TrainConfig:
    return build_config(train.TrainConfig, read_overrides(train.TrainConfig, list(argv), sources=sources,
                                                          nanogpt="train"))


def tokens_per_iteration(cfg) -> int:
    """What one update trains (train.py's arithmetic: tokens_per_update, else accumulation x batch)."""
    return cfg.tokens_per_update or cfg.gradient_accumulation_steps * cfg.batch_size * cfg.model.block_size


# ----------------------------------------------------------------------------- nanoGPT's files, read


@pytest.mark.parametrize("name", NANOGPT_CONFIGS)
def test_shipped_configs_mean_what_they_mean_in_nanogpt(name, tmp_path, capsys):
    cfg = config_of(nanogpt_file(tmp_path, name))
    note = capsys.readouterr().out
    expected = {  # nanoGPT's value of each key: the file's, else nanoGPT train.py's default
        "train_shakespeare_char.py": dict(tokens=64 * 256, n_layer=6, bias=False, mlp="gelu_exact", warmup_iters=100,
                                          dataset="shakespeare_char", wandb_run_name="mini-gpt", beta2=0.99),
        "train_gpt2.py": dict(tokens=491_520, n_layer=12, bias=False, mlp="gelu_exact", warmup_iters=2000,
                              dataset="openwebtext", wandb_run_name="gpt2-124M", beta2=0.95),
        "finetune_shakespeare.py": dict(tokens=32 * 1024, init_from="gpt2-xl", dataset="shakespeare", decay_lr=False,
                                        out_dir="out-shakespeare"),
    }.get(name, dict(tokens=40 * 8 * 1024, eval_only=True, eval_iters=500, batch_size=8, dataset="openwebtext",
                     init_from="gpt2" + name.removeprefix("eval_gpt2").removesuffix(".py").replace("_", "-")))
    assert tokens_per_iteration(cfg) == expected.pop("tokens")
    for key, value in expected.items():
        assert getattr(cfg.model if key in ("n_layer", "bias", "mlp") else cfg, key) == value, key
    if name == "finetune_shakespeare.py":  # 'ft-' + str(time.time()), evaluated here without running the file
        assert re.fullmatch(r"ft-\d+\.\d+", cfg.wandb_run_name) and abs(float(cfg.wandb_run_name[3:]) - time.time()) < 60
    if name.startswith("train_"):  # the defaults that differ from ours are named
        assert re.search(r"is a nanoGPT config: the keys it leaves out take nanoGPT's defaults, .*bias=False, "
                         r"mlp='gelu_exact'", note)


def test_the_toml_configs_mirror_the_nanogpt_configs(tmp_path):
    """config/shakespeare_char.toml is nanoGPT's train_shakespeare_char.py, key for key, with README's CPU
    flags or without; finetune_shakespeare.toml has its batch (GPT-2 small for gpt2-xl, its own out_dir)."""
    nano = nanogpt_file(tmp_path, "train_shakespeare_char.py")
    for flags in ([], README_CPU):
        ours, theirs = config_of(str(REPO_ROOT / "config/shakespeare_char.toml"), *flags), config_of(nano, *flags)
        assert dataclasses.asdict(ours) == dataclasses.asdict(theirs)
    ours = config_of(str(REPO_ROOT / "config/finetune_shakespeare.toml"))
    theirs = config_of(nanogpt_file(tmp_path, "finetune_shakespeare.py"))
    assert tokens_per_iteration(ours) == tokens_per_iteration(theirs) == 32 * 1024
    for key in ("batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "max_iters",
                "learning_rate", "decay_lr", "always_save_checkpoint", "weight_decay", "dataset"):
        assert getattr(ours, key) == getattr(theirs, key), key


def test_keys_map_to_ours_and_nanogpt_only_keys_are_named_once(tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text('"""my run"""\nn = 8\ngradient_accumulation_steps = 5 * n\nbackend = "gloo"\ncompile = False\n'
                    'max_iters = 5e3\nlearning_rate = 6e-4 / 2\nwarmup_iters = 2 ** 7 - 28\nbatch_size = -(-25 // 2)\n'
                    'dtype = "float" + "32"\nmin_lr: float = 1e-5\nmin_lr *= 2\nbeta2 = 1 - 1 / 100\n')
    cfg = config_of(str(path), "--backend=nccl")
    lines = capsys.readouterr().out.strip().splitlines()
    assert (cfg.gradient_accumulation_steps, cfg.compile, cfg.max_iters, cfg.learning_rate, cfg.warmup_iters,
            cfg.batch_size, cfg.dtype, cfg.min_lr, cfg.beta2) == (40, "false", 5000, 3e-4, 100, 13, "float32", 2e-5, 0.99)
    assert any(re.search(r"mine\.py: nanoGPT keys .* ignored: backend='gloo' \(the process group's backend follows "
                         r"the device here", line) for line in lines), lines
    assert any(line.startswith("--backend=nccl ignored: ") for line in lines), lines


@pytest.mark.parametrize("text, message", [
    ("n_layer = 4\n\nn_layr = 3\n", r"unknown config key 'n_layr' in .*typo\.py:3; did you mean n_layer\?"),
    ("max_iters = 5\nmax_iters = '10'\n", r"bad value for max_iters in .*typo\.py:2: '10' is not an int"),
    ("n = 2\nbatch_size = 1.25 * n\n", r"bad value for batch_size in .*typo\.py:2: 2\.5 is not an int"),
    ("batch_size = 1e300\n", r"bad value for batch_size in .*typo\.py:1: 1\.000e\+300 \(must be at most 65,536\)"),
    ("x = 1 +\n", r"typo\.py:1: invalid Python"),
])
def test_a_bad_key_or_value_is_one_line_naming_its_line(tmp_path, text, message):
    path = tmp_path / "typo.py"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        config_of(str(path))


def test_resuming_or_pretrained_weights_take_the_model_from_the_weights(tmp_path):
    """nanoGPT's defaults for the model (bias, n_layer, ...) lie under a fresh model only: a resumed run or
    pretrained weights keep their own, as in nanoGPT; training keys still take nanoGPT's defaults."""
    nano = nanogpt_file(tmp_path, "train_shakespeare_char.py")
    given = read_overrides(train.TrainConfig, [nano, "--init_from=resume"], nanogpt="train")
    assert not {"bias", "mlp"} & given.keys() and given["n_layer"] == 6  # the file's own keys stay given
    assert given["wandb_project"] == "shakespeare-char" and given["beta1"] == 0.9
    given = read_overrides(train.TrainConfig, [nanogpt_file(tmp_path, "finetune_shakespeare.py")], nanogpt="train")
    assert not {"bias", "mlp", "n_layer", "block_size"} & given.keys() and given["warmup_iters"] == 2000


# ----------------------------------------------------------------------------- hostile files

HOSTILE = [
    ("__import__('os').system('touch PWNED')\n", 1, r"a call to system\(\)"),
    ("x = __import__('os')\n", 1, r"a call to __import__\(\)"),
    ("x = open('PWNED', 'w')\n", 1, r"a call to open\(\)"),
    ("import os\nos.system('touch PWNED')\n", 1, "an import of os"),
    ("from os import system\n", 1, "an import of os"),
    ("import time\nx = time.sleep(100)\n", 2, r"a call to sleep\(\)"),
    ("f = lambda: open('PWNED', 'w')\n", 1, "a lambda"),
    ("x = [open('PWNED', 'w') for _ in range(3)]\n", 1, "a comprehension"),
    ("x = (1).__class__.__bases__\n", 1, r"attribute access \(\.__bases__\)"),
    ("x = {}\n", 1, "a dict"),
    ("x = 'a'[0]\n", 1, "indexing"),
    ("x = f'{1}'\n", 1, "an f-string"),
    ("def f():\n    pass\n", 1, "a function definition"),
    ("if True:\n    x = 1\n", 1, "an if statement"),
    ("y = 1\nx = z\n", 2, "the name 'z' \\(not assigned earlier in the file\\)"),
    ("x = '%0999999999d' % 1\n", 1, "string formatting with %"),
    ("x = 1 << 100000000\n", 1, "the operator LShift"),
    ("eval_iters = 10**10**10\n", 1, r"10 \*\* 10000000000 is too large"),
    ("eval_iters = 9**9**9**9\n", 1, "is too large"),
    ("x = 2**200\n", 1, "is too large"),
    ("s = 'ab' * 10**9\n", 1, "too long for a config value"),
    ("x = 1e308 * 1e308 ** 2\n", 1, "cannot compute float \\*\\* int"),
    ("x = 1 / 0\n", 1, "division by zero"),
    ("x = (-8) ** 0.5\n", 1, "complex"),
]


@pytest.mark.parametrize("text, line, construct", HOSTILE, ids=[h[0].strip()[:40] for h in HOSTILE])
def test_hostile_files_are_refused_in_one_line_and_run_nothing(tmp_path, monkeypatch, text, line, construct):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.py"
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        config_of(str(path))
    assert time.monotonic() - started < 5.0  # nothing big was computed (that would take minutes or forever)
    message = str(info.value)
    assert "\n" not in message and re.match(rf"{re.escape(str(path))}:{line}: .*{construct}", message), message
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("text", ["x = " + "(" * 300 + "1" + ")" * 300, "x = " + " + ".join(["1"] * 50_000),
                                  "x = " + "-" * 50_000 + "1", "x = 1\n" * 60_000 + "y = '" + "a" * 20_000 + "'"],
                         ids=["nested", "a long sum", "many signs", "many lines then a long string"])
@pytest.mark.slow
def test_absurd_files_are_one_line_without_a_hang(tmp_path, text):
    path = tmp_path / "huge.py"
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(UserError, match=re.escape(str(path))):
        config_of(str(path))
    assert time.monotonic() - started < 20.0  # refused, not computed (that would take minutes or forever)


def test_the_strings_a_file_makes_are_bounded_together(tmp_path):
    """Each value within its bound, their total not: a megabyte of lines like these (90,000 of them, under
    1 MB) once held 3.6 GB and ended in a traceback blaming host RAM; now the file is refused where the
    strings it made pass 1,000,000 characters (5,001 on line 1, then 10,000 a line)."""
    path = tmp_path / "big.py"
    path.write_text("s = '\U0001F642' * 5000\n" + "".join(f"v{i} = s + s\n" for i in range(200)))
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}:101: v99: the strings this file makes add up to "
                                        r"over 1,000,000 characters"):
        config_of(str(path))


@pytest.mark.slow
def test_train_py_refuses_a_hostile_file_in_one_line_and_runs_nothing(tmp_path):
    path = tmp_path / "evil.py"
    path.write_text("out_dir = 'x'\n__import__('os').system('touch PWNED')\n")
    result = run_script("train.py", str(path), cwd=tmp_path, timeout=60)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: {path}:2: a call to system() is not allowed in a config (only assignments of literals and "
        f"arithmetic)"], result.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- they train and sample

def tiny(name: str, tmp_path, small_char_dataset, request) -> list[str]:
    """What a CPU test changes: a tiny model, a block of 32, two updates, a local dataset and, for GPT-2's
    weights, a tiny local Hugging Face folder. The batch and everything else stay the file's."""
    args = ["--device=cpu", "--block_size=32", "--max_iters=2", "--eval_iters=2", "--wandb_log=false",
            f"--out_dir={tmp_path / 'run'}"]
    cfg = config_of(nanogpt_file(tmp_path, name))
    if cfg.init_from == "scratch":
        return [*args, f"--dataset={small_char_dataset}", "--n_layer=1", "--n_head=2", "--n_embd=16"]
    from test_hf import save_hf_folder, tiny_hf_model

    folder = save_hf_folder(tiny_hf_model(vocab_size=50257, n_positions=64), tmp_path / "gpt2", "safetensors")
    return [*args, f"--dataset={request.getfixturevalue('gpt2_dataset')}", f"--init_from={folder}"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINING)
def test_nanogpt_training_configs_train_and_sample(name, tmp_path, small_char_dataset, request, capsys):
    path = nanogpt_file(tmp_path, name)
    overrides = tiny(name, tmp_path, small_char_dataset, request)
    cfg = config_of(path, *overrides)
    train.main([path, *overrides])
    out = capsys.readouterr().out
    seqs = cfg.gradient_accumulation_steps * cfg.batch_size  # nanoGPT's batch, block 32 here
    assert f"tokens per update: {seqs} sequences x 32 = {seqs * 32:,}" in out
    assert load_checkpoint(tmp_path / "run")["iter_num"] == 2
    sample.main([f"--out_dir={tmp_path / 'run'}", "--device=cpu", "--max_new_tokens=8", "--start=ROMEO:", "--seed=1"])
    assert capsys.readouterr().out.startswith("ROMEO:")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eval_gpt2.py", "eval_gpt2_xl.py"])
def test_nanogpt_eval_configs_evaluate_and_write_nothing(name, tmp_path, small_char_dataset, request, capsys):
    train.main([nanogpt_file(tmp_path, name), *tiny(name, tmp_path, small_char_dataset, request)])
    out = capsys.readouterr().out
    assert re.search(r"^step 0: train loss [\d.]+, val loss [\d.]+", out, re.MULTILINE), out
    assert not (tmp_path / "run").exists()


def test_sample_py_reads_a_nanogpt_config_and_names_the_keys_it_ignores(tmp_path, small_char_dataset, capsys):
    train.main([nanogpt_file(tmp_path, "train_shakespeare_char.py"),
                *tiny("train_shakespeare_char.py", tmp_path, small_char_dataset, None)])
    capsys.readouterr()
    path = tmp_path / "sample_config.py"
    path.write_text(f"init_from = 'resume'\nout_dir = {str(tmp_path / 'run')!r}\nstart = 'ROMEO:'\ncompile = False\n"
                    f"max_new_tokens = 5\nbatch_size = 64\ndevice = 'cpu'\n")
    sample.main([str(path), "--seed=2"])
    captured = capsys.readouterr()
    assert captured.out.count("ROMEO:") == 10  # nanoGPT's sample.py draws 10 samples
    assert re.search(r"ignored: compile=False; batch_size=64", captured.err), captured.err


# ----------------------------------------------------------------------------- README command lines

def test_nanogpt_readme_cpu_command_with_toml_trains_768_tokens_per_iteration(small_char_dataset, tmp_path, capsys):
    argv = [str(REPO_ROOT / "config/shakespeare_char.toml"), *README_CPU, "--max_iters=2", "--eval_iters=2",
            f"--dataset={small_char_dataset}", f"--out_dir={tmp_path}"]
    train.main(argv)
    out = capsys.readouterr().out
    assert "tokens per update: 12 sequences x 64 = 768 (per process 12 sequences in micro-batch(es) of 1 x 12)" in out
    # nanoGPT trains float32 on a CPU; dtype=auto here is bf16 autocast where the CPU has bf16 units (faster
    # at 128 wide there), float32 elsewhere
    expected = device.resolve_dtype("auto", torch.device("cpu"), width=128)
    assert f"dtype {str(expected).removeprefix('torch.')}" in out
    assert "micro-batches" not in out and "tokens_per_update in" not in out and "this CPU does" not in out


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "config").glob("*.toml")), ids=lambda p: p.stem)
def test_readme_cpu_flags_give_nanogpt_tokens_or_say_where_they_come_from(path, capsys):
    sources: dict = {}
    cfg = config_of(str(path), *README_CPU, sources=sources)
    if "tokens_per_update" in sources:  # a config about scaling: the start says where the update comes from
        train.load_config([str(path), *README_CPU])
        assert (f"tokens per update: {cfg.tokens_per_update:,} from tokens_per_update in {path}; --batch_size=12 is "
                f"the micro-batch, not the update; --block_size=64 makes it") in capsys.readouterr().out
    else:
        assert tokens_per_iteration(cfg) == cfg.gradient_accumulation_steps * 12 * 64


def test_an_update_of_several_micro_batches_on_a_cpu_says_so_before_the_first_step(small_char_dataset, tmp_path,
                                                                                     capsys):
    common = [f"--dataset={small_char_dataset}", "--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=16",
              "--block_size=32", "--batch_size=4", "--max_iters=1", "--eval_iters=1"]
    train.main([*common, "--tokens_per_update=384", f"--out_dir={tmp_path / 'a'}"])
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("this CPU does about"))
    assert re.fullmatch(r"this CPU does about \d+ GFLOP/s: expect roughly \d+s per update and \d+s per evaluation; "
                        r"an update is 3 micro-batches of up to 4 sequences \(384 tokens, set by tokens_per_update=384\): "
                        r"lower tokens_per_update for quicker updates", line), line
    assert out.index(line) < out.index("step 0:")
    train.main([*common, "--gradient_accumulation_steps=2", f"--out_dir={tmp_path / 'b'}"])
    assert "; an update is 2 micro-batches of up to 4 sequences (256 tokens, set by gradient_accumulation_steps=2): " \
           "lower gradient_accumulation_steps for quicker updates" in capsys.readouterr().out
