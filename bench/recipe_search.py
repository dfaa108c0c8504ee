"""Search a CPU training recipe by measurement: time-budgeted runs of train.py, one after another, and
a table of what each reached, best first.

    python bench/recipe_search.py config/shakespeare_char_cpu.toml --seconds=90
    python bench/recipe_search.py config/shakespeare_char_cpu.toml --seconds=60 \\
        --variant "base:" --variant "lr 4e-3: --learning_rate=4e-3" --variant "unet: --unet_skips=true"
    python bench/recipe_search.py config/shakespeare_char_cpu.toml --preset --repeats=2 --dataset=DIR

Every variant is `python train.py CONFIG [--dataset=...] OVERRIDES --max_seconds=SECONDS` in a fresh
process (compilation, evaluations and the final evaluation all come out of the budget, as in a real
run), into its own out_dir under --work (a temporary folder by default). Each variant first runs 3
iterations untimed, so that torch.compile's cache holds its graphs and a new shape is not charged
the ~10-30 s of compilation a base whose graphs are cached is spared; --cold skips that (first-run
costs: compile everything, as a new user's first run does). Runs go one at a time, each
variant once per repeat, variants in turn (so a neighbour's load hits them alike); the table gives
the median over repeats of the final val loss (and of the iterations done and the process's wall
time), best first. --preset adds the candidates this project searched: model shape, batch, learning
rates, schedule, warmup, Muon settings, and the switches the speedrun community measured (value
embeddings, U-net skips, zero-init projections, logit soft-capping). Runs that fail are listed with
their error. The machine should be otherwise idle: say what the load was (it is printed).

--iters=N compares at equal updates instead of equal time: each run is `--max_iters=N --max_seconds=0`
(evaluated at the end; no warm-up run, since compilation no longer costs learning). A machine whose
speed drifts between runs (a shared VM: 10-15%) moves a time-budgeted loss by about as much as a
small recipe change does; at equal updates a run's loss does not depend on the machine's speed. Use
it for what leaves a step's cost alone (learning rates, schedule, Muon settings, initialisation),
then time the winner with --seconds.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smallgpt.cli import parse_variant, run_main
from smallgpt.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]

PRESET = [
    ("base", []),
    ("lr 1e-2", ["--learning_rate=1e-2"]),
    ("muon_lr 0.01", ["--muon_lr=0.01"]),
    ("muon_lr 0.04", ["--muon_lr=0.04"]),
    ("muon momentum 0.9", ["--muon_momentum=0.9"]),
    ("warmup 30", ["--warmup_iters=30"]),
    ("min_lr 0", ["--min_lr=0"]),
    ("batch 8", ["--batch_size=8"]),
    ("batch 16", ["--batch_size=16"]),
    ("block 64", ["--block_size=64", "--batch_size=24"]),
    ("block 256", ["--block_size=256", "--batch_size=6"]),
    ("3 layers", ["--n_layer=3"]),
    ("6 layers", ["--n_layer=6"]),
    ("96 wide", ["--n_embd=96", "--n_head=3"]),
    ("160 wide", ["--n_embd=160", "--n_head=5"]),
    ("256 wide bf16 eager", ["--n_embd=256", "--n_head=4", "--dtype=bfloat16", "--compile=false"]),
    ("eager", ["--compile=false"]),
    ("value embeds", ["--value_embeds=true"]),
    ("unet skips", ["--unet_skips=true"]),
    ("zero-init proj", ["--zero_init_proj=true"]),
    ("softcap 30", ["--logit_softcap=30"]),
    ("qk_norm", ["--qk_norm=true"]),
]


def split_args(argv: list[str]):
    config, options, variants = [], {"seconds": 90.0, "iters": 0, "repeats": 1, "work": "", "dataset": ""}, []
    options["cold"] = "--cold" in argv  # measure first-run costs: no warm-up run fills the compile cache
    argv = [arg for arg in argv if arg != "--cold"]
    args = iter(argv)
    for arg in args:
        key, eq, value = arg.removeprefix("--").partition("=")
        if arg.startswith("--") and key in options:
            if not eq:
                value = next(args, "")
            try:
                options[key] = type(options[key])(value)
            except ValueError:
                raise UserError(f"bad value for --{key}: {value!r}") from None
        elif arg.startswith("--") and key == "variant":
            if not eq:
                value = next(args, "")
            variants.append(parse_variant(value))
        elif arg == "--preset":
            variants.extend(PRESET)
        elif arg.startswith("-"):
            raise UserError(f"unknown option {arg} (see python bench/recipe_search.py --help)")
        else:
            config.append(arg)
    if not config:
        raise UserError("give the config to start from, e.g. config/shakespeare_char_cpu.toml")
    return config, options, variants or [("base", [])]


def final_record(out_dir: Path) -> dict:
    """The last evaluation record of a run's metrics.jsonl."""
    evaluations = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line).get("kind", "eval") == "eval"]
    return evaluations[-1]


def run_variant(config: list[str], overrides: list[str], options: dict, out_dir: Path) -> dict:
    """One time-budgeted (or --iters) train.py process: its final evaluation and wall time, or its error."""
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), *config, *overrides, f"--out_dir={out_dir}", "--overwrite=true"]
    if options["dataset"]:
        cmd.insert(3, f"--dataset={options['dataset']}")
    if options["iters"] > 0:  # equal updates: the clock plays no part
        cmd += ["--max_seconds=0", f"--max_iters={options['iters']}", f"--eval_interval={options['iters']}"]
    else:
        if not options["cold"]:  # a few steps first, so that compilation (once per shape, then cached) is not timed
            subprocess.run(cmd + ["--max_iters=3", "--eval_interval=3", "--eval_iters=2"], cwd=REPO_ROOT,
                           capture_output=True)
        cmd.append(f"--max_seconds={options['seconds']:g}")
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train.log").write_text(result.stdout + result.stderr)  # to see what a run said, afterwards
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["exit code %d" % result.returncode])[-1]}
    record = final_record(out_dir)
    return {"val_loss": record["val_loss"], "iter": record["iter"], "wall_s": wall}


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    config, options, variants = split_args(argv)
    work = Path(options["work"] or tempfile.mkdtemp(prefix="recipe_search_"))
    budget = f"{options['iters']} updates" if options["iters"] > 0 else f"{options['seconds']:g} s"
    print(f"{len(variants)} variant(s) x {options['repeats']} of {' '.join(config)}, {budget} "
          f"each; load average {os.getloadavg()[0]:.2f}; runs in {work}", flush=True)
    results = {name: [] for name, _ in variants}
    for repeat in range(options["repeats"]):
        for i, (name, overrides) in enumerate(variants):
            outcome = run_variant(config, overrides, options, work / f"{i:02d}-r{repeat}")
            results[name].append(outcome)
            shown = outcome.get("error") or f"val {outcome['val_loss']:.4f} after {outcome['iter']} iterations, " \
                                            f"{outcome['wall_s']:.0f} s"
            print(f"  {name}: {shown}", flush=True)
    rows = []
    for name, overrides in variants:
        done = [r for r in results[name] if "error" not in r]
        if not done:
            rows.append((float("inf"), f"| {name} | failed: {results[name][0]['error']} | | | `{' '.join(overrides)}` |"))
            continue
        val = statistics.median(r["val_loss"] for r in done)
        iters = statistics.median(r["iter"] for r in done)
        wall = statistics.median(r["wall_s"] for r in done)
        rows.append((val, f"| {name} | {val:.4f} | {iters:.0f} | {wall:.0f} s | `{' '.join(overrides)}` |"))
    print(f"\nfinal val loss, median of {options['repeats']}, best first (load average {os.getloadavg()[0]:.2f}):")
    print("| variant | val loss | iterations | process | overrides |\n|---|---|---|---|---|")
    for _, row in sorted(rows, key=lambda r: r[0]):
        print(row)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
