"""Command-line plumbing shared by train.py, sample.py and bench.py.

Two jobs:
  * `parse_config(cls, argv)`: build a typed dataclass from TOML files and `--key=value` overrides.
    Configs are data: TOML is parsed, never executed. Unknown keys are errors that name the closest
    valid key; values are converted by the field's type (`--learning_rate=1`, `--compile=False`).
  * `run_main(fn)`: run a script's main so that a `UserError` prints one line and exits non-zero,
    with no traceback (set GPT_DEBUG=1 or pass --debug to see it).

A dataclass field documents itself through `field(metadata={"help": ..., "choices": [...]})`;
`--help` lists every key with its type, default and that line.
"""

import argparse
import dataclasses
import difflib
import os
import sys
import time
import typing
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib


class UserError(Exception):
    """A problem with the user's input: reported as one line, without a traceback."""


def option(default, help: str, choices=None):
    """A dataclass field with its help text (and allowed values) for `--help` and validation."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


_EXPECTED = {bool: "a bool (true or false)", int: "an int", float: "a float", str: "a string (quote it in TOML)"}


def convert_value(key: str, raw, tp, choices=None):
    """Convert a TOML value or command-line string to the field's type, or raise UserError."""
    value = raw
    if isinstance(raw, str) and tp is not str:  # from the command line
        text = raw.strip().lower()
        try:
            if tp is bool:
                value = True if text in _TRUE else False if text in _FALSE else None
            else:
                value = tp(text)
        except ValueError:
            value = None
    # TOML values arrive typed: check them (bool is an int subclass, so it is excluded explicitly)
    if tp is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        raise UserError(f"bad value for {key}: {raw!r} is not {_EXPECTED[tp]}")
    if choices is not None and value not in choices:
        raise UserError(f"bad value for {key}: {value!r}; choose one of {', '.join(map(str, choices))}")
    return value


def _unknown_key(key: str, valid: list[str], where: str) -> UserError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else "; see --help for the valid keys"
    return UserError(f"unknown config key {key!r} {where}{hint}")


def read_toml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {path} (check the path; configs live in config/)")
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"invalid TOML in {path}: {e}") from None
    except UnicodeDecodeError:
        raise UserError(f"invalid TOML in {path}: the file is not UTF-8 text") from None


def help_text(cls, prog: str, description: str) -> str:
    lines = [description.strip().splitlines()[0], "", f"usage: python {prog} [config.toml ...] [--key=value ...]", ""]
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata or {}
        choices = meta.get("choices")
        tp = "|".join(map(str, choices)) if choices else _type_name(types[f.name])
        lines.append(f"  --{f.name}={f.default!r}  ({tp})  {meta.get('help', '')}")
    return "\n".join(lines)


def parse_config(cls, argv: list[str], description: str = ""):
    """Return `cls(...)` built from defaults, then each TOML file in argv, then each --key=value."""
    valid = [f.name for f in dataclasses.fields(cls)]
    types = _field_types(cls)
    choices = {f.name: (f.metadata or {}).get("choices") for f in dataclasses.fields(cls)}
    values: dict = {}
    for arg in argv:
        if arg in ("-h", "--help"):
            print(help_text(cls, Path(sys.argv[0]).name, description or (cls.__doc__ or "")))
            raise SystemExit(0)
        if arg == "--debug":
            continue  # handled by run_main
        if arg.startswith("--"):
            key, eq, raw = arg[2:].partition("=")
            key = key.replace("-", "_")
            if key not in valid:
                raise _unknown_key(key, valid, "on the command line")
            if not eq:
                if types[key] is not bool:
                    raise UserError(f"missing value for --{key}: write --{key}=VALUE")
                raw = "true"
            values[key] = convert_value(key, raw, types[key], choices[key])
        elif arg.startswith("-"):
            raise UserError(f"unrecognised argument {arg!r}: options are written --key=value")
        else:
            for key, raw in read_toml(arg).items():
                if key not in valid:
                    raise _unknown_key(key, valid, f"in {arg}")
                values[key] = convert_value(key, raw, types[key], choices[key])
    return cls(**values)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for scripts that take flags (prepare/): a bad flag is a one-line UserError, not usage + exit 2."""

    def error(self, message):
        raise UserError(f"{message} (see python {self.prog.removeprefix('python ')} --help)")


def resolve_device(name: str):
    """torch.device for auto|cpu|cuda|cuda:N|mps, or UserError when that device is not here."""
    import torch  # imported here so that parsing a config stays cheap

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} is not available (no CUDA GPU found): use --device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {name} is not there: this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device mps is not available on this machine: use --device=cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def _usable_cpus() -> set[int] | None:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux
        return None


def cpu_snapshot():
    """A reading of CPU time for `cores_used_by_others`; None where there is no /proc/stat (not Linux)."""
    cpus = _usable_cpus()
    busy_ticks = 0
    try:
        with open("/proc/stat") as f:
            for line in f:  # "cpuN user nice system idle iowait irq softirq steal ..." (in clock ticks)
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and (cpus is None or int(name[3:]) in cpus):
                    ticks = [int(v) for v in fields[:8]]
                    busy_ticks += sum(ticks) - ticks[3] - ticks[4]
    except (OSError, ValueError, IndexError):
        return None
    own = os.times()
    return busy_ticks / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.monotonic()


def cores_used_by_others(since) -> float | None:
    """Cores (of those this process may run on) kept busy by other processes since `since`, on average.

    `since` is a `cpu_snapshot()`. None when it cannot be known: no /proc/stat, or under 0.2 s.
    """
    now = cpu_snapshot()
    if since is None or now is None or now[2] - since[2] < 0.2:
        return None
    others = (now[0] - since[0]) - (now[1] - since[1])  # busy CPU seconds of all processes but this one
    return max(0.0, others / (now[2] - since[2]))


def free_cpu_threads(default: int, since) -> int:
    """`default` threads (torch's: one per core) scaled down by the share of cores others kept busy.

    torch runs CPU ops as OpenMP parallel regions whose threads spin while they wait for the next
    one. When another process holds a core, a thread that needs that core waits for the scheduler on
    every op, and a run of tiny ops (sampling: a dozen per layer per token) gets several times slower
    than on fewer threads. On 2 cores: one other busy process gives 1 thread; 0.4 of a core, 2.
    """
    others = cores_used_by_others(since)
    cpus = _usable_cpus()
    if others is None or not cpus:
        return default
    return max(1, min(default, round(default * (1 - others / len(cpus)))))


def run_main(main, *args, **kwargs):
    """Call main(); problems become one line on stderr and a non-zero exit (traceback with --debug).

    UserError: exit 1 with its message. Environment failures that are not bugs get one line too:
    an OSError (disk full, permission denied) or MemoryError exits 1, Ctrl-C exits 130, and a closed
    stdout (`python sample.py | head`) ends quietly.
    """
    debug = "--debug" in sys.argv or os.environ.get("GPT_DEBUG", "") not in ("", "0")
    try:
        return main(*args, **kwargs)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:  # the reader of stdout went away: not an error worth a traceback
        try:
            sys.stdout = open(os.devnull, "w")  # so that the interpreter's final flush stays quiet
        except OSError:
            pass
        raise SystemExit(1) from None
    except (MemoryError, RuntimeError) as e:
        # torch.OutOfMemoryError (GPU) is a RuntimeError; other RuntimeErrors are bugs: show them
        if debug or not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"):
            raise
        where = "GPU" if type(e).__name__ == "OutOfMemoryError" else "host RAM"
        print(f"error: out of memory ({where}); lower --batch_size (raise --gradient_accumulation_steps to keep "
              f"the tokens per update), lower --block_size, or use a smaller model", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e} (check the path, free disk space or fix permissions; "
              f"--debug shows where)", file=sys.stderr)
        raise SystemExit(1) from None
