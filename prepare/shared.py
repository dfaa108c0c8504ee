"""Fill the folder of downloaded files that the tests and offline GPT-2 BPE read (../shared), once, online.

    python prepare/shared.py                    # ../shared beside the checkout, where the tests look
    python prepare/shared.py --to ~/gpt-shared  # any other folder

It writes two files, skipping each one that is already there:

    data/tinyshakespeare.txt   tiny Shakespeare (1.1 MB), from the URL prepare/shakespeare_char.py uses
    tiktoken_cache/<name>      tiktoken's r50k_base file (GPT-2's BPE ranks, 0.8 MB) under the name
                               tiktoken's cache gives it (the SHA-1 of its URL): tiktoken itself
                               fetches it, with TIKTOKEN_CACHE_DIR pointed at this folder, and checks
                               its SHA-256

Then `python -m pytest` runs every test offline, and GPT-2 BPE (prepare/text.py --tokenizer gpt2,
sampling a GPT-2 BPE checkpoint) works offline with `export TIKTOKEN_CACHE_DIR=<folder>/tiktoken_cache`.

Each file is written under a temporary name in its own destination folder and renamed into place
only when complete, so an interrupted run leaves no partial file. Without the network the run stops
with one line naming what could not be fetched; what was fetched before stays.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from smallgpt import cli
from smallgpt.errors import UserError
from smallgpt.prepare import SHAKESPEARE_URL, HelpFormatter, download
from smallgpt.tokenizer import GPT2_ENCODING as ENCODING

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TO = REPO_ROOT.parent / "shared"  # where tests/conftest.py looks
SHAKESPEARE_FILE = Path("data") / "tinyshakespeare.txt"
TIKTOKEN_DIR = "tiktoken_cache"

# tiktoken runs in a child process, so that an encoding already loaded in this process (from another
# cache) cannot hide a missing file. argv: ENCODING MODE. MODE "check" only reads the cache folder:
# tiktoken's downloader is replaced by one that refuses (exit 3, CANNOT_CHECK, in a tiktoken without
# that function); "fetch" lets tiktoken download and write its cache file.
CANNOT_CHECK = 3
TIKTOKEN_CHILD = """
import sys
import tiktoken, tiktoken.load
if sys.argv[2] == "check":
    if not hasattr(tiktoken.load, "read_file"):
        sys.exit(3)
    def refuse(blobpath):
        raise ConnectionRefusedError("not in the cache: " + blobpath)
    tiktoken.load.read_file = refuse
tiktoken.get_encoding(sys.argv[1])
"""


def _tiktoken(cache_dir: Path, mode: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(cache_dir))
    try:
        return subprocess.run([sys.executable, "-c", TIKTOKEN_CHILD, ENCODING, mode], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess([], 1, "", f"TimeoutError: no answer within {timeout:g} s")


def _last_line(proc: subprocess.CompletedProcess, limit: int = 160) -> str:
    """The child's last line of stderr (its exception), shortened."""
    lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
    return lines[-1] if len(lines[-1]) <= limit else lines[-1][: limit - 3] + "..."


def fill_tiktoken_cache(cache_dir: Path, timeout: float) -> list[str]:
    """Make `cache_dir` a tiktoken cache that holds r50k_base; return the names of the files added.

    tiktoken fetches into a temporary folder beside `cache_dir`; its files are then renamed into
    `cache_dir`, and the result is read back offline.
    """
    if _tiktoken(cache_dir, "check", timeout).returncode == 0:
        return []  # (after CANNOT_CHECK the fetch below runs, into an empty folder)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiktoken-", dir=cache_dir.parent))
    try:
        print(f"fetching tiktoken's {ENCODING} file (TIKTOKEN_CACHE_DIR={cache_dir})")
        proc = _tiktoken(staging, "fetch", timeout)
        if proc.returncode != 0:
            raise UserError(
                f"tiktoken could not fetch its {ENCODING} file ({_last_line(proc)}); connect to the network and run "
                f"this again, or copy {TIKTOKEN_DIR}/ from a machine where it ran"
            )
        added = sorted(p.name for p in staging.iterdir() if p.is_file() and not p.name.endswith(".tmp"))
        cache_dir.mkdir(exist_ok=True)
        for name in added:
            os.replace(staging / name, cache_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    check = _tiktoken(cache_dir, "check", timeout)
    if check.returncode not in (0, CANNOT_CHECK):
        raise UserError(f"tiktoken fetched {ENCODING} but cannot read it back from {cache_dir} ({_last_line(check)}); "
                        "check that folder's permissions and free space, then run this again")
    return added


def main(argv=None):
    parser = cli.ArgumentParser(prog="python prepare/shared.py", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--to", default=str(DEFAULT_TO), help="the folder to fill (created if missing)")
    parser.add_argument("--url", default=SHAKESPEARE_URL, help="where to download tiny Shakespeare from")
    parser.add_argument("--timeout", type=float, default=120.0, above=0, help="seconds allowed for each download")
    args = parser.parse_args(argv)
    root = Path(args.to).expanduser().resolve()

    text = root / SHAKESPEARE_FILE
    if text.is_file() and text.stat().st_size > 0:
        print(f"{text}: already there")
    else:
        download(args.url, text, args.timeout,
                 hint=f"connect to the network and run this again, or put tiny Shakespeare at {text} by hand")
        print(f"{text}: {text.stat().st_size:,} bytes")

    cache = root / TIKTOKEN_DIR
    added = fill_tiktoken_cache(cache, args.timeout)
    print(f"{cache}: " + (f"wrote {', '.join(added)} ({ENCODING})" if added else f"{ENCODING} already there"))
    print(f"done: {root}")
    if root != DEFAULT_TO.resolve():
        print(f"(the tests read {DEFAULT_TO}, ../shared beside the checkout: copy or link this folder there)")
    print(f"for GPT-2 BPE offline: export TIKTOKEN_CACHE_DIR={cache}")


if __name__ == "__main__":
    cli.run_main(main)
