"""Prepare tiny Shakespeare (1.1 MB, one document) for character-level training.

    python prepare/shakespeare_char.py                      # downloads, writes data/shakespeare_char/
    python prepare/shakespeare_char.py --input ../shared/data/tinyshakespeare.txt   # offline

Writes train.bin, val.bin and meta.json into --out_dir (default data/shakespeare_char, relative to
the current folder: run it from the repo root). The text is one document, so the split is the
last 10% of the characters, as nanoGPT's: 1,003,854 train and 111,540 val tokens, vocabulary 65.
Without --input the text is downloaded from Karpathy's char-rnn repository and cached as
input.txt in the output folder, so a second run needs no network.
"""

from smallgpt import cli
from smallgpt.prepare import shakespeare_main


def main(argv=None):
    return shakespeare_main(argv, "char", "data/shakespeare_char", __doc__, "shakespeare_char.py")


if __name__ == "__main__":
    cli.run_main(main)
