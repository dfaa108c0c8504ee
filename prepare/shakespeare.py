"""Prepare tiny Shakespeare (1.1 MB, one document) with GPT-2 BPE tokens.

    python prepare/shakespeare.py                      # downloads, writes data/shakespeare/
    python prepare/shakespeare.py --input ../shared/data/tinyshakespeare.txt   # offline

Writes train.bin, val.bin and meta.json into --out_dir (default data/shakespeare, relative to the
current folder: run it from the repo root). Tokens are tiktoken's r50k_base (GPT-2) with
<|endoftext|> at the end; offline, set TIKTOKEN_CACHE_DIR to a folder holding its cache file.
The split is the last 10% of the 338,026 tokens (304,223 train, 33,803 val). (nanoGPT splits the
characters first, so its counts, 301,966 / 36,059, differ slightly.) Without --input the text is
downloaded and cached as input.txt in the output folder.
"""

from smallgpt import cli
from smallgpt.prepare import shakespeare_main


def main(argv=None):
    return shakespeare_main(argv, "gpt2", "data/shakespeare", __doc__, "shakespeare.py")


if __name__ == "__main__":
    cli.run_main(main)
