"""FSDP2 (parallel=fsdp) and activation checkpointing, on 2-4 gloo processes of a 2-core CPU.

  * FSDP on 2 processes equals one process and DDP (AdamW with a tied embedding, Muon with an untied
    one, uneven evaluation shares, gradient accumulation); on 3 processes (uneven shards) every row of
    the embedding trains as in one process
  * 3 + resume 3 equals 6 at the same world size, bitwise; a checkpoint saved on 2 FSDP processes
    loads on 1 process, on 4 FSDP processes and on 2 DDP processes with weights and optimizer moments
    equal to those saved, bitwise (checked through train.main's hook, gathering the shards whole)
  * every model switch (conftest.model_switches, merged into as few models as hold them, in one launch)
    trains, saves exactly the sharded state, resumes on 1 process and samples; a 0-D parameter, which
    FSDP cannot shard, is refused by name
  * SIGTERM to one rank stops every rank and saves; weights that are not finite on one rank's shard
    only are refused by every rank (no hang); two "nodes" on one machine equal one node of 2
  * activation checkpointing gives the loss and gradients of plain training, bitwise, with less memory
  * the memory plan agrees with measured memory; on a (faked) GPU a run that will not fit stops first
  * a torch without FSDP2's force-sum reductions is refused in one line

    python -m pytest tests/test_fsdp.py -q
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import torch
from test_preemption import wait_for_line, worker_pids
from test_resume import assert_same_state, comparable, read_metrics, tiny_args

import sample
import train
from conftest import REPO_ROOT, model_switches, records, torchrun_command
from smallgpt import fsdp, memory
from smallgpt.checkpoint import load_checkpoint
from smallgpt.errors import UserError

pytestmark = pytest.mark.slow


def run_torchrun(script, *args, nproc=2, timeout=300, env=None):
    cmd, full_env = torchrun_command(script, *args, nproc=nproc, env=env)
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def fsdp_args(dataset, out_dir, **overrides):
    """test_resume's tiny run, 6 updates of 2 micro-batches, evaluations of 3 batches (uneven on 2 ranks)."""
    config = dict(max_iters=6, lr_decay_iters=6, eval_interval=3, log_interval=3, eval_iters=3,
                  gradient_accumulation_steps=2, dropout=0.0, parallel="fsdp")
    config.update(overrides)
    return tiny_args(dataset, out_dir, **config)


def free_ports(n: int) -> list[int]:
    """n ports free on this machine now (each bound, read and let go)."""
    ports = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


@pytest.fixture(scope="module")
def fsdp_run(small_char_dataset, tmp_path_factory):
    """(out_dir, stdout) of fsdp_args' run as it is (AdamW, tied embedding) on 2 processes: what several
    tests compare with or load, run once."""
    out = tmp_path_factory.mktemp("fsdp_run") / "run"
    return out, run_torchrun("train.py", *fsdp_args(small_char_dataset, out)).stdout


def assert_close_state(a: dict, b: dict):
    """Weights and optimizer moments equal within float rounding (the DDP tests' tolerance)."""
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5)
    for index, entry in a["optimizer"]["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value) and value.dim() > 0:
                torch.testing.assert_close(b["optimizer"]["state"][index][name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optimizer, tie", [("adamw", "true"), ("muon", "false")])
def test_fsdp_on_2_processes_equals_one_process_and_ddp(small_char_dataset, tmp_path, optimizer, tie, fsdp_run):
    common = dict(optimizer=optimizer, tie_embeddings=tie)
    train.main(fsdp_args(small_char_dataset, tmp_path / "one", **common))
    if optimizer == "adamw" and tie == "true":  # fsdp_args' own
        sharded_dir, stdout = fsdp_run
    else:
        sharded_dir = tmp_path / "fsdp"
        stdout = run_torchrun("train.py", *fsdp_args(small_char_dataset, sharded_dir, **common)).stdout
    assert "2 process(es), fsdp" in stdout
    assert re.search(r"^memory plan, rank 1 \(cpu\): .*; fsdp\): ", stdout, re.MULTILINE), stdout
    one, two = load_checkpoint(tmp_path / "one"), load_checkpoint(sharded_dir)
    assert one["model"].keys() == two["model"].keys() and one["optimizer"]["state"].keys() == two["optimizer"]["state"].keys()
    assert_close_state(one, two)
    for a, b in zip(read_metrics(tmp_path / "one"), read_metrics(sharded_dir), strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-4)
    assert all(r["grad_norm"] > 0 for r in records(sharded_dir, "train"))  # clip_grad_norm_'s DTensor, read
    if optimizer == "adamw":  # and DDP, the same runs on the same 2 processes
        run_torchrun("train.py", *fsdp_args(small_char_dataset, tmp_path / "ddp", parallel="ddp", **common))
        assert_close_state(load_checkpoint(tmp_path / "ddp"), two)
        assert two["model"]["lm_head.weight"].data_ptr() == two["model"]["transformer.wte.weight"].data_ptr()  # tied


def test_fsdp_on_3_processes_trains_every_row_of_the_embedding(small_char_dataset, tmp_path):
    """61 token ids in 64 rows, sharded 22 + 21 + 21: every shard's rows train as in one process."""
    initial = []
    train.main(fsdp_args(small_char_dataset, tmp_path / "one"),
               hook=lambda event, state, run: initial.append(run.model.transformer.wte.weight.detach().clone())
               if not initial else None)
    run_torchrun("train.py", *fsdp_args(small_char_dataset, tmp_path / "fsdp3"), nproc=3)
    one, three = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "fsdp3")
    assert_close_state(one, three)
    vocab = three["model_config"]["vocab_size"]
    moved = (three["model"]["transformer.wte.weight"][:vocab] - initial[0][:vocab]).abs().amax(dim=1)
    assert bool((moved > 1e-5).all()), f"rows that did not train: {(moved <= 1e-5).nonzero().flatten().tolist()}"


def test_fsdp_split_run_resumes_bitwise(small_char_dataset, tmp_path):
    args = dict(dropout=0.1)  # the dropout streams of both processes resume too
    run_torchrun("train.py", *fsdp_args(small_char_dataset, tmp_path / "one", **args))
    run_torchrun("train.py", *fsdp_args(small_char_dataset, tmp_path / "split", max_iters=3, **args))
    run_torchrun("train.py", *fsdp_args(small_char_dataset, tmp_path / "split", init_from="resume", **args))
    assert read_metrics(tmp_path / "split") == read_metrics(tmp_path / "one")
    assert_same_state(comparable(load_checkpoint(tmp_path / "split")), comparable(load_checkpoint(tmp_path / "one")))


LOADED_STATE = """
import sys, torch
import train
from smallgpt import fsdp
from smallgpt.checkpoint import load_checkpoint

def hook(event, state, run):  # the first event of the resumed run: the state just loaded, gathered whole
    weights = fsdp.full_state(run.model.state_dict(), run.procs, fsdp.tied_names(run.model))
    moments = fsdp.full_state(run.optimizer.state_dict(), run.procs)
    if run.procs.master:
        saved = load_checkpoint(run.cfg.out_dir)
        same = all(torch.equal(weights[k].cpu(), v) for k, v in saved["model"].items()) and all(
            torch.equal(moments["state"][i][name].cpu(), value)
            for i, entry in saved["optimizer"]["state"].items() for name, value in entry.items())
        print(f"loaded state equals the checkpoint: {same}", flush=True)
    return True  # stop: nothing more to see

train.main(sys.argv[1:], hook=hook)
"""


def test_a_checkpoint_saved_on_2_fsdp_processes_loads_on_1_and_4_and_under_ddp(tmp_path, fsdp_run):
    saved_dir, _ = fsdp_run
    script = tmp_path / "loaded_state.py"
    script.write_text(LOADED_STATE)
    for nproc, parallel in ((1, "fsdp"), (4, "fsdp"), (2, "ddp")):
        run_dir = tmp_path / f"{nproc}-{parallel}"
        run_dir.mkdir()
        (run_dir / "ckpt.pt").write_bytes((saved_dir / "ckpt.pt").read_bytes())
        args = [f"--out_dir={run_dir}", "--init_from=resume", f"--parallel={parallel}", "--max_iters=9"]
        if nproc == 1:  # one plain process (no torchrun)
            result = subprocess.run([sys.executable, str(script), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                    env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), timeout=300)
            assert result.returncode == 0, result.stderr[-3000:]
        else:
            result = run_torchrun(script, *args, nproc=nproc, env={"PYTHONPATH": str(REPO_ROOT)})
        assert "loaded state equals the checkpoint: True" in result.stdout, (nproc, parallel, result.stdout[-2000:])
        assert f"{nproc} process(es)" in result.stdout


def test_sigterm_to_one_fsdp_rank_stops_every_rank_and_saves(small_char_dataset, tmp_path):
    run, log = tmp_path / "run", tmp_path / "train.log"
    cmd, env = torchrun_command("train.py", *fsdp_args(small_char_dataset, run, eval_iters=60_000),
                                env={"CI": None})
    with open(log, "w") as out, open(f"{log}.err", "w") as err:
        launcher = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=err)
    try:
        wait_for_line(log, r"^eval: [\d,]+/60,000 batch", launcher)  # minutes of evaluation under way
        ranks = worker_pids(launcher.pid)
        os.kill(ranks[1], signal.SIGTERM)
        launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, open(f"{log}.err").read()[-3000:]
    assert "stopped by a stop request on another process during the evaluation at iteration 0" in log.read_text()
    ckpt = load_checkpoint(run)
    assert ckpt["iter_num"] == 0 and ckpt["evaluated_at"] == -1 and len(ckpt["rng_per_rank"]) == 2


POISON_ONE_SHARD = """
import sys, torch
import train
from smallgpt import fsdp

def hook(event, state, run):  # after update 3 (an evaluation iteration), on rank 1's shard only
    if event == "update" and state.iter_num == 3 and run.procs.rank == 1:
        with torch.no_grad():
            fsdp.local(run.model.transformer.wte.weight)[-1, 0] = float("inf")  # a padding row: loss stays finite

train.main(sys.argv[1:], hook=hook)
"""


def test_weights_not_finite_on_one_shard_are_refused_by_every_rank(small_char_dataset, tmp_path):
    """A finiteness check per sharded tensor would stop at different tensors on different ranks and
    hang the save's gathers; every rank checks its own shards, then they agree."""
    script = tmp_path / "poison.py"
    script.write_text(POISON_ONE_SHARD)
    result = run_torchrun(script, *fsdp_args(small_char_dataset, tmp_path / "run", max_iters=3), timeout=120,
                          env={"PYTHONPATH": str(REPO_ROOT)})
    assert "not saving a checkpoint at iteration 3 (evaluation" in result.stdout, result.stdout
    assert not (tmp_path / "run" / "ckpt.pt").exists()


MODULES_LEFT = """
import gc, sys
import torch.nn as nn
import train
train.main(sys.argv[1:])
print(f"modules alive after main: {sum(isinstance(o, nn.Module) for o in gc.get_objects())}", flush=True)
"""


def test_no_fsdp_model_outlives_the_process_group(small_char_dataset, tmp_path):
    """FSDP's units sit in reference cycles (modules <-> hooks) and hold the process group, so a model
    left to the garbage collector keeps the group alive into interpreter exit, where destroying it
    aborted a rank now and then ("terminate called without an active exception": 2 runs in 40 of
    this run's size before distributed.shutdown collected them first, none in 100 after). Counted here
    without collecting: no module of the run is left when main returns."""
    script = tmp_path / "modules_left.py"
    script.write_text(MODULES_LEFT)
    result = run_torchrun(script, *fsdp_args(small_char_dataset, tmp_path / "run", max_iters=3),
                          env={"PYTHONPATH": str(REPO_ROOT)})
    assert result.stdout.count("modules alive after main: 0") == 2, result.stdout[-2000:]


def test_two_nodes_on_one_machine_equal_one_node_of_two(small_char_dataset, tmp_path, fsdp_run):
    """Two torchrun "nodes" of one process each, meeting at a c10d rendezvous on 127.0.0.1 (as two
    machines would at the first one's address), train as one node of two processes does, bitwise."""
    port = free_ports(1)[0]
    launchers = []
    for node in range(2):
        cmd, env = torchrun_command("train.py", *fsdp_args(small_char_dataset, tmp_path / "two_nodes"), nproc=1)
        cmd = [c for c in cmd if c != "--standalone"]
        cmd[cmd.index("--nproc_per_node=1"):cmd.index("--nproc_per_node=1")] = [
            "--nnodes=2", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=two-nodes-test",
            f"--node_rank={node}"]
        launchers.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    outputs = [p.communicate(timeout=300) for p in launchers]
    assert all(p.returncode == 0 for p in launchers), [err[-2000:] for _, err in outputs]
    assert any("2 process(es), fsdp" in out for out, _ in outputs)
    assert_same_state(comparable(load_checkpoint(tmp_path / "two_nodes")),
                      comparable(load_checkpoint(fsdp_run[0])))


EVERY_SWITCH = """
import json, os, sys
import torch
import train
from smallgpt import fsdp
from smallgpt.checkpoint import load_checkpoint

def saved_equals_the_shards(event, state, run):  # after each save: the file holds the sharded state, whole
    if event != "saved":
        return
    weights = {k: fsdp.whole(v) for k, v in run.model.state_dict().items()}  # collectives, in the same order
    moments = {i: {k: fsdp.whole(v) for k, v in entry.items()} for i, entry in run.optimizer.state_dict()["state"].items()}
    if run.procs.master:
        saved = load_checkpoint(run.cfg.out_dir)
        same = saved["model"].keys() == weights.keys() and all(torch.equal(saved["model"][k], v) for k, v in
                                                               weights.items())
        same &= all(torch.equal(saved["optimizer"]["state"][i][k], v) for i, e in moments.items() for k, v in e.items())
        print(f"{run.cfg.out_dir}: saved state equals the shards: {same}", flush=True)

for args, port in zip(json.loads(sys.argv[1]), json.loads(sys.argv[2])):
    # a rendezvous of its own per run: torch names the next process group as the one destroyed, and the
    # launcher's store still holds that group's keys
    os.environ.update(TORCHELASTIC_USE_AGENT_STORE="False", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    train.main(args, hook=saved_equals_the_shards)
"""


def switches_together() -> list[dict]:
    """conftest.model_switches() merged into as few models as hold them: every switch on at once, and one
    more model for each further value of a choice (mlp's three)."""
    models: list[dict] = []
    for switch in model_switches():
        (name, value), = switch.items()
        model = next((m for m in models if name not in m), None)
        if model is None:
            models.append(model := {})
        model[name] = value
    return models


def test_every_model_switch_trains_saves_resumes_on_one_process_and_samples_under_fsdp(small_char_dataset, tmp_path,
                                                                                    capsys):
    """On 2 processes, in one launch: the checkpoints hold the sharded state exactly (unet_skips' one-row
    weight leaves one rank's shards empty, once the cause of a failed save), then each run resumes on
    one process and samples. A model with every switch on has n_layer=2: a 1-element skip weight."""
    models = switches_together()
    runs = [tmp_path / f"run{i}" for i in range(len(models))]
    argvs = [fsdp_args(small_char_dataset, out, **model) for out, model in zip(runs, models)]
    script = tmp_path / "every_switch.py"
    script.write_text(EVERY_SWITCH)
    result = run_torchrun(script, json.dumps(argvs), json.dumps(free_ports(len(runs))),
                          env={"PYTHONPATH": str(REPO_ROOT)})
    for out, model in zip(runs, models):
        assert result.stdout.count(f"{out}: saved state equals the shards: True") == 2, (model, result.stdout[-3000:])
        capsys.readouterr()
        train.main([f"--out_dir={out}", "--init_from=resume", "--max_iters=8"])
        trained = capsys.readouterr().out
        assert "parallel=fsdp without torchrun" in trained and f"resumed from {out}" in trained, trained
        assert load_checkpoint(out)["iter_num"] == 8
        sample.main([f"--out_dir={out}", "--max_new_tokens=20", "--device=cpu", "--seed=1"])
        text = capsys.readouterr().out
        assert text.endswith(sample.SEPARATOR + "\n") and len(text) > 20, (model, text)


def test_a_parameter_fsdp_cannot_shard_is_refused_by_name():
    """fully_shard splits rows (dim 0): a 0-D parameter is refused before any sharding, naming it."""
    model = train.GPT(train.GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=10))
    model.temperature = torch.nn.Parameter(torch.tensor(1.0))
    with pytest.raises(UserError, match=r"cannot shard the 0-D parameter\(s\) temperature: .*--parallel=ddp"):
        fsdp.shard_model(model, procs=None)


# ----------------------------------------------------------------------------- activation checkpointing

def test_activation_checkpointing_gives_the_same_training_bitwise(small_char_dataset, tmp_path):
    """With dropout: the recompute in backward replays the forward's dropout masks."""
    args = dict(max_iters=6, dropout=0.1, parallel="ddp")
    train.main(fsdp_args(small_char_dataset, tmp_path / "plain", **args))
    train.main(fsdp_args(small_char_dataset, tmp_path / "ckpt", activation_checkpointing="true", **args))
    assert read_metrics(tmp_path / "ckpt") == read_metrics(tmp_path / "plain")
    assert_same_state(comparable(load_checkpoint(tmp_path / "ckpt")), comparable(load_checkpoint(tmp_path / "plain")))


PEAK_MEMORY = """
import sys
sys.modules["matplotlib"] = None  # no loss.png thread: its memory would mix with the training's
import train

def status(field):  # kB in /proc/self/status
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))

base = []
def hook(event, state, run):
    if not base:  # the loop's first event: everything is built, nothing has run; the high-water mark starts here
        open("/proc/self/clear_refs", "w").write("5")
        base.append(status("VmRSS"))
    if event == "update" and state.iter_num == 2:  # two updates: the optimizer's state exists in the second
        print(f"peak above the start: {status('VmHWM') - base[0]}")
        return True

train.main(sys.argv[1:], hook=hook)
"""


def measured_and_planned(dataset, tmp_path, name, **overrides) -> tuple[float, float]:
    """(bytes of peak memory above the loop's start, the plan's gradients + optimizer + activations) of
    two updates of a model whose activations dominate (block 512, batch 8, 4 layers, 256 wide, one thread).
    glibc is told to map every large allocation (MALLOC_MMAP_THRESHOLD_), so freed tensors leave the
    process and the peak is the tensors' own."""
    script = tmp_path / "peak.py"
    script.write_text(PEAK_MEMORY)
    args = tiny_args(dataset, tmp_path / name, n_layer=4, n_head=4, n_embd=256, block_size=512, batch_size=8,
                     eval_iters=1, eval_interval=1000, max_iters=2, dropout=0.0, threads=1, **overrides)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), MALLOC_MMAP_THRESHOLD_="131072")
    result = subprocess.run([sys.executable, str(script), *args, "--eval_iters=1"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = float(re.search(r"^peak above the start: (\d+)", result.stdout, re.MULTILINE).group(1))
    line = re.search(r"^memory plan, cpu: weights .* gradients ([\d.]+) (GB|MB), optimizer ([\d.]+) (GB|MB), "
                     r"activations ([\d.]+) (GB|MB)", result.stdout, re.MULTILINE)
    planned = sum(float(line.group(i)) * (1e9 if line.group(i + 1) == "GB" else 1e6) for i in (1, 3, 5))
    return measured, planned


def test_activation_checkpointing_uses_less_memory_and_the_plan_says_how_much(small_char_dataset, tmp_path):
    plain = measured_and_planned(small_char_dataset, tmp_path, "plain")
    checkpointed = measured_and_planned(small_char_dataset, tmp_path, "checkpointed", activation_checkpointing="true")
    print(f"measured / planned bytes: plain {plain}, checkpointed {checkpointed}")
    assert checkpointed[0] < 0.6 * plain[0]  # activations dominate: checkpointing keeps a fraction of them
    for measured, planned in (plain, checkpointed):
        assert 0.75 * planned <= measured <= 1.3 * planned, (measured, planned)


def fake_gpu(monkeypatch, free_bytes: float):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (int(free_bytes), int(80e9)))


def test_a_run_that_will_not_fit_on_the_gpu_stops_before_the_first_step(small_char_dataset, tmp_path, monkeypatch):
    """CUDA's answers faked: 3 GB free for a GPT-2-small-shaped model (85M parameters in the blocks)
    with micro-batches of 12 x 1024: one line, before any weight goes to the device, naming the keys
    that would fit (the plan: ~1.4 GB of weights, gradients and AdamW moments, ~4.3 GB of activations)."""
    fake_gpu(monkeypatch, 3e9)
    args = [f"--dataset={small_char_dataset}", f"--out_dir={tmp_path / 'run'}", "--device=cuda", "--n_layer=12",
            "--n_head=12", "--n_embd=768", "--block_size=1024", "--batch_size=12", "--compile=false"]
    with pytest.raises(UserError) as info:
        train.main(args)
    message = str(info.value)
    assert "\n" not in message and re.search(r"needs about [\d.]+ GB per process .* 3.00 GB are free", message)
    assert re.search(r"use --activation_checkpointing=true or --batch_size=\d ", message), message
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_the_fit_check_names_each_way_that_fits():
    """GPT-2 XL's shape (1.56B parameters: 25 GB of weights, gradients and AdamW moments) on the meta device."""
    with torch.device("meta"):
        model = train.GPT(train.GPTConfig(n_layer=48, n_head=25, n_embd=1600, block_size=1024), init_weights=False)
    settings = dict(optimizer="adamw", micro_batch=12, block_size=1024, dtype=torch.bfloat16)
    plan = memory.plan_memory(model, **settings)

    def retry(**changes):
        return memory.plan_memory(model, **{**settings, **changes})

    def fits(changed) -> float:  # free bytes in which `changed` just fits
        return changed.total / (1 - memory.RESERVE) + 1

    memory.check_fits(plan, fits(plan), retry)  # no error
    with pytest.raises(UserError, match=r"use --activation_checkpointing=true or --batch_size=\d+ \(the tokens"):
        memory.check_fits(plan, fits(retry(checkpointing=True)), retry)
    small = retry(micro_batch=1, block_size=64)  # activations do not matter: the weights do
    with pytest.raises(UserError, match=r"use --parallel=fsdp on 4 processes"):
        memory.check_fits(small, fits(memory.plan_memory(model, **{**settings, "micro_batch": 1, "block_size": 64,
                                                                    "world_size": 4, "sharded": True})),
                          lambda **c: memory.plan_memory(model, **{**settings, "micro_batch": 1, "block_size": 64, **c}))
    with pytest.raises(UserError, match=r"use a smaller model"):
        memory.check_fits(plan, 1e8, retry)
    assert retry(world_size=8, sharded=True).optimizer == pytest.approx(plan.optimizer / 8)  # FSDP shards it


def test_fsdp_on_an_older_torch_is_one_line(monkeypatch):
    from torch.distributed.fsdp import FSDPModule

    monkeypatch.delattr(FSDPModule, "set_force_sum_reduction_for_comms")
    with pytest.raises(UserError, match=rf"parallel=fsdp needs torch {fsdp.MIN_TORCH} or newer .*--parallel=ddp"):
        fsdp.check_torch()
