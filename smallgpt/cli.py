"""Command-line plumbing shared by the scripts (train.py, sample.py, hf.py, eval, bench/, prepare/).

Two jobs:
  * Configs: `parse_config(cls, argv)` builds a typed dataclass from TOML files and `--key=value`
    overrides. Configs are data: TOML is parsed, never executed; a nanoGPT `*.py` config is parsed
    with `ast` and only its literal assignments are evaluated (nanogpt_config.py). Unknown keys are errors that name
    the closest valid key; command-line values are converted by the field's type
    (`--learning_rate=1`, `--compile=False`); TOML values must already have it (`max_iters = "10"`
    is refused). `read_overrides` returns only the keys given, for resuming a saved config.
  * Errors: `run_main(fn)` runs a script's main so that a `UserError` prints one line and exits
    non-zero, with no traceback (set GPT_DEBUG=1 or pass --debug to see it).

A field documents itself through `option(default, help, choices, bounds...)`; a nested dataclass
(the model's GPTConfig) joins through `option_group`, documented by the comments in its source, its
choices and bounds in its CHOICES and BOUNDS. `--help` lists every key with its type, default and help.

One rule for every value a user types (`check_value`, also applied by `ArgumentParser` to the prepare
scripts' flags): a float is finite; a number lies within its key's bounds (at_least, at_most: inclusive;
above, below: exclusive), and within +-INT_LIMIT (ints) or +-FLOAT_LIMIT (floats) where its key sets
none; a string whose default is not empty is not empty (`--out_dir=` is a slip, not a folder). A value
that breaks it is one line naming the key, before anything is built or written.
"""

import argparse
import dataclasses
import difflib
import functools
import inspect
import math
import operator
import os
import re
import sys
import typing
from pathlib import Path

from smallgpt.errors import UserError
from smallgpt.interop import nanogpt_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib


INT_LIMIT = 2**31 - 1  # an int key's bounds where it sets none (its at_least / at_most replace them)
FLOAT_LIMIT = 1e9  # a float key's, likewise: far beyond any sensible setting, far below an overflow
RULES = {"at_least": (operator.ge, "at least"), "at_most": (operator.le, "at most"),
         "above": (operator.gt, "above"), "below": (operator.lt, "below")}


def option(default, help: str, choices=None, **bounds):
    """A dataclass field with its help text, and its allowed values or its bounds (at_least=, at_most=
    inclusive, above=, below= exclusive), for `--help` and validation (check_value)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "bounds": rules(bounds)})


def rules(bounds: dict) -> dict:
    """`bounds` checked to name only RULES (a misspelt bound is a bug, found at import)."""
    unknown = bounds.keys() - RULES.keys()
    assert not unknown, f"unknown bounds {unknown}: use {', '.join(RULES)}"
    return bounds


def usable_threads(requested: int, log=print, key: str = "threads") -> int:
    """`requested` CPU threads (a --threads or --workers), capped at the cores this process may run on:
    threads beyond them only wait for one another (1,000 torch threads on 2 cores ran 3.5x slower). One
    line to `log` when capped."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    if requested > cores:
        log(f"{key}={requested} is more than the {cores} core(s) this process may use: using {cores}")
        return cores
    return requested


def shown(value) -> str:
    """A value as an error message shows it: huge numbers and long strings shortened."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15:
        return f"{value:.3e}" if value.bit_length() < 1000 else f"an int of {value.bit_length():,} bits"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def number_problem(value, bounds: dict) -> str | None:
    """What is wrong with a number under the one rule (see the module docstring), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    limit = INT_LIMIT if isinstance(value, int) else FLOAT_LIMIT
    for rule, bound in {"at_least": -limit, "at_most": limit, **bounds}.items():
        test, words = RULES[rule]
        if not test(value, bound):
            return f"must be {words} {bound:,}" if isinstance(bound, int) else f"must be {words} {bound:g}"
    return None


def option_group(cls, help: str, exclude: tuple[str, ...] = ()):
    """A field holding a nested config dataclass (e.g. the model's GPTConfig).

    Its fields are keys like any other: flat (`n_layer = 4`, `--n_layer=4`) or in a TOML table named
    after the field (`[model]`). Their help is the comment after each field in the class's source.
    `exclude` names fields that are not keys (set by the program, e.g. vocab_size from the data).
    """
    return dataclasses.field(default_factory=cls, metadata={"help": help, "group": cls, "exclude": tuple(exclude)})


@dataclasses.dataclass
class Key:
    """One settable key: its type, default, help, allowed values, and the group field holding it."""
    name: str
    type: type
    default: object
    help: str
    choices: list | None
    group: str | None  # the option_group field it belongs to, None for a top-level key
    bounds: dict  # check_value's at_least / at_most / above / below for a number


@functools.cache  # (reading the source parses its whole file: once per class)
def field_comments(cls) -> dict[str, str]:
    """The comment after each field in a dataclass's source (continuation comment lines appended)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # no source (frozen app): keys go undocumented, never broken
        return {}
    comments, current = {}, None
    for line in lines:
        field_line = re.match(r"\s+(\w+)\s*:[^#=]*(?:=[^#]*)?#\s?(.*)$", line)
        continuation = re.match(r"\s+#\s*(.*)$", line)
        if field_line:
            current = field_line.group(1)
            comments[current] = field_line.group(2).strip()
        elif continuation and current:
            comments[current] += " " + continuation.group(1).strip()
        else:
            current = None
    return comments


def config_keys(cls) -> dict[str, Key]:
    """Every key of a config dataclass, option groups flattened, in declaration order."""
    keys: dict[str, Key] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata or {}
        if "group" in meta:
            group_cls, comments = meta["group"], field_comments(meta["group"])
            group_hints = typing.get_type_hints(group_cls)
            members = [g for g in dataclasses.fields(group_cls) if g.name not in meta["exclude"]]
            choices, bounds = getattr(group_cls, "CHOICES", {}), getattr(group_cls, "BOUNDS", {})
            new = {g.name: Key(g.name, group_hints[g.name], g.default, comments.get(g.name, ""),
                               list(choices[g.name]) if g.name in choices else None, f.name, bounds.get(g.name, {}))
                   for g in members}
        else:
            new = {f.name: Key(f.name, hints[f.name], f.default, meta.get("help", ""), meta.get("choices"), None,
                               meta.get("bounds", {}))}
        clash = keys.keys() & new.keys()
        assert not clash, f"config keys defined twice: {clash}"
        keys.update(new)
    return keys


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_EXPECTED = {bool: "a bool (true or false)", int: "an int", float: "a float", str: "a string"}


def convert_value(key: Key, raw, where: str = "on the command line"):
    """The value of `key` from a command-line string or a TOML value; UserError when it does not fit.

    Command-line strings are converted by type (`--learning_rate=1`, `--compile=False`). TOML values
    arrive typed and must already have the key's type: `max_iters = "10"` is refused, not converted
    (an int may stand for a float, and a TOML bool for a true/false choice).
    """
    tp, value = key.type, raw
    if where == "on the command line" and tp is not str:
        text = raw.strip().lower()
        try:
            value = (True if text in _TRUE else False if text in _FALSE else None) if tp is bool else tp(text)
        except ValueError:  # (also an int of more digits than Python converts)
            value = None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**1023 else math.inf  # (float() of a bigger one overflows)
    if tp is int and where == "on the command line" and isinstance(value, float) and value.is_integer():
        value = int(value)
    if tp is str and key.choices and {"true", "false"} <= set(key.choices):  # a tri-state: auto | true | false
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            value = "true" if value.strip().lower() in _TRUE else "false"
    if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
        hint = f" (write {key.name} = {raw} without quotes)" if isinstance(raw, str) and raw and \
            where != "on the command line" else ""
        raise UserError(f"bad value for {key.name} {where}: {shown(raw)} is not {_EXPECTED[tp]}{hint}")
    if key.choices is not None and value not in key.choices:
        raise UserError(f"bad value for {key.name} {where}: {shown(value)}; choose one of "
                        f"{', '.join(map(str, key.choices))}")
    check_value(key, value, f" {where}")
    return value


def check_value(key: Key, value, where: str = "") -> None:
    """The one rule (see the module docstring): a UserError naming the key when `value` breaks it."""
    if isinstance(value, str) and not value and key.default != "":
        raise UserError(f"bad value for {key.name}{where}: it is empty (leave the key out for its default "
                        f"{key.default!r})")
    problem = number_problem(value, key.bounds) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None
    if problem:
        raise UserError(f"bad value for {key.name}{where}: {shown(value)} ({problem})")


def _unknown_key(key: str, valid: list[str], where: str) -> UserError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else "; see --help for the valid keys"
    return UserError(f"unknown config key {key!r} {where}{hint}")


def read_toml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {path} (check the path; configs live in config/)")
    try:
        text = p.read_text(encoding="utf-8")
        return tomllib.loads(text)
    except UnicodeDecodeError:
        raise UserError(f"invalid TOML in {path}: the file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"invalid TOML in {path}: {e}") from None
    except ValueError:  # an int of more digits than Python converts (sys.get_int_max_str_digits): name its key
        key = re.search(r"^\s*([\w.\"'-]+)\s*=\s*[+-]?\d[\d_]{99,}", text, re.MULTILINE)
        raise UserError(f"bad value for {key.group(1) if key else 'a key'} in {path}: an int of thousands of "
                        f"digits") from None


def flatten_groups(cls, values: dict) -> dict:
    """A dict with option-group tables (`{"model": {...}}`) merged into its top level."""
    groups = {f.name for f in dataclasses.fields(cls) if "group" in (f.metadata or {})}
    flat = {}
    for key, value in values.items():
        if key in groups and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def project_version() -> str:
    """This checkout's version, from pyproject.toml (installed or not)."""
    try:
        with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def program_name() -> str:
    """How the running program is started, for usage lines: "train.py", or "-m smallgpt.plot" for a library module."""
    path, package = Path(sys.argv[0]).resolve(), Path(__file__).resolve().parent
    if package in path.parents:
        return "-m " + ".".join(path.relative_to(package.parent).with_suffix("").parts)
    return path.name


def help_text(cls, prog: str, description: str) -> str:
    lines = [description.strip().splitlines()[0], "",
             f"usage: python {prog} [config.toml|nanogpt_config.py ...] [--key=value ...] [--debug] [--version]", ""]
    group = None
    for key in config_keys(cls).values():
        if key.group != group and key.group is not None:
            lines.append(f"  [{key.group}] keys (also settable flat, as below):")
        group = key.group
        tp = "|".join(map(str, key.choices)) if key.choices else getattr(key.type, "__name__", str(key.type))
        lines.append(f"  --{key.name}={key.default!r}  ({tp})  {key.help}")
    lines += ["", "  --debug    show the traceback behind a one-line error (or set GPT_DEBUG=1)",
              "  --version  print the version of this code and of torch"]
    return "\n".join(lines)


def read_overrides(cls, argv: list[str], description: str = "", sources: dict | None = None,
                   nanogpt: str | None = None, log=None) -> dict:
    """The keys set by argv: each config file in order, then each --key=value (later wins).

    Returns {key: typed value} for exactly the keys given (flat; option groups flattened), so a
    caller can tell what was set from what was left at its default. Handles --help and --version.
    A `*.py` file is a nanoGPT config, read without running it (nanogpt_config.py); `nanogpt` names
    the nanoGPT script whose defaults such a file lies over ("train", "sample"), and those defaults
    come first. `sources`, if given, receives where each key came from: a file, "the command line"
    or "nanoGPT's defaults". `log` receives the one-line notes about nanoGPT keys (default: stdout).
    """
    keys = config_keys(cls)
    valid = list(keys)
    values: dict = {}
    sources = {} if sources is None else sources
    python_file = None
    for arg in argv:
        if arg in ("-h", "--help"):
            print(help_text(cls, program_name(), description or (cls.__doc__ or "")))
            raise SystemExit(0)
        if arg == "--version":
            import torch  # only here: parsing a config stays cheap

            print(f"smallgpt {project_version()} (torch {torch.__version__}, python {sys.version.split()[0]})")
            raise SystemExit(0)
        if arg == "--debug":
            continue  # handled by run_main
        if arg.startswith("--"):
            name, eq, raw = arg[2:].partition("=")
            name = name.replace("-", "_")
            if name not in keys:
                if nanogpt_config.ignored_on_command_line(name, raw, log):
                    continue
                raise _unknown_key(name, valid, "on the command line")
            if not eq:
                if keys[name].type is not bool and "true" not in (keys[name].choices or ()):
                    raise UserError(f"missing value for --{name}: write --{name}=VALUE")
                raw = "true"  # a bare flag switches a bool (or a true/false/auto choice) on
            values[name] = convert_value(keys[name], raw)
            sources[name] = "the command line"
        elif arg.startswith("-"):
            raise UserError(f"unrecognised argument {arg!r}: options are written --key=value")
        else:
            if arg.endswith(".py"):  # (its keys' lines known: "in FILE:LINE")
                (file_values, lines), python_file = nanogpt_config.read_config(arg, keys, nanogpt, _unknown_key, log), arg
            else:
                file_values, lines = flatten_groups(cls, read_toml(arg)), {}
            for name, raw in file_values.items():
                if name not in keys:
                    raise _unknown_key(name, valid, f"in {arg}")
                values[name] = convert_value(keys[name], raw, f"in {lines.get(name, arg)}")
                sources[name] = arg
    if python_file is not None:  # a nanoGPT config overrides nanoGPT's defaults: they go under everything
        defaults = nanogpt_config.defaults_under(nanogpt, keys, values, python_file, log)
        values = {**{k: convert_value(keys[k], v, "in nanoGPT's defaults") for k, v in defaults.items()}, **values}
        sources.update({k: "nanoGPT's defaults" for k in defaults if k not in sources})
    return values


def build_config(cls, values: dict, base=None):
    """`base` (default: cls's defaults) with the flat `values` applied, groups included; every key's
    value obeys the one rule (check_value: a saved config's too).

    A group's own validation (e.g. GPTConfig's: n_embd divisible by n_head) becomes a UserError.
    """
    keys = config_keys(cls)
    base = base if base is not None else cls()
    top, groups = {}, {}
    for name, value in values.items():
        group = keys[name].group
        (groups.setdefault(group, {}) if group else top)[name] = value
    for group, changes in groups.items():
        try:
            top[group] = dataclasses.replace(getattr(base, group), **changes)
        except ValueError as e:
            raise UserError(f"invalid {group} config: {e}") from None
    try:
        config = dataclasses.replace(base, **top)
    except ValueError as e:
        raise UserError(f"invalid config: {e}") from None
    for key in keys.values():
        check_value(key, getattr(getattr(config, key.group) if key.group else config, key.name))
    return config


def config_from_dict(cls, saved: dict):
    """cls from a saved dict (config.json, a checkpoint's train_config; flat or with group tables).

    Keys this version does not know (from another version of the code) are left out.
    """
    keys = config_keys(cls)
    return build_config(cls, {k: v for k, v in flatten_groups(cls, saved).items() if k in keys})


def parse_config(cls, argv: list[str], description: str = "", **read_options):
    """Return `cls(...)` built from defaults, then each config file in argv, then each --key=value
    (read_options: read_overrides's nanogpt and log)."""
    return build_config(cls, read_overrides(cls, argv, description, **read_options))


def parse_variant(value: str) -> tuple[str, list[str]]:
    """A bench's `--variant "NAME: --key=value ..."`: its name and its overrides."""
    name, colon, overrides = value.partition(":")
    if not colon or not name.strip():
        raise UserError(f"bad --variant {value!r}: write --variant \"NAME: --key=value ...\"")
    return name.strip(), overrides.split()


class ArgumentParser(argparse.ArgumentParser):
    """argparse for scripts that take flags (prepare/): a bad flag is a one-line UserError, not usage + exit 2.

    The values obey the configs' one rule: an int or float flag's number is checked as a config key's is
    (add_argument takes the same at_least, at_most, above and below), and a string flag may not be empty
    unless add_argument says allow_empty=True.
    """

    def add_argument(self, *names, allow_empty=False, **kwargs):
        bounds = rules({rule: kwargs.pop(rule) for rule in RULES if rule in kwargs})
        kind = kwargs.get("type", str if kwargs.get("action") in (None, "store") else None)
        if kind in (int, float) or (kind is str and not allow_empty):
            kwargs["type"] = checked(kind, bounds)
        return super().add_argument(*names, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see python {self.prog.removeprefix('python ')} --help)")


def checked(kind, bounds: dict):
    """An argparse `type` that converts a flag's text with `kind` (int, float or str) and applies the rule."""
    def convert(text: str):
        value = kind(text)  # a ValueError is argparse's "invalid int value: 'x'"
        problem = "must not be empty" if value == "" else number_problem(value, bounds) if kind is not str else None
        if problem:
            raise argparse.ArgumentTypeError(f"{shown(value)} ({problem})")
        return value

    convert.__name__ = kind.__name__
    return convert


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
