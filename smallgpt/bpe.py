"""Learn a byte-level BPE from training text: the training step of `prepare/text.py --tokenizer=bpe`.

    python prepare/text.py --input corpus/ --out_dir data/mine --tokenizer=bpe --vocab_size=4096
    python prepare/python_stdlib.py --tokenizer=bpe --vocab_size=4096

`train_bpe(texts, vocab_size, pattern)` returns a tokenizer.BPETokenizer: the 256 single bytes
(ranks 0..255) and the merges in the order they were learned, then <|endoftext|> as the last id, so
`vocab_size` counts every id the model will see. `texts` is an iterable of strings, consumed once;
prepare/text.py feeds it the training split only (never val), cut where the pre-split pattern cuts
anyway, and sampled down to `--bpe_sample_bytes` when the training text is bigger (see
smallgpt/prepare.py `_bpe_training_text`).

The trainer is rustbpe (pip install rustbpe, the optional extra `.[bpe]`): a Rust BPE trainer
whose merges are tiktoken ranks as they are. HF `tokenizers` trains the same kind of BPE (with a
Split pre-tokenizer on the same pattern); bench/bpe_trainers.py runs both on the same text, the same
documents in the same pieces: the same bytes per token on held-out files, rustbpe at about half the
CPU time and memory (docs/results.md, "Data preparation and tokenizers"). It counts the distinct pre-split pieces of the text in
memory (their number grows far slower than the text), then merges; strings are handed to it
`TRAIN_BUFFER` at a time, so the text itself is never held whole, and --bpe_sample_bytes bounds how
much is read. Encoding is tiktoken's (tokenizer.BPETokenizer), not the trainer's.
"""

import os

from smallgpt.errors import UserError
from smallgpt.tokenizer import BPETokenizer

DEFAULT_SAMPLE_BYTES = 200_000_000  # training text beyond this is sampled down to it (--bpe_sample_bytes)
DEFAULT_VOCAB = 4096  # --vocab_size when not given
MIN_VOCAB = 257  # the 256 single bytes and <|endoftext|>: no merges at all
MAX_VOCAB = 1 << 20  # far above any GPT's vocabulary (GPT-2's 50,257; GPT-4o's ~200k); the trainer counts in 32 bits
TRAIN_BUFFER = min(64, max(8, 2 * (os.cpu_count() or 1)))  # strings per batch the trainer splits in parallel


def require_rustbpe():
    """The rustbpe module, or a one-line error saying how to install it."""
    try:
        import rustbpe
    except ImportError:
        raise UserError('--tokenizer=bpe trains with the package rustbpe: pip install -e ".[bpe]" '
                        "(or pip install rustbpe)") from None
    return rustbpe


def check_vocab_size(vocab_size: int) -> None:
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise UserError(f"--vocab_size must be at least {MIN_VOCAB} (the 256 bytes and <|endoftext|>) and at most "
                        f"{MAX_VOCAB:,}, got {vocab_size}")


def train_bpe(texts, vocab_size: int, pattern: str) -> BPETokenizer:
    """A BPETokenizer of at most vocab_size ids learned from `texts` (fewer when the text runs out of pairs)."""
    check_vocab_size(vocab_size)
    rustbpe = require_rustbpe()
    BPETokenizer([bytes([b]) for b in range(256)], pattern, "--bpe_pattern")  # a bad regex: one line, before training
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(texts, vocab_size - 1, buffer_size=TRAIN_BUFFER, pattern=pattern)
    ranked = sorted(trainer.get_mergeable_ranks(), key=lambda pair: pair[1])
    if [rank for _, rank in ranked] != list(range(len(ranked))) or len(ranked) < 256:
        raise UserError(f"rustbpe returned {len(ranked)} ranks that are not 0..{len(ranked) - 1}; "
                        "this rustbpe version is not supported (pip install -U rustbpe)")
    return BPETokenizer([token for token, _ in ranked], pattern)
