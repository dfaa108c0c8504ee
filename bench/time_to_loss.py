"""Wall time until a run's val loss first reached a target, read from its metrics.jsonl.

    python bench/time_to_loss.py out-shakespeare-char-fast --target=1.47
    python bench/time_to_loss.py RUN [RUN ...] --target=1.47

For each run: the first evaluation at or below the target (iteration, elapsed seconds of training
with evaluations, as train.py records them), or the best val loss reached if never. The elapsed
time counts from the start of the training loop (after data, model and compilation set-up are
built; the first updates' compilation is included).
"""

import argparse
import json
import sys
from pathlib import Path

from smallgpt import cli
from smallgpt.errors import UserError


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


def main(argv=None) -> list[dict | None]:
    parser = cli.ArgumentParser(prog="python bench/time_to_loss.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (each holding metrics.jsonl)")
    parser.add_argument("--target", type=float, required=True, help="the val loss to reach")
    args = parser.parse_args(argv)
    found = []
    for run in map(Path, args.runs):
        records = read_records(run)
        hit = first_at_or_below(records, args.target)
        found.append(hit)
        if hit:
            print(f"{run}: val loss {hit['val_loss']:.4f} <= {args.target} at iteration {hit['iter']}, "
                  f"{hit['elapsed_s']:.1f}s")
        else:
            best = min((r["val_loss"] for r in records if "val_loss" in r), default=float("nan"))
            print(f"{run}: never reached {args.target} (best val loss {best:.4f} in {len(records)} evaluations)")
    return found


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
