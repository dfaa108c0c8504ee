"""Pictures of training runs: loss against iterations and wall-clock time, with the learning rate.

    python -m smallgpt.plot out-shakespeare-char                       # writes runs.png
    python -m smallgpt.plot out-a out-b out-c --out=compare.png --title="Muon vs AdamW"
    python -m smallgpt.plot --help

Each run folder's metrics.jsonl (its evaluation records: iter, train_loss, val_loss, lr, elapsed_s;
its training lines' records: iter, loss, lr, elapsed_s; other keys are ignored, a half-written last line is
skipped) is drawn in one colour: val loss solid with a point per evaluation, train loss at evaluations
dashed, each training line's loss as a thin line between them, against iterations (left) and
wall-clock time (right), the learning rate in the panels below (log-scaled when the runs' peak rates are more than 10x apart). Runs are labelled with their folder name and the options that differ
between them, read from each run's config.json (flat, or with nested tables such as [model]). Loss
is drawn on a log scale when it spans more than a factor of two (--log_scale=on|off to choose).

train.py keeps <out_dir>/loss.png up to date with `save_loss_plot(out_dir)`, which never raises.
Needs matplotlib: pip install -e ".[plot]". Tests: python -m pytest tests/test_plot.py -q
"""

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from smallgpt import cli
from smallgpt.errors import UserError

METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
LOSS_PLOT_NAME = "loss.png"
LOG_SCALE_SPAN = 2.0  # a loss range wider than this factor is drawn on a log scale
# options that differ between runs without saying anything about the training
IGNORED_OPTIONS = {"out_dir", "overwrite", "wandb_log", "wandb_project", "wandb_run_name", "log_interval",
                   "eval_only", "always_save_checkpoint", "device", "threads"}
MAX_LABEL_OPTIONS = 5  # options named in one legend label, the rest summarised as "+N more"


def require_matplotlib():
    """The matplotlib module, or a one-line UserError saying how to install it."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401  (no display needed)
    except ImportError:
        raise UserError('plotting needs matplotlib: pip install -e ".[plot]" (or pip install matplotlib)') from None
    return matplotlib


# ----------------------------------------------------------------------------- reading runs

def run_folder(path) -> Path:
    """The run folder for a folder or its metrics.jsonl."""
    path = Path(path)
    return path.parent if path.name == METRICS_NAME and path.is_file() else path


def read_metrics(run_dir, kind: str = "eval") -> list[dict]:
    """The records of one kind of run_dir/metrics.jsonl ("eval": evaluations, "train": training lines), in file
    order; unreadable lines are skipped. A run without evaluation records is a UserError."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        raise UserError(f"no {METRICS_NAME} in {run_dir}: give run folders written by train.py "
                        f"(it writes {METRICS_NAME} at each evaluation)")
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # e.g. the last line, while train.py is writing it
            continue
        if isinstance(record, dict) and isinstance(record.get("iter"), (int, float)) \
                and record.get("kind", "eval") == kind:
            records.append(record)
    if not records and kind == "eval":
        raise UserError(f"{path} holds no evaluation records yet; plot the run after its first evaluation")
    return records


def flatten(config: dict, prefix: str = "") -> dict:
    """{"model": {"n_layer": 4}, "lr": 1} -> {"n_layer": 4, "lr": 1}; a clashing nested key keeps its table."""
    flat = {}
    nested = []
    for key, value in config.items():
        if isinstance(value, dict):
            nested.append((key, value))
        else:
            flat[key] = value
    for table, values in nested:
        for key, value in flatten(values).items():
            flat[key if key not in flat else f"{table}.{key}"] = value
    return flat


def read_config(run_dir) -> dict:
    """run_dir/config.json flattened (see flatten); {} when it is missing or unreadable."""
    path = Path(run_dir) / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return flatten(config) if isinstance(config, dict) else {}


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def differing_options(configs: list[dict]) -> list[list[str]]:
    """For each run, "key=value" for the options whose values are not the same in every run."""
    if len(configs) < 2:
        return [[] for _ in configs]
    keys = sorted({key for config in configs for key in config} - IGNORED_OPTIONS)
    missing = object()
    differing = []
    for key in keys:
        values = [config.get(key, missing) for config in configs]
        if key == "init_from" and all(v in ("scratch", "resume", missing) for v in values):
            continue  # a resumed run rewrites config.json with init_from=resume: not a difference
        if any(v != values[0] for v in values[1:]):
            differing.append(key)
    return [[f"{key}={_short(config[key]) if key in config else '-'}" for key in differing] for config in configs]


def run_names(run_dirs: list[Path]) -> list[str]:
    """Each run's folder name, with as many parent folders as it takes to tell it from the others."""
    parts = [Path(os.path.abspath(d)).parts for d in run_dirs]
    names = []
    for i, mine in enumerate(parts):
        for depth in range(1, len(mine) + 1):
            name = "/".join(mine[-depth:])
            if all("/".join(other[-depth:]) != name for j, other in enumerate(parts) if j != i):
                break
        names.append(name)
    return names


def _label(name: str, options: list[str]) -> str:
    if not options:
        return name
    shown = options[:MAX_LABEL_OPTIONS]
    more = f", +{len(options) - len(shown)} more" if len(options) > len(shown) else ""
    return f"{name}: {', '.join(shown)}{more}"


# ----------------------------------------------------------------------------- drawing

def _series(records: list[dict], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in records:
        x, y = record.get(x_key), record.get(y_key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(x) and math.isfinite(y):
            xs.append(float(x))
            ys.append(float(y))
    return xs, ys


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 3 * 3600:
        return 3600.0, "hours"
    if seconds >= 3 * 60:
        return 60.0, "minutes"
    return 1.0, "seconds"


def make_figure(run_dirs, title: str | None = None, log_scale: str = "auto"):
    """A matplotlib Figure of the runs (see the module docstring); UserError for unreadable runs."""
    run_dirs = [run_folder(d) for d in run_dirs]
    runs = [read_metrics(d) for d in run_dirs]  # bad run folders are reported first, matplotlib or not
    training = [read_metrics(d, "train") for d in run_dirs]  # a training line's loss: the curve between evaluations
    require_matplotlib()
    from matplotlib.figure import Figure

    labels = [_label(name, options) for name, options in
              zip(run_names(run_dirs), differing_options([read_config(d) for d in run_dirs]))]
    max_seconds = max((s for records in runs for s in _series(records, "elapsed_s", "iter")[0]), default=0.0)
    scale, time_unit = _time_unit(max_seconds)

    fig = Figure(figsize=(12, 7.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 1.2])
    loss_it = fig.add_subplot(grid[0, 0])
    loss_t = fig.add_subplot(grid[0, 1], sharey=loss_it)
    lr_it = fig.add_subplot(grid[1, 0], sharex=loss_it)
    lr_t = fig.add_subplot(grid[1, 1], sharex=loss_t, sharey=lr_it)
    losses = []
    for i, (records, lines, label) in enumerate(zip(runs, training, labels)):
        color = f"C{i % 10}"
        for ax, x_key, x_scale in ((loss_it, "iter", 1.0), (loss_t, "elapsed_s", scale)):
            xs, ys = _series(lines, x_key, "loss")
            losses += ys
            ax.plot([x / x_scale for x in xs], ys, "-", color=color, linewidth=0.8, alpha=0.45)
        for y_key, style in (("val_loss", "-"), ("train_loss", "--")):
            xs, ys = _series(records, "iter", y_key)
            losses += ys
            loss_it.plot(xs, ys, style, color=color, marker="o" if style == "-" else None, markersize=3,
                         linewidth=1.6 if style == "-" else 1.1, alpha=1.0 if style == "-" else 0.75)
            pairs = [(r["elapsed_s"] / scale, r[y_key]) for r in records
                     if all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in ("elapsed_s", y_key))]
            loss_t.plot([p[0] for p in pairs], [p[1] for p in pairs], style, color=color,
                        marker="o" if style == "-" else None, markersize=3,
                        linewidth=1.6 if style == "-" else 1.1, alpha=1.0 if style == "-" else 0.75)
        # the rate at each training line and evaluation: points, joined by a thin line (what happens
        # between them is not recorded, so a bold line would claim a shape)
        both = sorted(records + lines, key=lambda r: r["iter"])
        lr_it.plot(*_series(both, "iter", "lr"), color=color, linewidth=0.8, marker="o", markersize=2)
        pairs = [(r["elapsed_s"] / scale, r["lr"]) for r in both
                 if all(isinstance(r.get(k), (int, float)) for k in ("elapsed_s", "lr"))]
        lr_t.plot([p[0] for p in pairs], [p[1] for p in pairs], color=color, linewidth=0.8, marker="o", markersize=2)

    _loss_axis(loss_it, losses, log_scale)
    loss_it.set_title("against iterations", fontsize=10)
    loss_t.set_title("against wall-clock time", fontsize=10)
    peaks = [max(ys) for ys in (_series(r, "iter", "lr")[1] for r in runs) if ys and max(ys) > 0]
    if peaks and max(peaks) / min(peaks) > 10:  # runs' learning rates far apart: a log axis shows them all
        lr_it.set_yscale("log")
    else:
        lr_it.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    lr_it.set_ylabel("learning rate")
    lr_it.set_xlabel("iteration")
    lr_t.set_xlabel(f"wall-clock time ({time_unit}, evaluations included)")
    for ax in (loss_it, loss_t, lr_it, lr_t):
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
    for ax in (loss_it, loss_t):
        ax.tick_params(labelbottom=False)
    loss_t.tick_params(labelleft=False, which="both")
    lr_t.tick_params(labelleft=False, which="both")

    _legend_below(fig, labels)
    if title is None:
        title = labels[0].split(":")[0] if len(labels) == 1 else f"{len(labels)} runs"
    fig.suptitle(title)
    return fig


def _loss_axis(ax, losses: list[float], log_scale: str) -> None:
    """The loss axis: logarithmic when asked or when the losses span more than LOG_SCALE_SPAN, with plain labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = [v for v in losses if v > 0]
    use_log = (log_scale == "on" or (log_scale == "auto" and positive and max(positive) / min(positive) > LOG_SCALE_SPAN))
    if use_log and positive:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 2, 3, 4 rather than 2x10^0
        ax.yaxis.set_major_formatter(plain)
        decades = math.log10(max(positive)) - math.log10(min(positive))
        if decades < 1.5:  # within a decade or so the minor ticks are the only ones: label them
            ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)))
            ax.yaxis.set_minor_formatter(plain)
        else:
            ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("loss (nats per token)" + (", log scale" if use_log else ""))


def _legend_below(fig, labels: list[str]) -> None:
    """One colour per run, then the line styles, in rows under the panels. Margins are fixed from the
    rows' count: constrained layout measured every label for this and took about half of the drawing
    time (train.py redraws loss.png while it trains)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=f"C{i % 10}", linewidth=2.5, label=label) for i, label in enumerate(labels)]
    handles += [Line2D([], [], color="0.3", linestyle="-", marker="o", markersize=3, label="val loss"),
                Line2D([], [], color="0.3", linestyle="--", label="train loss (evaluations)"),
                Line2D([], [], color="0.3", linewidth=0.8, alpha=0.45, label="training loss (training lines)")]
    ncol = 2 if len(labels) > 3 else 1
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    rows = -(-len(handles) // ncol)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.91, hspace=0.08, wspace=0.04, bottom=(0.75 + 0.2 * rows) / 7.5)


def _save(fig, out: Path, dpi: int = 110) -> Path:
    """Write the PNG atomically (temporary file, rename): a reader never sees half a picture."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    umask = os.umask(0)
    os.umask(umask)
    if hasattr(os, "fchmod"):  # (not on Windows before Python 3.13)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes the file private (0600); a picture gets the usual mode
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def plot_runs(run_dirs, out, title: str | None = None, log_scale: str = "auto") -> Path:
    """Draw the runs into the PNG `out`; returns its path. Problems are one-line UserErrors."""
    if not run_dirs:
        raise UserError("no runs to plot: give one or more run folders")
    fig = make_figure(run_dirs, title, log_scale)
    try:
        return _save(fig, Path(out))
    except OSError as e:
        raise UserError(f"could not write {out}: {e.strerror or e}; choose another --out") from None


def save_loss_plot(run_dir) -> Path | None:
    """Write run_dir/loss.png from its metrics.jsonl; None (and nothing raised) if that cannot be done.

    For train.py, after each evaluation: a missing matplotlib, an unreadable file or a full disk
    must never stop a training run.
    """
    try:
        return plot_runs([run_dir], Path(run_dir) / LOSS_PLOT_NAME)
    except Exception:  # noqa: BLE001 - by contract: a picture is never worth a failed run
        return None


def main(argv=None) -> Path:
    parser = cli.ArgumentParser(prog="python -m smallgpt.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (each holding metrics.jsonl)")
    parser.add_argument("--out", default="runs.png", help="the PNG file to write (default: runs.png)")
    parser.add_argument("--title", default=None, help="the figure's title (default: the run name, or 'N runs')")
    parser.add_argument("--log_scale", choices=("auto", "on", "off"), default="auto",
                        help="log-scaled loss axis (auto: when the loss spans more than a factor of 2)")
    args = parser.parse_args(argv)
    out = plot_runs(args.runs, args.out, args.title, args.log_scale)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    cli.run_main(main, sys.argv[1:])
