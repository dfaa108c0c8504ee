"""FSDP2 (parallel=fsdp) and activation checkpointing, on 2-4 gloo processes of a 2-core CPU.

  * FSDP on 2 processes equals one process and DDP (AdamW with a tied embedding, Muon with an untied
    one, uneven evaluation shares, gradient accumulation); on 3 processes (uneven shards) every row of
    the embedding trains as in one process, and Muon orthogonalizes each matrix once, on one process
  * compile=true under FSDP runs every op of the forward compiled (or in FSDP's own hooks), with no
    graph break, as one process does, and equals eager training
  * in bf16 the blocks are gathered in bf16 and FSDP (with one reduce-scatter per update) trains as one
    process does, within 3% of the update
  * 3 + resume 3 equals 6 at the same world size, bitwise; a checkpoint saved on 2 FSDP processes
    loads on 1 process, on 4 FSDP processes and on 2 DDP processes with weights and optimizer moments
    equal to those saved, bitwise (checked through train.main's hook, gathering the shards whole)
  * every model switch (conftest.model_switches, merged into as few models as hold them, in one launch)
    trains, saves exactly the sharded state, resumes on 1 process and samples; a 0-D parameter, which
    FSDP cannot shard, is refused by name
  * SIGTERM to one rank stops every rank and saves; weights that are not finite on one rank's shard
    only are refused by every rank (no hang); two "nodes" on one machine equal one node of 2
  * activation checkpointing gives the loss and gradients of plain training, bitwise, with less memory
  * the memory plan agrees with measured memory (within 10% where weights dominate: autocast's copies,
    Muon's stacks, FSDP's gathered units and fsdp_sync_once's gradients); on a (faked) GPU a run that
    will not fit stops first
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
from smallgpt import fsdp, memory, optim
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


COUNT_ORTHOGONALIZED = """
import sys
import torch.distributed as dist
import train
from smallgpt import optim

plain, counted = optim.orthogonalize, []

def counting(stack, *args, **kwargs):  # every Newton-Schulz iteration goes through here, a stack at a time
    counted.append(stack.shape[0] if stack.dim() == 3 else 1)
    return plain(stack, *args, **kwargs)

reduce_scatter, scatters = dist.reduce_scatter_single, []

def counting_scatters(*args, **kwargs):  # FSDP's reduce-scatters of gradients, one per unit each time
    scatters.append(1)
    return reduce_scatter(*args, **kwargs)

optim.orthogonalize, dist.reduce_scatter_single = counting, counting_scatters
train.main(sys.argv[1:])
sys.stdout.write(f"orthogonalized {sum(counted)} matrices, reduce-scattered {len(scatters)} times\\n")  # one write
sys.stdout.flush()
"""


def test_fsdp_on_3_processes_shares_muons_work_and_trains_every_row_of_the_embedding(small_char_dataset, tmp_path,
                                                                                    monkeypatch):
    """Muon (tied embedding) on 3 processes: shards of uneven rows (the MLP's 128 rows: 43 + 43 + 42; 61
    token ids in 64 embedding rows: 22 + 21 + 21), and 8 matrices per update orthogonalized once each,
    by one process or another, not once per process; every row trains as in one process, each process
    adding its 2 micro-batches' gradients up before one reduce-scatter (fsdp_sync_once). Muon's
    iteration runs in float32 in both (as on CPUs without bf16 units): in bf16, the 3 processes' other
    order of summing gradients, rounded to bf16 and amplified by the iteration, moves the matrices by
    up to 4e-3 from one process's (with the old, gathered orthogonalization as much)."""
    initial = []
    common = dict(optimizer="muon", gradient_accumulation_steps=6, fsdp_sync_once="true")
    monkeypatch.setattr(optim, "cpu_has_bf16_units", lambda: False)
    train.main(fsdp_args(small_char_dataset, tmp_path / "one", **common),
               hook=lambda event, state, run: initial.append(run.model.transformer.wte.weight.detach().clone())
               if not initial else None)
    script = tmp_path / "count.py"
    script.write_text(COUNT_ORTHOGONALIZED)
    result = run_torchrun(script, *fsdp_args(small_char_dataset, tmp_path / "fsdp3", **common), nproc=3,
                          env={"PYTHONPATH": str(REPO_ROOT), "ONEDNN_MAX_CPU_ISA": "AVX2"})  # (no bf16 units)
    found = re.findall(r"^orthogonalized (\d+) matrices, reduce-scattered (\d+) times", result.stdout, re.MULTILINE)
    counts = [int(n) for n, _ in found]
    assert len(counts) == 3 and sum(counts) == 6 * 8, counts  # 6 updates of 2 blocks x 4 matrices, each once
    assert max(counts) <= 6 * 3, counts  # shared out: at most 3 of the 8 per update on any one process
    assert [int(n) for _, n in found] == [6 * 3] * 3, found  # once per update per unit (2 blocks, the root)
    one, three = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "fsdp3")
    assert_close_state(one, three)
    vocab = three["model_config"]["vocab_size"]
    moved = (three["model"]["transformer.wte.weight"][:vocab] - initial[0][:vocab]).abs().amax(dim=1)
    assert bool((moved > 1e-5).all()), f"rows that did not train: {(moved <= 1e-5).nonzero().flatten().tolist()}"


COVERAGE = """
import sys
import torch
from torch._dynamo.utils import counters
from torch.profiler import ProfilerActivity, profile
import train
from smallgpt.device import autocast


def eager_ops(prof) -> list[str]:
    \"\"\"The forward's aten ops that ran outside compiled code and outside FSDP's hooks (on the forward's
    thread: gloo's own threads copy the gathered shards).\"\"\"
    events = prof.events()
    thread = min(events, key=lambda e: e.time_range.start).thread

    def covered(event):
        while event is not None:
            if event.name.startswith(("Torch-Compiled Region", "FSDP::")):
                return True
            event = event.cpu_parent
        return False

    return [e.name for e in events if e.thread == thread and e.name.startswith("aten::") and not covered(e)]


def hook(event, state, run):  # after the first update (compiled by then): one more forward, profiled
    if event == "update" and state.iter_num == 1:
        x, y, segments = run.batches.current[0]  # the next update's first micro-batch: the shapes compiled for
        with profile(activities=[ProfilerActivity.CPU]) as prof, autocast(run.procs.device, run.procs.dtype):
            _, loss = run.train_model(x, y, segments=segments)
        loss.backward()  # (FSDP's units expect it) and no update: the training is unchanged
        run.optimizer.zero_grad(set_to_none=True)
        sys.stdout.write(f"rank {run.procs.rank}: graphs {counters['stats']['unique_graphs']}, breaks "
                         f"{sum(counters['graph_break'].values())}, frames {counters['frames']['ok']}/"
                         f"{counters['frames']['total']}, eager {eager_ops(prof)}\\n")  # one write: ranks' lines whole
        sys.stdout.flush()


train.main(sys.argv[1:], hook=hook)
"""


def test_fsdp_compiles_all_of_the_forward_as_one_process_does_and_equals_eager(small_char_dataset, tmp_path):
    """compile=true under FSDP on 2 processes: every op of the training forward runs in a compiled graph
    (the embeddings, each block, the head and the loss: GPT.compile_pieces) or inside FSDP's own hooks,
    with no graph break and no frame left to eager, as in one process (where the whole model is one
    graph); measured with the profiler, and dynamo's counters. The training equals one eager process
    within compile's tolerance (test_compile's)."""
    script = tmp_path / "coverage.py"
    script.write_text(COVERAGE)
    args = fsdp_args(small_char_dataset, tmp_path / "fsdp", compile="true")
    lines = re.findall(r"^rank \d: .*$", run_torchrun(script, *args, env={"PYTHONPATH": str(REPO_ROOT)}).stdout,
                       re.MULTILINE)
    one = subprocess.run([sys.executable, str(script), *fsdp_args(small_char_dataset, tmp_path / "one", compile="true",
                                                                  parallel="ddp")],
                         cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    lines += re.findall(r"^rank \d: .*$", one.stdout, re.MULTILINE)
    print("\n".join(lines))
    assert len(lines) == 3, lines  # two FSDP ranks, one process
    for line in lines:
        graphs, breaks, ok, total, eager = re.match(r"rank \d: graphs (\d+), breaks (\d+), frames (\d+)/(\d+), "
                                                    r"eager (.*)$", line).groups()
        assert int(graphs) >= 1 and breaks == "0" and ok == total and eager == "[]", line
    train.main(fsdp_args(small_char_dataset, tmp_path / "eager", compile="false"))
    eager, compiled = load_checkpoint(tmp_path / "eager"), load_checkpoint(tmp_path / "fsdp")
    for key, value in eager["model"].items():
        torch.testing.assert_close(compiled["model"][key], value, rtol=1e-3, atol=2e-4)
    for a, b in zip(read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "fsdp"), strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=2e-4)


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
import torch
import train
from smallgpt import fsdp

def status(field):  # bytes, from kB in /proc/self/status
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))

def held(run):  # the bytes of the weights and optimizer state this process holds (its shards, under FSDP)
    tensors = [fsdp.local(p) for p in run.model.parameters()]
    tensors += [fsdp.local(v) for entry in run.optimizer.state.values() for v in entry.values() if torch.is_tensor(v)]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())

start, dtypes = [], set()
def hook(event, state, run):
    if not dtypes:  # the precision of the blocks' weights as their matmuls see them
        run.model.transformer.h[0].attn.c_attn.register_forward_pre_hook(lambda m, a: dtypes.add(m.weight.dtype))
        dtypes.add(None)
    if event == "update" and state.iter_num == 1:  # warm (optimizer state made, kernels loaded): the peak starts here
        open("/proc/self/clear_refs", "w").write("5")
        start.extend([held(run), status("VmRSS")])
    if event == "update" and state.iter_num == 3:  # updates 2 and 3: forwards, backwards and steps
        sys.stdout.write(f"rank {run.procs.rank} peak {start[0] + status('VmHWM') - start[1]}, weights in matmuls "
                         f"{sorted(str(d) for d in dtypes if d is not None)}\\n")  # one write: ranks' lines whole
        sys.stdout.flush()

train.main(sys.argv[1:], hook=hook)
"""


def measured_and_planned(dataset, tmp_path, name, nproc=1, **overrides) -> list[tuple[float, float, str]]:
    """(measured peak bytes, the memory plan's total, the precision of the blocks' weights in their matmuls)
    of each process of 3 updates, threads=1: the bytes of the weights and optimizer state held after the
    first update, plus how far the process's resident memory rose above that in updates 2 and 3 (its
    high-water mark). glibc is told to map every large allocation (MALLOC_MMAP_THRESHOLD_), so freed
    tensors leave the process and the peak is the tensors' own."""
    script = tmp_path / "peak.py"
    script.write_text(PEAK_MEMORY)
    args = tiny_args(dataset, tmp_path / name, **{"max_iters": 3, "eval_interval": 1000, "eval_iters": 1,
                                                  "dropout": 0.0, "threads": 1, **overrides})
    env = {"PYTHONPATH": str(REPO_ROOT), "MALLOC_MMAP_THRESHOLD_": "131072"}
    if nproc == 1:
        result = subprocess.run([sys.executable, str(script), *args], cwd=REPO_ROOT, env={**os.environ, **env},
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        result = run_torchrun(script, *args, nproc=nproc, env=env)
    plans = dict(re.findall(r"^memory plan, (?:rank (\d) \(cpu\)|cpu): .*\): ([\d.]+ [MG]B)$", result.stdout,
                            re.MULTILINE))
    peaks = re.findall(r"^rank (\d) peak (\d+), weights in matmuls (.*)$", result.stdout, re.MULTILINE)
    assert len(peaks) == nproc, result.stdout[-2000:]

    def planned(rank):  # one process prints "memory plan, cpu: ...", each of several "memory plan, rank N (cpu): ..."
        number, unit = plans[rank if nproc > 1 else ""].split()
        return float(number) * (1e9 if unit == "GB" else 1e6)

    return [(float(peak), planned(rank), dtypes) for rank, peak, dtypes in peaks]


def test_activation_checkpointing_uses_less_memory_and_the_plan_says_how_much(small_char_dataset, tmp_path):
    """A model whose activations dominate (block 512, batch 8, 4 layers, 256 wide)."""
    shape = dict(n_layer=4, n_head=4, n_embd=256, block_size=512, batch_size=8)
    [plain] = measured_and_planned(small_char_dataset, tmp_path, "plain", **shape)
    [checkpointed] = measured_and_planned(small_char_dataset, tmp_path, "checkpointed", activation_checkpointing="true",
                                          **shape)
    print(f"measured / planned bytes: plain {plain[:2]}, checkpointed {checkpointed[:2]}")
    assert checkpointed[0] < 0.6 * plain[0]  # activations dominate: checkpointing keeps a fraction of them
    for measured, planned, _ in (plain, checkpointed):
        assert 0.75 * planned <= measured <= 1.3 * planned, (measured, planned)


def test_bf16_fsdp_equals_one_process_and_each_memory_plan_is_within_10_percent(small_char_dataset, tmp_path):
    """bf16 (autocast) on a model whose weights dominate (4 layers, 256 wide, block 32), 4 micro-batches
    per update: FSDP on 2 processes, each with 2 micro-batches reduce-scattered once (fsdp_sync_once),
    gathers the blocks' weights in bf16 (MixedPrecisionPolicy) and trains as one process does: the
    updates of 3 steps differ by under 3% of their size (bf16's rounding: the norms' gains are used in
    bf16, gradients summed in another order; AdamW's step moves an element by about the learning rate
    whatever its gradient's size, so elements whose gradient is noise, as the keys' biases, differ most;
    a process that missed the other's gradients would differ by tens of percent). The memory plan of
    each process (one process with AdamW: autocast's bf16 weight copies; with Muon: its stacks; FSDP:
    the gathered units and the unsharded float32 gradients) is within 10% of the measured peak."""
    shape = dict(n_layer=4, n_head=4, n_embd=256, block_size=32, batch_size=4, gradient_accumulation_steps=4,
                 dtype="bfloat16")
    runs = {"one": measured_and_planned(small_char_dataset, tmp_path, "one", **shape),
            "fsdp": measured_and_planned(small_char_dataset, tmp_path, "fsdp", nproc=2, parallel="fsdp",
                                         fsdp_sync_once="true", **shape),
            "muon": measured_and_planned(small_char_dataset, tmp_path, "muon", optimizer="muon", **shape)}
    print({name: [(round(m / 1e6, 1), round(p / 1e6, 1)) for m, p, _ in ranks] for name, ranks in runs.items()})
    for name, ranks in runs.items():
        for measured, planned, _ in ranks:
            assert abs(measured - planned) <= 0.1 * measured, (name, measured, planned)
    assert runs["one"][0][2] == "['torch.float32']" and runs["fsdp"][0][2] == "['torch.bfloat16']"
    one, fsdp = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "fsdp")
    torch.manual_seed(one["train_config"]["seed"])  # the first weights, as train.py makes them
    first = train.GPT(train.GPTConfig(**one["model_config"])).state_dict()
    moved = sum((one["model"][k] - first[k]).square().sum() for k in first)
    apart = sum((fsdp["model"][k] - one["model"][k]).square().sum() for k in first)
    assert (apart / moved).sqrt() < 0.03, float((apart / moved).sqrt())
    assert fsdp["iter_num"] == one["iter_num"] == 3


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
