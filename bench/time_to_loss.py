"""Quality per second: when a run's val loss reached a target, or a race of configs to a target, interleaved.

    python bench/time_to_loss.py out-shakespeare-char-fast --target=1.47            # read finished runs
    python bench/time_to_loss.py --race config/shakespeare_char_3min.toml --baseline config/shakespeare_char_cpu.toml \\
        --dataset=data/shakespeare_char --target=1.47 --rounds=3 --max_seconds=176 --within_seconds=180

Reading runs: for each run folder, the first evaluation at or below the target (its iteration and the
run's elapsed seconds, start-up included, as train.py records them), or the best val loss if never.

A race (--race CONFIG, with --baseline CONFIG): each round trains the baseline, then the config, one
after the other (so that a neighbour's load and the machine's drift hit both alike), each a fresh
`python train.py CONFIG --dataset=DATASET` as a user runs it, with --max_seconds when given (else the
config's own budget), then scores its checkpoint on every token of the val split (eval.py
--context=1: disjoint windows, the same tokens for both). Printed per run: the process's wall time,
the updates made, the val loss train.py printed last, the whole split's loss, and the elapsed seconds
at which an evaluation first reached the target; then the medians over the rounds and in how many
rounds each reached the target on the whole split with a process no longer than --within_seconds
(default --max_seconds). Extra overrides go after --: they apply to both.
Run it on a quiet machine; the load average is printed before and after.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smallgpt import cli
from smallgpt.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]


def first_at_or_below(records: list[dict], target: float) -> dict | None:
    return next((r for r in records if r.get("val_loss", float("inf")) <= target), None)


def read_records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise UserError(f"no metrics.jsonl in {run}: give a run folder written by train.py")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut short by a crash
            pass
    return records


def report_runs(runs: list[str], target: float) -> list[dict | None]:
    found = []
    for run in map(Path, runs):
        records = read_records(run)
        hit = first_at_or_below(records, target)
        found.append(hit)
        if hit:
            print(f"{run}: val loss {hit['val_loss']:.4f} <= {target} at iteration {hit['iter']}, {hit['elapsed_s']:.1f}s")
        else:
            best = min((r["val_loss"] for r in records if "val_loss" in r), default=float("nan"))
            print(f"{run}: never reached {target} (best val loss {best:.4f} in {len(records)} evaluations)")
    return found


def whole_split_loss(out_dir: Path, dataset: str) -> float:
    """The checkpoint's mean loss in nats per token on every token of the dataset's val split."""
    result = subprocess.run([sys.executable, "eval.py", f"--out_dir={out_dir}", f"--dataset={dataset}", "--split=val",
                             "--context=1", "--json"], cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"eval.py could not score {out_dir}: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["nats_per_token"]


def race_one(config: str, args, extra: list[str], out_dir: Path) -> dict:
    """Train `config` once as a user would, then score it; what the race reports of it."""
    cmd = [sys.executable, "train.py", config, f"--dataset={args.dataset}", f"--out_dir={out_dir}", "--overwrite=true",
           *([f"--max_seconds={args.max_seconds:g}"] if args.max_seconds else []), *extra]
    started = time.time()
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.time() - started
    if result.returncode != 0:
        raise UserError(f"{config} failed (exit {result.returncode}): {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    evals = [r for r in read_records(out_dir) if r.get("kind", "eval") == "eval"]
    hit = first_at_or_below(evals, args.target)
    found = {"wall": wall, "iters": evals[-1]["iter"], "val": evals[-1]["val_loss"],
             "whole": whole_split_loss(out_dir, args.dataset), "hit_s": hit["elapsed_s"] if hit else None}
    print(f"  {config}: {found['iters']} updates, val {found['val']:.4f}, whole split {found['whole']:.4f}, "
          f"process {wall:.1f}s" + (f", {args.target} at {found['hit_s']:.1f}s" if hit else ""), flush=True)
    return found


def race(args, extra: list[str]) -> dict:
    if not args.baseline or not args.dataset:
        raise UserError("a race needs --baseline CONFIG and --dataset FOLDER (and --race CONFIG)")
    configs = [args.baseline, args.race]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"race to val {args.target}: {args.race} against {args.baseline}, {args.rounds} round(s); load {load}")
    results = {config: [] for config in configs}
    with tempfile.TemporaryDirectory(prefix="time_to_loss_") as tmp:
        for r in range(args.rounds):
            print(f"round {r + 1}:", flush=True)
            for i, config in enumerate(configs):
                results[config].append(race_one(config, args, extra, Path(tmp) / f"{r}-{i}"))
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    summary, limit = {}, args.within_seconds or args.max_seconds
    print(f"{'config':44} {'updates':>8} {'whole split':>12} {'process s':>10}  reached {args.target}"
          + (f" in a process of at most {limit:g} s" if limit else ""))
    for config, runs in results.items():
        whole = statistics.median(run["whole"] for run in runs)
        within = sum(run["whole"] <= args.target and (not limit or run["wall"] <= limit) for run in runs)
        summary[config] = {"whole": [run["whole"] for run in runs], "median_whole": whole, "within": within,
                           "wall": [run["wall"] for run in runs], "iters": [run["iters"] for run in runs]}
        print(f"{config:44} {statistics.median(run['iters'] for run in runs):8.0f} {whole:12.4f} "
              f"{statistics.median(run['wall'] for run in runs):10.1f}  {within} of {len(runs)}")
    return summary


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = cli.ArgumentParser(prog="python bench/time_to_loss.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run folders (each holding metrics.jsonl)")
    parser.add_argument("--target", type=float, required=True, help="the val loss to reach")
    parser.add_argument("--race", default=None, metavar="CONFIG", help="the config to race against --baseline")
    parser.add_argument("--baseline", default=None, metavar="CONFIG", help="the config it races")
    parser.add_argument("--dataset", default=None, help="the dataset folder both train on")
    parser.add_argument("--rounds", type=int, default=3, at_least=1, help="rounds, each running the baseline then the config")
    parser.add_argument("--max_seconds", type=float, default=0.0, at_least=0, help="the budget of every run (0: each config's own)")
    parser.add_argument("--within_seconds", type=float, default=0.0, at_least=0,
                        help="a run counts when its whole split reaches the target and its process ended within this "
                             "many seconds (0: --max_seconds, which the process overruns by its start and exit)")
    args = parser.parse_args(argv)
    if args.race:
        return race(args, extra)
    if not args.runs:
        raise UserError("give run folders to read, or --race CONFIG --baseline CONFIG --dataset FOLDER")
    return report_runs(args.runs, args.target)


if __name__ == "__main__":
    cli.run_main(main)
