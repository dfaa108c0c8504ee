"""Prepare a slice of FineWeb (HuggingFaceFW/fineweb, sample-10BT) with GPT-2 BPE, streamed.

    pip install datasets      # optional extra: pip install -e '.[datasets]'
    python prepare/fineweb.py --max_tokens 100_000_000             # data/fineweb/, ~200 MB of uint16
    python prepare/fineweb.py --dataset Skylion007/openwebtext --config '' --max_documents 100000

Documents are streamed from the Hugging Face Hub (`datasets.load_dataset(..., streaming=True)`), so
nothing but the output is stored and memory stays bounded; they are tokenized in parallel by
prepare/text.py's pipeline with <|endoftext|> after each document. Stop early with
--max_documents and/or --max_tokens (the run ends at the first document end past the limit).
About --val_fraction of the documents go to val.bin (seeded, whole documents). Needs the network
and, offline, TIKTOKEN_CACHE_DIR set to a folder holding the r50k_base cache.
"""

import itertools

from smallgpt import cli
from smallgpt.errors import UserError
from smallgpt.prepare import HelpFormatter, prepare_dataset, print_summary


def _load_stream(dataset: str, config: str | None, split: str):
    try:
        import datasets
    except ImportError:
        raise UserError("prepare/fineweb.py needs the datasets package: pip install datasets") from None
    try:
        return datasets.load_dataset(dataset, name=config or None, split=split, streaming=True)
    except Exception as e:  # offline: ConnectionError, OSError, huggingface_hub errors ...
        raise UserError(
            f"could not open {dataset} ({config}) on the Hugging Face Hub ({type(e).__name__}: {str(e)[:120]}); "
            "check the network connection and the --dataset/--config names"
        ) from None


def documents(stream, text_field: str, max_documents: int | None):
    """The text of each streamed record; network failures mid-stream become a UserError."""
    records = iter(stream)
    if max_documents is not None:
        records = itertools.islice(records, max_documents)
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except Exception as e:
            raise UserError(f"streaming from the Hub failed ({type(e).__name__}: {str(e)[:120]}); "
                            "check the network connection and run again") from None
        if text_field not in record:
            raise UserError(f"records have no {text_field!r} field (fields: {', '.join(record)}); pass --text_field")
        yield record[text_field]


def main(argv=None):
    parser = cli.ArgumentParser(prog="python prepare/fineweb.py", description=__doc__.strip().splitlines()[0],
                                formatter_class=HelpFormatter)
    parser.add_argument("--dataset", default="HuggingFaceFW/fineweb", help="Hugging Face dataset name")
    parser.add_argument("--config", default="sample-10BT", allow_empty=True, help="dataset configuration ('' for none)")
    parser.add_argument("--split", default="train", help="dataset split to stream")
    parser.add_argument("--text_field", default="text", help="record field holding the text")
    parser.add_argument("--out_dir", default="data/fineweb", help="output folder (relative to the current folder)")
    parser.add_argument("--max_documents", type=int, default=None, at_least=1, at_most=10**15,
                        help="stop after this many documents")
    parser.add_argument("--max_tokens", type=int, default=None, at_least=1, at_most=10**15,
                        help="stop at the first document end past this many tokens")
    parser.add_argument("--val_fraction", type=float, default=0.001, above=0, below=1,
                        help="share of the documents for val.bin")
    parser.add_argument("--seed", type=int, default=1337, at_least=0, help="seed of the choice of validation documents")
    parser.add_argument("--workers", type=int, default=None, at_least=1, help="tokenizer threads (default: all cores)")
    args = parser.parse_args(argv)
    stream = _load_stream(args.dataset, args.config, args.split)
    source = f"{args.dataset} {args.config} ({args.split}), gpt2"
    meta = prepare_dataset(lambda: documents(stream, args.text_field, args.max_documents), args.out_dir, "gpt2",
                           val_fraction=args.val_fraction, seed=args.seed, workers=args.workers,
                           max_tokens=args.max_tokens, source=source)
    print_summary(meta, args.out_dir)
    return meta


if __name__ == "__main__":
    cli.run_main(main)
