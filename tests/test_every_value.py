"""Every key a user can set, fed the values users mistype, through every way of giving it.

The keys are found, not listed: every field of every config dataclass (a dataclass of cli.option()
fields in a program at the root or a smallgpt module: train.py's TrainConfig with model.GPTConfig,
sample.py's, eval.py's, the Hugging Face export's) and every flag each prepare script's parser adds, so
a new key, or a new program's config, is covered without editing this file. Each gets nan, inf, -inf, -1,
0, 1, 1e300, a huge int, an int of thousands of digits, the wrong type and an empty string, on the
command line, in a TOML file and in a nanoGPT .py file (the prepare scripts take flags only).

  * fast: through the parsing layer, in-process. Each value is either accepted or refused with one line
    ("error: ...") that names the key, exit 1, no traceback; nan, inf, 1e300 and huge ints are refused
    for every number, before anything is built or written.
  * slow: each value the parsing layer accepts (an in-range -1, 0 or 1; a name where a name goes) runs
    the program for real on a tiny dataset and run: it works (exit 0), or ends in one line naming the
    key, having written nothing.

    python -m pytest tests/test_every_value.py -q
"""

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import json
import sys

import pytest
from conftest import REPO_ROOT
from test_resume import tiny_args

import eval as eval_py
import sample
import train
from smallgpt import cli
from smallgpt.cli import config_keys, parse_config, run_main
from smallgpt.interop import hf

# name: (command line, TOML, .py)
VALUES = {
    "nan": ("nan", "nan", "float('nan')"),
    "inf": ("inf", "inf", "float('inf')"),
    "-inf": ("-inf", "-inf", "-float('inf')"),
    "-1": ("-1", "-1", "-1"),
    "0": ("0", "0", "0"),
    "1": ("1", "1", "1"),
    "1e300": ("1e300", "1e300", "1e300"),
    "a huge int": ("1" + "0" * 30, "1" + "0" * 30, "10**30"),
    "thousands of digits": ("1" + "0" * 5000, "1" + "0" * 5000, "10**5000"),
    "the wrong type": ("abc", '"abc"', "'abc'"),  # for a number or a bool; for a string, the numbers are
    "empty": ("", '""', "''"),
}
NEVER_A_NUMBER = ("nan", "inf", "-inf", "1e300", "a huge int", "thousands of digits", "the wrong type", "empty")

NANOGPT_SCRIPT = {"TrainConfig": "train", "SampleConfig": "sample"}  # whose nanoGPT .py configs a config reads


def config_classes() -> dict:
    """{module: its config dataclass} for every program's config: the dataclasses whose fields are
    cli.option()s, in the programs at the repository's root and the smallgpt modules (all imported)."""
    names = [p.stem for p in REPO_ROOT.glob("*.py")]
    names += [".".join(p.relative_to(REPO_ROOT).with_suffix("").parts) for p in (REPO_ROOT / "smallgpt").rglob("*.py")]
    found = {}
    for name in names:
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__ and \
                    any("help" in f.metadata for f in dataclasses.fields(obj)):
                found[name] = obj
    return found


# program (its module): (its config dataclass, the nanoGPT script whose .py configs it reads)
CONFIGS = {name: (cls, NANOGPT_SCRIPT.get(cls.__name__)) for name, cls in config_classes().items()}
PREPARE_SCRIPTS = sorted(p.stem for p in (REPO_ROOT / "prepare").glob("*.py"))


def prepare_module(name: str):
    spec = importlib.util.spec_from_file_location(f"prepare_{name}", REPO_ROOT / "prepare" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Parsed(Exception):
    """Raised in place of running a prepare script once its flags are parsed."""


def prepare_flags(name: str, monkeypatch) -> list[dict]:
    """Every flag a prepare script's parser adds: {"flag", "type", "choices", "required", "store", "allow_empty"}."""
    flags = []
    original = cli.ArgumentParser.add_argument

    def record(parser, *names, **kwargs):
        flags.append({"flag": names[0], "type": kwargs.get("type", str), "choices": kwargs.get("choices"),
                      "required": kwargs.get("required", False), "store": kwargs.get("action") is None,
                      "allow_empty": kwargs.get("allow_empty", False)})
        return original(parser, *names, **kwargs)

    def stop(parser, argv=None):
        raise Parsed

    with monkeypatch.context() as patch:
        patch.setattr(cli.ArgumentParser, "add_argument", record)
        patch.setattr(cli.ArgumentParser, "parse_args", stop)
        with pytest.raises(Parsed):
            prepare_module(name).main([])
    return flags


_parse_args = cli.ArgumentParser.parse_args  # (argparse's own, kept before any test patches it)


def parse_then_stop(parser, argv=None):
    """ArgumentParser.parse_args for a fast test: parse (a bad flag is its one line), then stop."""
    raise Parsed(_parse_args(parser, argv))


def accepted_or_refused(main, argv):
    """The flags main parsed, with parse_then_stop in place; or main's UserError."""
    try:
        main(argv)
    except Parsed as parsed:
        return parsed.args[0]  # the namespace


def kind(key) -> str:
    if key.type in (int, float):
        return "number"
    if key.type is bool or key.choices:
        return "choice"
    return "name"


def given(channel: str, key: str, value: str, tmp_path) -> list[str]:
    """argv giving `key` the value named `value` through `channel`: "command line", "TOML" or ".py"."""
    text = VALUES[value][("command line", "TOML", ".py").index(channel)]
    if channel == "command line":
        return [f"--{key}={text}"]
    path = tmp_path / (f"{key}.toml" if channel == "TOML" else f"{key}.py")
    path.write_text(f"{key} = {text}\n")
    return [str(path)]


def outcome(capsys, call, *args, **kwargs) -> str | None:
    """None when `call` returns (accepted); else its one error line, checked: exit 1, no traceback."""
    capsys.readouterr()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # (nanoGPT's notes)
            run_main(call, *args, **kwargs)
    except SystemExit as e:
        err = capsys.readouterr().err
        assert e.code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, (e.code, err)
        assert "Traceback" not in err
        return err.strip()
    return None


def config_cases():
    for program, (cls, _) in CONFIGS.items():
        for key in config_keys(cls).values():
            yield program, key


@pytest.mark.parametrize("program, key", list(config_cases()), ids=lambda x: getattr(x, "name", x))
def test_every_config_key_refuses_a_mistyped_value_in_one_line(program, key, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [program])  # run_main looks for --debug there
    monkeypatch.delenv("GPT_DEBUG", raising=False)
    cls, script = CONFIGS[program]
    for channel in ("command line", "TOML", ".py"):
        for value in VALUES:
            argv = given(channel, key.name, value, tmp_path)
            line = outcome(capsys, parse_config, cls, argv, nanogpt=script, log=lambda text: None)
            case = (channel, value, line)
            if line is not None:
                assert f" {key.name}" in line, case
            elif kind(key) == "number":
                assert value not in NEVER_A_NUMBER, case
            elif kind(key) == "choice":
                assert channel == "command line" and value in ("0", "1"), case  # a bool's (or true/false's) 0 or 1
            else:
                assert channel == "command line" or value in ("the wrong type", "empty"), case
                assert value != "empty" or key.default == "", case


@pytest.mark.parametrize("name", PREPARE_SCRIPTS)
def test_every_prepare_flag_refuses_a_mistyped_value_in_one_line(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name])
    monkeypatch.delenv("GPT_DEBUG", raising=False)
    flags = prepare_flags(name, monkeypatch)
    assert flags
    required = [arg for f in flags if f["required"] for arg in (f["flag"], "x")]
    parse = prepare_module(name).main
    monkeypatch.setattr(cli.ArgumentParser, "parse_args", parse_then_stop)
    for flag in (f for f in flags if f["store"]):
        for value, (text, _, _) in VALUES.items():
            line = outcome(capsys, accepted_or_refused, parse, [*required, f"{flag['flag']}={text}"])
            case = (flag["flag"], value, line)
            if line is not None:
                assert flag["flag"] in line, case
            elif flag["type"] in (int, float):
                assert value not in NEVER_A_NUMBER, case
            else:
                assert flag["choices"] is None and (value != "empty" or flag["allow_empty"]), case


# ----------------------------------------------------------------------------- accepted values run

def accepted_values(cls, script) -> list[tuple]:
    """(key, value name, typed value) of each value the parsing layer takes on the command line and that
    is not the key's default (which every other run tries): a number or choice in range; for a name (a
    path, a device, a prompt), a number where the name goes ("-1") and an empty string where allowed."""
    cases = []
    for key in config_keys(cls).values():
        names = VALUES if kind(key) != "name" else ("-1", "empty")
        for value in names:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    cfg = parse_config(cls, [f"--{key.name}={VALUES[value][0]}"], nanogpt=script)
            except cli.UserError:
                continue
            typed = getattr(getattr(cfg, key.group) if key.group else cfg, key.name)
            if typed != key.default:
                cases.append((key, value, typed))
    return cases


WROTE = ("ckpt.pt", "metrics.jsonl", "config.json", "train.bin", "val.bin", "meta.json", "model.safetensors")


def written(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name in WROTE) if folder.exists() else []


@pytest.fixture(scope="module")
def tiny_run(small_char_dataset, tmp_path_factory):
    """A trained run of tiny_args' shape (GPT-2's: it exports), for sample, eval and the export to read."""
    out = tmp_path_factory.mktemp("every_value_run")
    with contextlib.redirect_stdout(io.StringIO()):
        train.main(tiny_args(small_char_dataset, out, max_iters=2, eval_interval=2, eval_iters=1))
    return out


def base_argv(program: str, dataset, run, tmp_path) -> dict:
    """{key: value} a program's quick run takes, before the key under test replaces its own."""
    if program == "train":
        return {k: v for k, v in (a[2:].split("=", 1) for a in tiny_args(
            dataset, tmp_path / "out", max_iters=2, eval_interval=2, eval_iters=1, log_interval=1))}
    if program == "sample":
        return {"out_dir": run, "device": "cpu", "max_new_tokens": 5}
    if program == "eval":
        return {"out_dir": run, "device": "cpu", "max_tokens": 300, "block_size": 16}
    return {"out_dir": run, "to": tmp_path / "hf"}


MAINS = {"train": train.main, "sample": sample.main, "eval": eval_py.main,
         "smallgpt.interop.hf": lambda argv: hf.main(["export", *argv])}


def test_the_configs_are_found():
    assert set(MAINS) <= set(CONFIGS), CONFIGS  # (a config found beyond these has its keys checked, not run)


@pytest.mark.slow
@pytest.mark.parametrize("program", list(MAINS))
def test_every_value_the_parsing_layer_takes_runs_or_is_one_line(program, small_char_dataset, tiny_run, tmp_path,
                                                                  capsys, monkeypatch):
    """A key's accepted value in a real (tiny) run: it works, or stops in one line naming the key, having
    written nothing. The runs start in an empty folder (a relative out_dir or --to lands there)."""
    monkeypatch.setattr(sys, "argv", [program])
    monkeypatch.delenv("GPT_DEBUG", raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cls, script = CONFIGS[program]
    failures, lines = [], []
    for i, (key, value, _) in enumerate(accepted_values(cls, script)):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        monkeypatch.chdir(folder)
        argv = base_argv(program, small_char_dataset, tiny_run, folder)
        argv[key.name] = VALUES[value][0]
        line = outcome(capsys, MAINS[program], [f"--{k}={v}" for k, v in argv.items()])
        lines.append(f"{program} --{key.name}={VALUES[value][0]}: {line or 'ran'}")
        if line is not None and (key.name not in line or written(folder)):
            failures.append((key.name, value, line, written(folder)))
    print("\n".join(lines))
    assert lines and not failures, failures


# a quick run of each prepare script: {flag: value}, "{text}" standing for a small text file
PREPARE_BASE = {"text": {"--input": "{text}", "--out_dir": "out", "--tokenizer": "char", "--quiet": None},
                "shakespeare": {"--input": "{text}", "--out_dir": "out"},
                "shakespeare_char": {"--input": "{text}", "--out_dir": "out"},
                "python_stdlib": {"--tokenizer": "byte", "--out_dir": "out"},
                "chat": {"--input": "{chats}", "--out_dir": "out", "--tokenizer": "byte"}}
NO_QUICK_RUN = {"fineweb": "downloads its corpus (no network here)", "shared": "downloads its files (no network here)",
                "python_stdlib_chat": "needs the quick start's dataset to take its tokenizer from"}


@pytest.mark.slow
@pytest.mark.parametrize("name", PREPARE_SCRIPTS)
def test_every_flag_value_the_parser_takes_runs_or_is_one_line(name, shakespeare_text, tmp_path, capsys, monkeypatch):
    """As for the configs: each accepted value of a prepare script's flag, in a real run on 20 kB of text."""
    if name not in PREPARE_BASE:
        pytest.skip(f"prepare/{name}.py {NO_QUICK_RUN[name]}; its flags are checked in the fast test")
    monkeypatch.setattr(sys, "argv", [name])
    monkeypatch.delenv("GPT_DEBUG", raising=False)
    text, chats = tmp_path / "input.txt", tmp_path / "chats.jsonl"
    text.write_text(shakespeare_text[:20_000])
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": line},
                                                      {"role": "assistant", "content": line[::-1]}]}) + "\n"
                             for line in shakespeare_text[:20_000].splitlines() if line))
    main = prepare_module(name).main
    flags = [f for f in prepare_flags(name, monkeypatch) if f["store"]]
    base = {k: v.format(text=text, chats=chats) if v is not None else v for k, v in PREPARE_BASE[name].items()}
    cases = []
    with monkeypatch.context() as patch:  # what the parser takes, as for the configs
        patch.setattr(cli.ArgumentParser, "parse_args", parse_then_stop)
        usual = accepted_or_refused(main, [f"{k}={v}" if v is not None else k for k, v in base.items()])
        for flag in flags:
            for value in (VALUES if flag["type"] in (int, float) or flag["choices"] else ("-1", "empty")):
                changed = {**base, flag["flag"]: VALUES[value][0]}
                argv = [f"{k}={v}" if v is not None else k for k, v in changed.items()]
                try:
                    parsed = accepted_or_refused(main, argv)
                except cli.UserError:
                    continue
                dest = flag["flag"].lstrip("-")
                if getattr(parsed, dest) != getattr(usual, dest):
                    cases.append((flag["flag"], value, argv))
    failures, lines = [], []
    for i, (flag, value, argv) in enumerate(cases):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        monkeypatch.chdir(folder)
        line = outcome(capsys, main, argv)
        lines.append(f"{name} {flag}={VALUES[value][0]}: {line or 'ran'}")
        if line is not None and (flag not in line or written(folder)):
            failures.append((flag, value, line, written(folder)))
    print("\n".join(lines))
    assert cases and not failures, failures
