"""Turn conversations (JSONL, the chat format) into a finetuning dataset: tokens plus a loss mask.

    python prepare/chat.py --input chats.jsonl --out_dir data/chats --tokenizer_from out-python-stdlib
    python prepare/chat.py --input chats/ --out_dir data/chats --tokenizer gpt2      # a folder of .jsonl(.gz)
    python prepare/chat.py --input 'logs/*.jsonl.gz' --out_dir data/logs --tokenizer byte --skip_bad

One conversation per line: {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}]}.
Each message is rendered as <|role|> content <|end|> (smallgpt/tokenizer.py render_chat), the four
markers being special tokens after the tokenizer's own ids; text that spells a marker stays text.
Only the answers are trained on: the assistant's content and the <|end|> that closes it.

To finetune a run, give its tokenizer: --tokenizer_from RUN (its ckpt.pt) or the dataset folder it
trained on, so the ids mean what the model learned; the finetune adds the markers' rows to the model
(python train.py --init_from=RUN --dataset=DIR ...; config/python_stdlib_chat.toml is an example).

Writes into --out_dir: train.bin and val.bin (the tokens), train.mask.bin and val.mask.bin (a uint8 per
token: +1 trained on, +2 first token of a conversation) and meta.json ("chat" holds the markers and
counts). About --val_fraction of the conversations go to val (seeded, whole conversations). A bad
line stops with its file and line number; --skip_bad leaves bad lines out and counts them. The
output replaces the folder's dataset only once everything is written.
"""

from smallgpt import cli
from smallgpt.conversations import prepare_conversations
from smallgpt.prepare import HelpFormatter, add_bpe_arguments
from smallgpt.tokenizer import KINDS


def main(argv=None):
    parser = cli.ArgumentParser(prog="python prepare/chat.py", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="JSONL files (.jsonl, .jsonl.gz), folders holding them, or glob patterns")
    parser.add_argument("--out_dir", required=True, help="folder for train.bin, val.bin, their masks and meta.json")
    parser.add_argument("--tokenizer", choices=KINDS, default=None,
                        help="char, byte, gpt2 or bpe (trained here on the messages); or give --tokenizer_from")
    add_bpe_arguments(parser)
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of the conversations for val")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the choice of validation conversations")
    parser.add_argument("--skip_bad", action="store_true", help="leave bad lines out (counted) instead of stopping")
    args = parser.parse_args(argv)
    if args.tokenizer is None and args.tokenizer_from is None:
        parser.error("give --tokenizer_from RUN_OR_DATASET (a finetune: the model's own ids) or --tokenizer KIND")
    meta = prepare_conversations(args.input, args.out_dir, args.tokenizer, tokenizer_from=args.tokenizer_from,
                                 val_fraction=args.val_fraction, seed=args.seed, skip_bad=args.skip_bad,
                                 vocab_size=args.vocab_size, bpe_pattern=args.bpe_pattern,
                                 bpe_sample_bytes=args.bpe_sample_bytes)
    chat = meta["chat"]
    print(f"wrote {args.out_dir}: {meta['documents']['train']:,} train + {meta['documents']['val']:,} val "
          f"conversations, {meta['train_tokens']:,} + {meta['val_tokens']:,} tokens of which "
          f"{chat['trained_tokens']['train']:,} + {chat['trained_tokens']['val']:,} answer tokens "
          f"({meta['tokenizer']}, vocab {meta['vocab_size']:,} with the chat markers "
          f"{min(chat['markers'].values())}..{max(chat['markers'].values())})")
    return meta


if __name__ == "__main__":
    cli.run_main(main)
