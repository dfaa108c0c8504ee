"""Prepare tiny Shakespeare (1.1 MB, one document) for character-level training.

    python prepare/shakespeare_char.py                      # downloads, writes data/shakespeare_char/
    python prepare/shakespeare_char.py --input ../shared/data/tinyshakespeare.txt   # offline

Writes train.bin, val.bin and meta.json into --out_dir (default data/shakespeare_char, relative to
the current folder: run it from the repo root). The text is one document, so the split is the
last 10% of the characters, as nanoGPT's: 1,003,854 train and 111,540 val tokens, vocabulary 65.
Without --input the text is downloaded from Karpathy's char-rnn repository and cached as
input.txt in the output folder, so a second run needs no network.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cli
from cli import UserError
from prepare.shared import SHAKESPEARE_URL as URL
from prepare.shared import download
from prepare.text import HelpFormatter, prepare_dataset, print_summary


def fetch(out_dir: Path, url: str = URL, timeout: float = 20.0) -> Path:
    """out_dir/input.txt, downloaded from `url` unless it is already there."""
    cached = out_dir / "input.txt"
    if cached.is_file() and cached.stat().st_size > 0:
        return cached
    download(url, cached, timeout, hint="without network pass the text with --input PATH, "
                                        "e.g. --input ../shared/data/tinyshakespeare.txt")
    return cached


def run(argv, tokenizer: str, default_out: str, doc: str, script: str):
    parser = cli.ArgumentParser(prog=f"python prepare/{script}", description=doc.strip().splitlines()[0],
                                formatter_class=HelpFormatter)
    parser.add_argument("--input", default=None, help="a local copy of tinyshakespeare input.txt (no download)")
    parser.add_argument("--out_dir", default=default_out, help="output folder (relative to the current folder)")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of the tokens (the tail) for val.bin")
    parser.add_argument("--url", default=URL, help="where to download the text from when --input is not given")
    parser.add_argument("--timeout", type=float, default=20.0, help="download timeout in seconds")
    parser.add_argument("--workers", type=int, default=None, help="tokenizer threads (default: all cores)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    if args.input is not None:
        path = Path(args.input)
        if not path.is_file():
            raise UserError(f"--input {args.input} is not a file; give the path of tinyshakespeare input.txt")
    else:
        path = fetch(out_dir, args.url, args.timeout)
    meta = prepare_dataset([path], out_dir, tokenizer, val_fraction=args.val_fraction, workers=args.workers,
                           source=f"tiny Shakespeare ({path.name}), {tokenizer}")
    print_summary(meta, out_dir)
    return meta


def main(argv=None):
    return run(argv, "char", "data/shakespeare_char", __doc__, "shakespeare_char.py")


if __name__ == "__main__":
    cli.run_main(main)
