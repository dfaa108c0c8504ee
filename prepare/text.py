"""Turn text files into a training dataset: train.bin, val.bin and meta.json in one folder.

    python prepare/text.py --input notes/ --out_dir data/notes --tokenizer char
    python prepare/text.py --input 'corpus/**/*.jsonl.gz' --out_dir data/corpus --tokenizer gpt2
    python prepare/text.py --input code/ --out_dir data/code --tokenizer bpe --vocab_size 4096
    python prepare/text.py --input more/ --out_dir data/more --tokenizer_from data/code

The default tokenizer, gpt2 (GPT-2 BPE), needs tiktoken's r50k_base file: tiktoken downloads it once
into its cache; offline, set TIKTOKEN_CACHE_DIR to a folder holding it (`python prepare/shared.py`
makes one while online), or use --tokenizer char, byte or bpe, which need no file.

--tokenizer bpe learns a byte-level BPE of --vocab_size ids from the training documents (never
from val) with rustbpe (smallgpt/bpe.py), splitting text first with GPT-4's pattern (--bpe_pattern),
then tokenizes with it through tiktoken. Training text beyond --bpe_sample_bytes is sampled down to
it (seeded; a line says so). The ranks go to tokenizer.tiktoken beside train.bin (tiktoken's own
format); their hash, the pattern and <|endoftext|> go to meta.json. --tokenizer_from FOLDER reuses
the tokenizer of a dataset folder or of a run (its ckpt.pt), so a second corpus gets the same ids.

What it reads
  * files, folders (walked recursively, hidden files and the output folder skipped, `--include '*.md'`
    filters names) and
    shell-style globs ('**' matches folders at any depth); the file order is sorted and deterministic.
  * plain text (any suffix), `.jsonl` (one JSON object per line, the text in `--text_field`), and
    the gzip-compressed forms `.txt.gz` / `.jsonl.gz` (any `.gz`), decompressed as a stream.
  * each file, or each line of a .jsonl file, is one document; empty documents are skipped.
  * text must be UTF-8: `--errors strict` (default) refuses a file with undecodable bytes,
    `--errors replace` substitutes U+FFFD for them.

What it writes (see tokenizer.py for the meta.json keys)
  * the tokens of every document, in order, as raw little-endian uint16 (uint32 when the vocabulary
    has more than 65535 tokens) in train.bin and val.bin, and meta.json describing them.
  * gpt2 and bpe: each document is followed by <|endoftext|> (50256; a bpe's last id). char and
    byte: documents are simply concatenated, with no separator (their vocabularies have no
    end-of-text token).
  * validation split by document: a seeded hash of each document's index sends about
    `--val_fraction` of the documents to val.bin; no document is cut in two. When the corpus is too
    small for that (fewer than 10 / val_fraction documents, e.g. one Shakespeare file) the split is
    the last val_fraction of the token stream instead, as nanoGPT does. A bpe trained here splits
    such a corpus by characters instead (the last val_fraction of the text is val, tokenized on its
    own), so that what it learned from is exactly the train split.
  * outputs are written to temporary files in the output folder and renamed into place only when
    everything succeeded: a failed run leaves an earlier dataset there untouched.

How it runs: streaming (memory stays at tens of MB whatever the corpus size) and on every core, with
output identical to one worker. The engine is smallgpt/prepare.py (`prepare_dataset`), which
the other prepare scripts share.
"""

from smallgpt import cli
from smallgpt.prepare import HelpFormatter, add_bpe_arguments, bpe_options, prepare_dataset, print_summary
from smallgpt.tokenizer import KINDS


def main(argv=None):
    parser = cli.ArgumentParser(  # bad flags: one line, not usage
        prog="python prepare/text.py", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="files, folders (recursive) or glob patterns ('**' for any depth); .jsonl and .gz understood")
    parser.add_argument("--out_dir", required=True, help="folder for train.bin, val.bin and meta.json")
    parser.add_argument("--tokenizer", choices=KINDS, default=None,
                        help="char: distinct characters; byte: UTF-8 bytes; gpt2: tiktoken BPE with <|endoftext|> after "
                             "each document (needs tiktoken's r50k_base file: downloaded once, or TIKTOKEN_CACHE_DIR); "
                             "bpe: a byte-level BPE trained here on the training documents, <|endoftext|> after each "
                             "(needs rustbpe: the .[bpe] extra) (default: gpt2, or --tokenizer_from's)")
    add_bpe_arguments(parser)
    parser.add_argument("--val_fraction", type=float, default=0.1, above=0, below=1,
                        help="share of documents for val.bin (share of the token stream's tail when there are few documents)")
    parser.add_argument("--seed", type=int, default=1337, at_least=0, help="seed of the choice of validation documents")
    parser.add_argument("--include", default=None, metavar="GLOB",
                        help="only files in input folders whose name (or path below the folder) matches, e.g. '*.txt'")
    parser.add_argument("--text_field", default="text", help="the JSON field holding the text in .jsonl files")
    parser.add_argument("--workers", type=int, default=None, at_least=1,
                        help="tokenizer threads (default: all cores; the output does not depend on it)")
    parser.add_argument("--errors", choices=("strict", "replace"), default="strict",
                        help="undecodable (non-UTF-8) bytes: strict stops naming the file; replace substitutes U+FFFD")
    parser.add_argument("--max_tokens", type=int, default=None, at_least=1, at_most=10**15, help="stop at the first document end after this many tokens")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    meta = prepare_dataset(
        args.input, args.out_dir, args.tokenizer or (None if args.tokenizer_from else "gpt2"),
        val_fraction=args.val_fraction, seed=args.seed, workers=args.workers, include=args.include,
        text_field=args.text_field, errors=args.errors, max_tokens=args.max_tokens, progress=not args.quiet,
        **bpe_options(args),
    )
    print_summary(meta, args.out_dir)


if __name__ == "__main__":
    cli.run_main(main)
