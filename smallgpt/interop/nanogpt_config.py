"""nanoGPT's Python config files, read with `ast` and never executed; what their keys mean here.

    python train.py ../nanoGPT/config/train_shakespeare_char.py --device=cpu --compile=False
    values, read, lines = evaluate_file("my_config.py")  # {name: value} of its assignments; names read later;
                                                         # {name: the line that assigned it last}

nanoGPT's configurator exec()s a config file, so a config can run anything. Here `cli.read_overrides`
hands a `*.py` file to `read_config`, which parses it and evaluates only this subset itself:

    name = EXPR                          (also a = b = EXPR, name += EXPR, a docstring, `pass`)
    EXPR: an int, float or string literal, True, False, None; a name assigned earlier in the file;
          unary - or +; binary + - * / // % ** on those
    import time, time.time(), str(EXPR), int(EXPR), float(EXPR)
          the one import and the only calls: nanoGPT's own finetune_shakespeare.py names its wandb
          run 'ft-' + str(time.time()); the import binds nothing and runs nothing

Anything else (any other import or call, attribute access, indexing, comprehensions, lambdas,
f-strings, statements other than assignments) is refused with one line "FILE:LINE: <construct> is
not allowed in a config", and nothing of the file is used. The work is bounded, in memory and so in
time: a file over 1 MB is refused; ints stay within 2**128 and strings within 10,000 characters,
checked before an operation is computed (`10**10**10` and `'x' * 10**9` are refused at once, never
evaluated); all the strings the file makes add up to at most 1,000,000 characters (a megabyte of
`a = s + s` lines would otherwise hold gigabytes); `'...' % x` (string formatting, unbounded) is
refused. Going over a bound is one line naming the file and line; so are an unknown key and a value
of the wrong type.

What the names mean (`read_config`):
  * Our keys keep nanoGPT's names (`batch_size`, `gradient_accumulation_steps`, `n_layer`,
    `init_from = 'gpt2-xl'`, `dataset`, `wandb_*`, `compile = False`, ...): such a name sets that key.
  * nanoGPT keys with no equivalent here (`backend`) and keys of the other nanoGPT script (a training
    config given to sample.py) are named in one line and ignored.
  * A name that is neither ours nor nanoGPT's is an error naming the closest key, unless a later line
    of the file reads it (a helper variable, as `n = 8` in `gradient_accumulation_steps = 5 * n`).
  * A nanoGPT config overrides nanoGPT's defaults, not ours, so a training config is laid over
    nanoGPT's train.py defaults (`TRAIN_DEFAULTS`: bias=False, nanoGPT's exact GELU, warmup_iters=2000,
    dataset='openwebtext', ...) and then the file and the command line; the defaults that differ
    from ours are named in one line. The model's keys among them are left out when the weights come
    from elsewhere (init_from = resume, gpt2*, a run), as nanoGPT takes the model from there.

    python -m pytest tests/test_nanogpt_config.py -q
"""

import ast
import math
import operator
import os
import time
from pathlib import Path

from smallgpt.errors import UserError

MAX_FILE_BYTES = 1 << 20
MAX_INT_BITS = 128
MAX_STR_CHARS = 10_000
MAX_MADE_CHARS = 1_000_000  # every string the file makes, together
ALLOWED = "only assignments of literals and arithmetic"

# nanoGPT's train.py defaults (its module globals), as our keys and values: a nanoGPT training config
# overrides these. `mlp` is not a nanoGPT key: its model always uses the exact (erf) GELU.
TRAIN_DEFAULTS = {
    "out_dir": "out", "eval_interval": 2000, "log_interval": 1, "eval_iters": 200, "eval_only": False,
    "always_save_checkpoint": True, "init_from": "scratch", "wandb_log": False, "wandb_project": "owt",
    "wandb_run_name": "gpt2", "dataset": "openwebtext", "gradient_accumulation_steps": 5 * 8, "batch_size": 12,
    "block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768, "dropout": 0.0, "bias": False,
    "mlp": "gelu_exact", "learning_rate": 6e-4, "max_iters": 600000, "weight_decay": 1e-1, "beta1": 0.9,
    "beta2": 0.95, "grad_clip": 1.0, "decay_lr": True, "warmup_iters": 2000, "lr_decay_iters": 600000,
    "min_lr": 6e-5,
}
MODEL_KEYS = ("block_size", "n_layer", "n_head", "n_embd", "bias", "mlp")  # the shape nanoGPT takes from weights
# nanoGPT's sample.py defaults that differ from ours (we print one sample unless asked)
SAMPLE_DEFAULTS = {"num_samples": 10}
DEFAULTS = {"train": TRAIN_DEFAULTS, "sample": SAMPLE_DEFAULTS}
# every key nanoGPT's train.py and sample.py read, with what to say where we have no such key
NANOGPT_KEYS = {**{k: "" for k in TRAIN_DEFAULTS if k != "mlp"},
                "device": "", "dtype": "", "compile": "", "start": "", "num_samples": "", "max_new_tokens": "",
                "temperature": "", "top_k": "", "seed": "",
                "backend": "the process group's backend follows the device here: NCCL on GPUs, gloo on CPUs"}
# nanoGPT values spelled differently here
VALUE_MAP = {("sample", "init_from", "resume"): ""}  # sample.py reads --out_dir unless init_from names weights


def note(text: str, log=None) -> None:
    """One informational line from the first process (before any process group exists)."""
    if os.environ.get("RANK", "0") == "0":
        (log or (lambda line: print(line, flush=True)))(text)


# ----------------------------------------------------------------------------- the evaluator

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_CASTS = {"str": str, "int": int, "float": float}
_CONSTRUCTS = {
    ast.Attribute: "attribute access", ast.Subscript: "indexing", ast.Lambda: "a lambda",
    ast.ListComp: "a comprehension", ast.SetComp: "a comprehension", ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a generator expression", ast.List: "a list", ast.Tuple: "a tuple", ast.Dict: "a dict",
    ast.Set: "a set", ast.JoinedStr: "an f-string", ast.BoolOp: "and/or", ast.Compare: "a comparison",
    ast.IfExp: "a conditional expression", ast.NamedExpr: "an assignment expression", ast.Starred: "unpacking",
    ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
    ast.FunctionDef: "a function definition", ast.AsyncFunctionDef: "a function definition",
    ast.ClassDef: "a class definition", ast.If: "an if statement", ast.For: "a loop", ast.AsyncFor: "a loop",
    ast.While: "a loop", ast.With: "a with statement", ast.AsyncWith: "a with statement", ast.Try: "a try statement",
    ast.Raise: "raise", ast.Assert: "assert", ast.Delete: "del", ast.Global: "global", ast.Nonlocal: "nonlocal",
    ast.Return: "return", ast.Break: "break", ast.Continue: "continue",
}


def construct(node: ast.AST) -> str:
    """What a node is, in words, for the refusal."""
    if isinstance(node, ast.Call):
        callee = node.func.id if isinstance(node.func, ast.Name) else \
            node.func.attr if isinstance(node.func, ast.Attribute) else ""
        return f"a call to {callee}()" if callee else "a call"
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        module = node.module if isinstance(node, ast.ImportFrom) else ", ".join(a.name for a in node.names)
        return f"an import of {module}"
    if isinstance(node, ast.Attribute):
        return f"attribute access (.{node.attr})"
    if isinstance(node, ast.Expr):
        return construct(node.value) if not isinstance(node.value, ast.Constant) else "an expression statement"
    if isinstance(node, ast.Constant):
        return f"the literal {repr(node.value)[:40]}"
    for kind, words in _CONSTRUCTS.items():
        if isinstance(node, kind):
            return words
    return f"{type(node).__name__}"


class _Evaluator:
    """Evaluates the allowed subset of one file (see the module docstring), bounded in size."""

    def __init__(self, path: str):
        self.path = path
        self.names: dict[str, object] = {}  # assigned so far, in order
        self.lines: dict[str, int] = {}  # the line that assigned each name last
        self.read: set[str] = set()  # names a later expression read
        self.time_imported = False
        self.made_chars = 0  # characters of every string made so far
        self.target = ""  # the name the statement being evaluated assigns, for the errors

    def refuse(self, node: ast.AST, what: str | None = None):
        self.fail(node, f"{what or construct(node)} is not allowed in a config ({ALLOWED})")

    def fail(self, node: ast.AST, why: str):
        raise UserError(f"{self.path}:{getattr(node, 'lineno', '?')}: {self.target and self.target + ': '}{why}")

    def statement(self, stmt: ast.stmt) -> None:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
        self.target = ", ".join(t.id for t in targets if isinstance(t, ast.Name))
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            return  # a docstring or a bare string: a comment
        if isinstance(stmt, ast.Pass):
            return
        if isinstance(stmt, ast.Import) and [(a.name, a.asname) for a in stmt.names] == [("time", None)]:
            self.time_imported = True
            return
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if not isinstance(target, ast.Name):
                    self.refuse(target, f"assigning to {construct(target)}")
            value = self.value(stmt.value)
            for target in stmt.targets:
                self.names[target.id], self.lines[target.id] = value, stmt.lineno
            return
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            self.names[stmt.target.id] = self.value(stmt.value)  # the annotation is not evaluated
            self.lines[stmt.target.id] = stmt.lineno
            return
        if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
            current = self.name(stmt.target)
            self.names[stmt.target.id] = self.binary(stmt, stmt.op, current, self.value(stmt.value))
            self.lines[stmt.target.id] = stmt.lineno
            return
        self.refuse(stmt)

    def name(self, node: ast.Name):
        if node.id not in self.names:
            self.refuse(node, f"the name {node.id!r} (not assigned earlier in the file)")
        self.read.add(node.id)
        return self.names[node.id]

    def value(self, node: ast.expr):
        if isinstance(node, ast.Constant):
            if node.value is not None and type(node.value) not in (int, float, str, bool):
                self.refuse(node)
            return self.bounded(node, node.value)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            operand = self.value(node.operand)
            if not isinstance(operand, (int, float)):
                self.fail(node, f"a sign on {type(operand).__name__} {operand!r}")
            return _UNARY[type(node.op)](operand)
        if isinstance(node, ast.BinOp):
            return self.binary(node, node.op, self.value(node.left), self.value(node.right))
        if isinstance(node, ast.Call):
            return self.call(node)
        self.refuse(node)

    def call(self, node: ast.Call):
        """time.time() after `import time`; str(x), int(x), float(x) of one allowed value. Nothing else."""
        func = node.func
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            self.refuse(node)
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "time"
                and func.attr == "time" and self.time_imported and "time" not in self.names and not node.args):
            return time.time()
        if isinstance(func, ast.Name) and func.id in _CASTS and func.id not in self.names and len(node.args) == 1:
            argument = self.value(node.args[0])
            if argument is None or (func.id != "str" and not isinstance(argument, (int, float, str))):
                self.fail(node, f"{func.id}({argument!r}) is not a value")
            try:
                return self.bounded(node, _CASTS[func.id](argument))
            except (ValueError, OverflowError) as e:
                self.fail(node, f"{func.id}({argument!r}): {e}")
        self.refuse(node)

    def binary(self, node: ast.AST, op: ast.operator, a, b):
        if type(op) not in _BINARY:
            self.refuse(node, f"the operator {type(op).__name__}")
        if isinstance(op, ast.Mod) and isinstance(a, str):
            self.refuse(node, "string formatting with %")
        # |a| ** b has at least b * (bit_length(a) - 1) bits: refused before it is computed
        if isinstance(op, ast.Pow) and isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1 \
                and b * (abs(a).bit_length() - 1) > MAX_INT_BITS:
            self.fail(node, f"{a} ** {b} is too large for a config value (over 2**{MAX_INT_BITS})")
        if isinstance(op, ast.Mult):
            text, count = (a, b) if isinstance(a, str) else (b, a) if isinstance(b, str) else (None, None)
            if text is not None and isinstance(count, int) and len(text) * count > MAX_STR_CHARS:
                self.fail(node, f"a string of {len(text)} characters repeated {count} times is too long for a "
                                f"config value (over {MAX_STR_CHARS:,} characters)")
        try:
            return self.bounded(node, _BINARY[type(op)](a, b))
        except (TypeError, ZeroDivisionError, OverflowError, ValueError) as e:
            self.fail(node, f"cannot compute {type(a).__name__} {_SYMBOLS[type(op)]} {type(b).__name__}: {e}")

    def bounded(self, node: ast.AST, value):
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
            self.fail(node, f"an int over 2**{MAX_INT_BITS} is too large for a config value")
        if isinstance(value, str) and len(value) > MAX_STR_CHARS:
            self.fail(node, f"a string over {MAX_STR_CHARS:,} characters is too long for a config value")
        if isinstance(value, str):
            self.made_chars += len(value)
            if self.made_chars > MAX_MADE_CHARS:
                self.fail(node, f"the strings this file makes add up to over {MAX_MADE_CHARS:,} characters: "
                                f"too much for a config")
        if isinstance(value, complex):
            self.fail(node, "the result is a complex number, not a config value")
        return value


_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}


def evaluate_file(path: str) -> tuple[dict[str, object], set[str], dict[str, int]]:
    """({name: value} of the file's assignments, in order; the names a later line reads; {name: the line
    that assigned it last}), or UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {path} (check the path)")
    if p.stat().st_size > MAX_FILE_BYTES:
        raise UserError(f"{path} is over {MAX_FILE_BYTES >> 20} MB: not a config file")
    try:
        source = p.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    except (SyntaxError, ValueError) as e:  # ValueError: NUL bytes on older Pythons
        where = f"{path}:{e.lineno}" if getattr(e, "lineno", None) else str(path)
        raise UserError(f"{where}: invalid Python ({getattr(e, 'msg', None) or e})") from None
    except (RecursionError, MemoryError):  # the parser's own limits on nesting
        raise UserError(f"{path}: nested too deeply to be a config") from None
    evaluator = _Evaluator(str(path))
    try:
        for stmt in tree.body:
            evaluator.statement(stmt)
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a config") from None
    return evaluator.names, evaluator.read, evaluator.lines


# ----------------------------------------------------------------------------- names to keys

def read_config(path: str, keys: dict, script: str | None, unknown_key, log=None) -> tuple[dict, dict]:
    """The keys a nanoGPT config file sets, as raw values for cli.convert_value, and where each is set
    ("FILE:LINE", for its errors).

    keys: cli.config_keys of the script's config; script: "train", "sample" or None (which nanoGPT
    script's value spellings apply); unknown_key(name, where) makes the error for a name that is
    neither ours nor nanoGPT's. nanoGPT keys we do not have are named in one line (via `log`).
    """
    names, read, lines = evaluate_file(path)
    values, ignored = {}, []
    for name, value in names.items():
        if name in keys:
            value = VALUE_MAP.get((script, name, value), value) if isinstance(value, (str, int, float)) else value
            if keys[name].type is int and isinstance(value, float) and value.is_integer():
                value = int(value)  # max_iters = 5e3: Python treats it as a number, so do we
            values[name] = value
        elif name in NANOGPT_KEYS:
            ignored.append(f"{name}={value!r}" + (f" ({NANOGPT_KEYS[name]})" if NANOGPT_KEYS[name] else ""))
        elif name not in read:
            raise unknown_key(name, list(keys), f"in {path}:{lines[name]}")
    if ignored:
        note(f"{path}: nanoGPT keys that {script + '.py' if script else 'this script'} here has no equivalent for, "
             f"ignored: {'; '.join(ignored)}", log)
    return values, {name: f"{path}:{lines[name]}" for name in values}


def ignored_on_command_line(name: str, value: str, log=None) -> bool:
    """True (and a line naming it) for a nanoGPT key we have no equivalent for, as --backend=gloo."""
    if name not in NANOGPT_KEYS or not NANOGPT_KEYS[name]:
        return False
    note(f"--{name}={value} ignored: {NANOGPT_KEYS[name]}", log)
    return True


def defaults_under(script: str | None, keys: dict, given: dict, path: str, log=None) -> dict:
    """nanoGPT's defaults for `script` that a nanoGPT config file lies over, as our keys: those of them
    this script has, the model's left out when init_from does not build a fresh model. One line names
    the ones that differ from our defaults and that nothing given overrides."""
    defaults = {k: v for k, v in DEFAULTS.get(script, {}).items() if k in keys}
    if given.get("init_from", defaults.get("init_from", "scratch")) != "scratch":
        defaults = {k: v for k, v in defaults.items() if k not in MODEL_KEYS}
    differ = [f"{k}={v!r}" for k, v in defaults.items()
              if k not in given and (keys[k].default != v if not isinstance(v, float) else
                                     not math.isclose(keys[k].default, v))]
    if differ:
        note(f"{path} is a nanoGPT config: the keys it leaves out take nanoGPT's defaults, which differ from "
             f"ours for {', '.join(differ)}", log)
    return defaults
