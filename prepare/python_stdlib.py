"""Prepare the offline quick-start corpus: the running Python's own standard library source.

    python prepare/python_stdlib.py                       # a 1,024-id bpe into data/python_stdlib/
    python prepare/python_stdlib.py --tokenizer byte      # UTF-8 bytes (no rustbpe needed)
    python prepare/python_stdlib.py --tokenizer gpt2 --out_dir data/python_stdlib_gpt2
    python prepare/python_stdlib.py --tokenizer bpe --vocab_size 4096 --out_dir data/python_stdlib_bpe4k

Every .py file under sysconfig.get_paths()["stdlib"] except those in site-packages, dist-packages
and test/tests/idle_test folders (about 800 files, 12 MB for CPython 3.11) is one document, read
when this runs, so nothing is downloaded. About 10% of the files go to val.bin (seeded choice, no
file cut in two). The file list is sorted, so the same Python gives the same dataset; a different
Python version gives a different one. Undecodable bytes, if any, become U+FFFD.

The default tokenizer is the quick start's: a byte-level BPE of 1,024 ids learned here from the
training files (rustbpe, in the extras .[dev] and .[bpe]). In the quick start's 100 seconds it beat
byte tokens and a 4,096-id bpe in val bits per byte (README, "Your own tokenizer").
"""

import importlib.util
import sys

from smallgpt import cli
from smallgpt.errors import UserError
from smallgpt.prepare import HelpFormatter, add_bpe_arguments, bpe_options, prepare_dataset, print_summary, stdlib_files
from smallgpt.tokenizer import KINDS

QUICK_START_VOCAB = 1024  # the default bpe's ids: the best of byte, 1,024 and 4,096 in the quick start
def main(argv=None):
    parser = cli.ArgumentParser(prog="python prepare/python_stdlib.py",
                                description=__doc__.strip().splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--out_dir", default="data/python_stdlib", help="output folder (relative to the current folder)")
    parser.add_argument("--tokenizer", choices=KINDS, default=None,
                        help=f"byte, char, gpt2 (GPT-2's BPE) or bpe (trained here) (default: bpe with "
                             f"{QUICK_START_VOCAB} ids, or --tokenizer_from's)")
    parser.add_argument("--val_fraction", type=float, default=0.1, above=0, below=1, help="share of the files for val.bin")
    parser.add_argument("--seed", type=int, default=1337, at_least=0, help="seed of the choice of validation files")
    parser.add_argument("--workers", type=int, default=None, at_least=1, help="tokenizer threads (default: all cores)")
    add_bpe_arguments(parser)
    args = parser.parse_args(argv)
    files = stdlib_files()
    version = ".".join(map(str, sys.version_info[:3]))
    tokenizer = args.tokenizer or (None if args.tokenizer_from else "bpe")
    if tokenizer == "bpe" and args.vocab_size is None:
        args.vocab_size = QUICK_START_VOCAB
    if not args.tokenizer and tokenizer == "bpe" and importlib.util.find_spec("rustbpe") is None:
        raise UserError(f'the quick start\'s tokenizer is a {QUICK_START_VOCAB:,}-id bpe, trained with rustbpe: '
                        f'pip install -e ".[dev]" (or ".[bpe]"), or pass --tokenizer=byte for byte tokens')
    meta = prepare_dataset(files, args.out_dir, tokenizer, val_fraction=args.val_fraction, seed=args.seed,
                           workers=args.workers, errors="replace",
                           source=f"Python {version} standard library, {len(files)} .py files", **bpe_options(args))
    print_summary(meta, args.out_dir)
    return meta


if __name__ == "__main__":
    cli.run_main(main)
