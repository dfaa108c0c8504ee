"""Training while other programs run: a time-budgeted config idle, beside a busy loop, and beside a second
trainer, with the iterations it did, its last evaluation's time, its val loss and its process time.

    python bench/under_load.py config/python_stdlib.toml --seconds=100
    python bench/under_load.py config/python_stdlib.toml --seconds=100 --baseline=../old-checkout
    python bench/under_load.py config/python_stdlib.toml --dataset=DIR --cases=idle,busy --repeats=2

Cases: `idle` (nothing else runs), `busy` (a one-thread busy loop, `while True: pass`, in another
process: one core of two taken), `two` (two copies of the trainer at once; both are reported). Each
case runs this checkout's train.py and, with --baseline=DIR, that checkout's train.py too (the same
config file and data), in turn, so both see the same machine. Printed per run: iterations done in the
budget, the last evaluation's seconds (from its "step N: ... (evaluation X s)" line), the final val
loss, the whole process's wall time. A laptop's other programs are what this imitates; run it on an
otherwise idle machine, and name the CPU beside the figures (it is printed).
"""

import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

from smallgpt.cli import run_main
from smallgpt.errors import UserError

BUSY_LOOP = "while True: pass"


def start_trainer(checkout: Path, config: str, args: list[str], out_dir: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(checkout / "train.py"), str(REPO_ROOT / config), *args, f"--out_dir={out_dir}",
           "--overwrite=true"]
    return subprocess.Popen(cmd, cwd=checkout, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def outcome(log: Path, wall: float, returncode: int) -> dict:
    text = log.read_text()
    if returncode != 0:
        return {"error": (text.strip().splitlines() or ["?"])[-1]}
    steps = re.findall(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+), .*\(evaluation ([\d.]+)s\)", text, re.M)
    iters, val, eval_s = steps[-1]
    return {"iter": int(iters), "val": float(val), "eval_s": float(eval_s), "wall": wall}


def run_case(case: str, checkout: Path, config: str, args: list[str], work: Path) -> list[dict]:
    """One case with one checkout: the trainer's outcome (two of them for `two`)."""
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if case == "busy" else None
    copies = 2 if case == "two" else 1
    start = time.perf_counter()
    try:
        procs = [start_trainer(checkout, config, args, work / f"run{i}", work / f"run{i}.log") for i in range(copies)]
        codes = [p.wait() for p in procs]
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    wall = time.perf_counter() - start
    return [outcome(work / f"run{i}.log", wall, code) for i, code in enumerate(codes)]


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    config, options = argv[0], {"seconds": "100", "baseline": "", "dataset": "", "cases": "idle,busy,two",
                                 "repeats": "1"}
    for arg in argv[1:]:
        key, eq, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or key not in options or not eq:
            raise UserError(f"unknown argument {arg!r} (see python bench/under_load.py --help)")
        options[key] = value
    args = [f"--max_seconds={float(options['seconds']):g}"] + ([f"--dataset={options['dataset']}"]
                                                                if options["dataset"] else [])
    checkouts = {"this": REPO_ROOT} | ({"baseline": Path(options["baseline"]).resolve()} if options["baseline"] else {})
    cases = options["cases"].split(",")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"{config}, {options['seconds']} s budget; {cpu}; cases {cases}, checkouts {list(checkouts)}", flush=True)
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(int(options["repeats"])):
        for case in cases:
            for name, checkout in checkouts.items():
                with tempfile.TemporaryDirectory() as tmp:
                    runs = run_case(case, checkout, config, args, Path(tmp))
                results.setdefault((case, name), []).extend(runs)
                print(f"  {case:5} {name:9} " + "; ".join(
                    r.get("error") or f"{r['iter']} iterations, last evaluation {r['eval_s']:.1f} s, val "
                                      f"{r['val']:.4f}, process {r['wall']:.0f} s" for r in runs), flush=True)
    print("\n| case | code | iterations | last evaluation | val loss | process |\n|---|---|---|---|---|---|")
    for (case, name), runs in results.items():
        done = [r for r in runs if "error" not in r]
        if not done:
            print(f"| {case} | {name} | failed: {runs[0]['error']} | | | |")
            continue
        med = {k: statistics.median(r[k] for r in done) for k in ("iter", "eval_s", "val", "wall")}
        print(f"| {case} | {name} | {med['iter']:.0f} | {med['eval_s']:.1f} s | {med['val']:.4f} | {med['wall']:.0f} s |")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
