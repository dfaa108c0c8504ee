"""Make the offline finetuning example: conversations about the Python standard library's own function signatures.

    python prepare/python_stdlib.py            # first: the quick start's corpus and tokenizer (data/python_stdlib)
    python prepare/python_stdlib_chat.py       # conversations.jsonl, heldout.jsonl and the dataset in data/python_stdlib_chat

Every function and method definition in the standard library's .py files (the quick start's files,
read with ast: nothing is downloaded) with a short signature gives one two-turn conversation:

    user:      def dumps(obj, *, skipkeys=False, ensure_ascii=True):\\nWhat is this function called?
    assistant: dumps
    user:      What are its parameters?
    assistant: obj, skipkeys, ensure_ascii

What it teaches: to answer in turns and stop, and to read a signature it is shown (its name, then its
parameters in order without defaults, annotations or stars; "none" when it has none). Signatures are
deduplicated; a seeded ~5% of them go to heldout.jsonl and are never trained on, so eval.py's
exact-match on that file measures the skill on functions the finetune did not see. The rest are
prepared by smallgpt/conversations.py with the quick start's tokenizer (--tokenizer_from), so the
quick start's model (out-python-stdlib) can be finetuned on them: config/python_stdlib_chat.toml.
"""

import ast
import json
import warnings
from pathlib import Path

from smallgpt import cli
from smallgpt.conversations import prepare_conversations
from smallgpt.errors import UserError
from smallgpt.prepare import HelpFormatter, _is_val, stdlib_files

MAX_SIGNATURE = 72  # characters: short enough that a conversation fits the quick start's 128-token window
QUESTIONS = ("What is this function called?", "What are its parameters?")


def signatures(files) -> dict[str, tuple[str, list[str]]]:
    """{signature line: (function name, parameter names)} of every short def in the files, sorted."""
    found = {}
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences in old files
                tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue  # (the stdlib holds a few deliberately broken files)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [p.arg for p in (*a.posonlyargs, *a.args, a.vararg, *a.kwonlyargs, a.kwarg) if p]
                returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
                line = f"{'async ' * isinstance(node, ast.AsyncFunctionDef)}def {node.name}({ast.unparse(a)}){returns}:"
                if len(line) <= MAX_SIGNATURE and "\n" not in line:
                    found[line] = (node.name, params)
    return dict(sorted(found.items()))


def conversation(line: str, name: str, params: list[str]) -> dict:
    return {"messages": [{"role": "user", "content": f"{line}\n{QUESTIONS[0]}"},
                         {"role": "assistant", "content": name},
                         {"role": "user", "content": QUESTIONS[1]},
                         {"role": "assistant", "content": ", ".join(params) or "none"}]}


def main(argv=None):
    parser = cli.ArgumentParser(prog="python prepare/python_stdlib_chat.py", description=__doc__,
                                formatter_class=HelpFormatter)
    parser.add_argument("--out_dir", default="data/python_stdlib_chat", help="output folder")
    parser.add_argument("--tokenizer_from", default="data/python_stdlib",
                        help="the dataset folder or run whose tokenizer to use (the quick start's)")
    parser.add_argument("--heldout_fraction", type=float, default=0.05, help="share of signatures kept out for eval")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the held-out and val choices")
    args = parser.parse_args(argv)
    if not Path(args.tokenizer_from).exists():
        raise UserError(f"{args.tokenizer_from} not found: run python prepare/python_stdlib.py first (the quick "
                        f"start's tokenizer), or give --tokenizer_from")
    found = signatures(stdlib_files())
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = {"conversations.jsonl": [], "heldout.jsonl": []}
    for i, (line, (name, params)) in enumerate(found.items()):
        held = _is_val(args.seed + 1, i, args.heldout_fraction)
        lines["heldout.jsonl" if held else "conversations.jsonl"].append(json.dumps(conversation(line, name, params)))
    for name, rows in lines.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
        tmp.replace(out / name)
    meta = prepare_conversations([out / "conversations.jsonl"], out, tokenizer_from=args.tokenizer_from,
                                 val_fraction=0.05, seed=args.seed)
    print(f"wrote {out}: {len(lines['conversations.jsonl']):,} conversations ({meta['documents']['train']:,} train, "
          f"{meta['documents']['val']:,} val; {meta['train_tokens']:,} train tokens) and "
          f"{len(lines['heldout.jsonl']):,} held out in {out / 'heldout.jsonl'}")
    return meta


if __name__ == "__main__":
    cli.run_main(main)
