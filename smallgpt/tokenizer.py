"""Tokenizers for the trainer: characters, UTF-8 bytes, GPT-2 BPE or a BPE of your own, behind one interface.

Every tokenizer has
    kind        "char", "byte", "gpt2" or "bpe" (the value stored in a dataset's meta.json)
    vocab_size  number of distinct token ids
    eot_token   id of the end-of-text token that separates documents, or None
    encode(text) -> list[int]
    decode(ids) -> str
and, for prepare/text.py, `encode_array(text) -> np.ndarray` (uint32) that skips the Python list.

    char  the sorted distinct characters of the training text; a character outside that vocabulary
          is an error (re-prepare the data, or use a prompt made of known characters).
    byte  the 256 UTF-8 byte values; any text can be encoded, decode replaces broken sequences.
    gpt2  tiktoken's "r50k_base" (the GPT-2 ranks, <|endoftext|> = 50256). Its ranks are not stored
          in datasets or checkpoints: tiktoken reads them from its cache file, downloaded once when
          online. Offline, set TIKTOKEN_CACHE_DIR to a folder holding that file; `python
          prepare/shared.py` makes one (../shared/tiktoken_cache) while online. Text is encoded as
          ordinary text: "<|endoftext|>" written in a document is not turned into the special token.
    bpe   a byte-level BPE trained on the dataset's own training text (prepare/text.py --tokenizer=bpe,
          see smallgpt/bpe.py), encoded by tiktoken: ids 0..N-2 are its ranks (the 256 single bytes
          and the merges, in the order they were learned), N-1 is <|endoftext|>. Its ranks are data,
          in tiktoken's own text format ("base64(token) rank" per line): the file tokenizer.tiktoken
          beside train.bin, whose SHA-256 meta.json records with the pre-split pattern and the
          special token. read_meta() checks the file and adds its text to the meta dict as
          meta["bpe"]["ranks"], so a checkpoint, which stores that dict, carries the whole tokenizer
          (sampling, eval and export need no dataset folder). Text is encoded as ordinary text, as gpt2.

Chat: `ChatTokenizer(base)` adds four turn markers, <|system|> <|user|> <|assistant|> <|end|>, as the
ids right after the base tokenizer's (a dataset made by prepare/chat.py records them in meta.json under
"chat"). Text is only ever text: encode() never yields a marker, whatever the text spells, so a user
typing "<|assistant|>" gets those characters, not the marker. `render_chat(tok, messages)` turns a
conversation into ids and the loss mask (1 on the assistant's content and the <|end|> closing it):
each message is <|role|> content <|end|>. prepare, training, chat.py, eval.py and the Hugging Face
export (its chat template) all render with it.

A dataset folder (train.bin, val.bin, meta.json) records its tokenizer in meta.json; use
`read_meta(folder)` and `tokenizer_from_meta(meta)` to get it back. Usage:

    tok = build_tokenizer("byte")
    ids = tok.encode("héllo")
    assert tok.decode(ids) == "héllo"
"""

import base64
import binascii
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from smallgpt.errors import UserError

KINDS = ("char", "byte", "gpt2", "bpe")
META_FORMAT_VERSION = 1
GPT2_ENCODING = "r50k_base"  # same ranks and special token as tiktoken's "gpt2", one cache file
EOT_TEXT = "<|endoftext|>"
BPE_RANKS_FILE = "tokenizer.tiktoken"  # a trained bpe's ranks, beside train.bin
# Pre-split patterns for a trained bpe: text is cut into pieces by the regex, and merges never cross
# a piece boundary. "gpt4": GPT-4's (cl100k_base) behaviour: letters with one leading non-letter,
# numbers in groups of at most 3 digits, punctuation runs with the line breaks that follow them,
# line breaks with the spaces before them, and whitespace runs that leave their last space to the
# next word. "gpt2": GPT-2's (r50k_base), where numbers are unbounded and a line break is no
# special case. Both make a lone "\n" between two non-space characters a piece of its own, the cut
# that prepare/text.py's parallel tokenization relies on (prepare/text.py _safe_cut).
BPE_PATTERNS = {
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
}
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"  # what prepare/shared.py fills by default


def token_dtype(vocab_size: int) -> str:
    """The dtype of a dataset's token files: "uint16" up to 65535 tokens, else "uint32".

    (65536 would still fit in uint16; it is kept at uint32 so the boundary is the one documented.)
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return "uint16" if vocab_size <= 65535 else "uint32"


class CharTokenizer:
    """One token per character: ids are positions in a list of distinct characters (sorted by prepare)."""

    kind = "char"
    eot_token = None

    def __init__(self, vocab: list[str]):
        if not vocab:
            raise UserError("the char tokenizer needs a non-empty vocabulary; re-prepare the dataset")
        if any(not isinstance(c, str) or len(c) != 1 for c in vocab):
            raise UserError("the char vocabulary must be a list of single characters; re-prepare the dataset")
        self.vocab = list(vocab)  # ids are positions in this list (prepare writes it sorted)
        if len(set(self.vocab)) != len(self.vocab):
            raise UserError("the char vocabulary has repeated characters; re-prepare the dataset")
        self.vocab_size = len(self.vocab)
        self.stoi = {c: i for i, c in enumerate(self.vocab)}
        # for encode_array: code points in increasing order and the id of each
        cps = np.array([ord(c) for c in self.vocab], dtype=np.uint32)
        order = np.argsort(cps, kind="stable")
        self._sorted_cps = cps[order]
        self._sorted_ids = order.astype(np.uint32)

    def _missing_error(self, text: str) -> UserError:
        missing = sorted(set(text) - self.stoi.keys())
        shown = ", ".join(repr(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
        return UserError(
            f"{len(missing)} character(s) not in this char vocabulary: {shown}; "
            "use a prompt made of characters from the training text, or re-prepare the data with them"
        )

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            raise self._missing_error(text) from None

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised encode: code points looked up in the sorted vocabulary."""
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        pos = np.minimum(np.searchsorted(self._sorted_cps, cps), self.vocab_size - 1)
        if not np.array_equal(self._sorted_cps[pos], cps):
            raise self._missing_error(text)
        return self._sorted_ids[pos]

    def decode(self, ids) -> str:
        try:
            return "".join(self.vocab[int(i)] for i in ids)
        except IndexError:
            raise UserError(f"token id out of range for a char vocabulary of {self.vocab_size}") from None


class ByteTokenizer:
    """One token per UTF-8 byte: vocabulary 256, nothing is ever unknown."""

    kind = "byte"
    vocab_size = 256
    eot_token = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", "surrogatepass"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8).astype(np.uint32)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class _TiktokenTokenizer:
    """encode/decode through a tiktoken.Encoding `enc` (gpt2 and bpe): special-token text is ordinary text."""

    enc = None

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        # Same tokens as encode_ordinary (special-token text is ordinary text), without a list.
        try:
            return self.enc.encode_to_numpy(text, disallowed_special=())
        except UnicodeEncodeError:  # lone surrogates (e.g. from JSON escapes): as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return self.enc.encode_to_numpy(text, disallowed_special=())

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise UserError(f"token id {bad[0]} out of range for {self.kind} (vocab {self.vocab_size})")
        return self.enc.decode(ids, errors="replace")

    def token_bytes(self, token: int) -> bytes:
        """The bytes token id `token` stands for (the special token's text for <|endoftext|>)."""
        return self.enc.decode_single_token_bytes(token)


def _import_tiktoken(kind: str):
    try:
        import tiktoken
    except ImportError:
        raise UserError(f"the {kind} tokenizer needs tiktoken: pip install tiktoken") from None
    return tiktoken


class GPT2Tokenizer(_TiktokenTokenizer):
    """GPT-2 byte-pair encoding through tiktoken (r50k_base); documents end with <|endoftext|>."""

    kind = "gpt2"

    def __init__(self):
        tiktoken = _import_tiktoken(self.kind)
        try:
            self.enc = tiktoken.get_encoding(GPT2_ENCODING)
        except Exception as e:  # tiktoken raises requests/urllib/OSError-flavoured errors offline
            cache = SHARED_DIR / "tiktoken_cache"
            raise UserError(
                f"GPT-2 BPE needs tiktoken's {GPT2_ENCODING} file: it is not in {_tiktoken_cache()} and downloading "
                f"it failed ({type(e).__name__}). Get it while online with `python prepare/shared.py` (fills {cache}) "
                f"and set TIKTOKEN_CACHE_DIR={cache} (or any folder holding the file); a sampling or training run "
                "of GPT-2 BPE data needs it too, while new data can be prepared without it (--tokenizer=byte "
                "or --tokenizer=char)"
            ) from None
        self.vocab_size = self.enc.n_vocab  # 50257
        self.eot_token = self.enc.eot_token  # 50256


class BPETokenizer(_TiktokenTokenizer):
    """A byte-level BPE of our own: `tokens` in rank order (ids 0..len-1), then <|endoftext|>.

    pattern: the pre-split regex (BPE_PATTERNS holds the named ones). Documents end with <|endoftext|>.
    """

    kind = "bpe"

    def __init__(self, tokens: list[bytes], pattern: str, where: str = "the bpe tokenizer"):
        tiktoken = _import_tiktoken(self.kind)
        self.tokens = list(tokens)
        self.pattern = pattern
        self.eot_token = len(self.tokens)
        self.vocab_size = len(self.tokens) + 1
        try:
            self.enc = tiktoken.Encoding(name="smallgpt-bpe", pat_str=pattern,
                                         mergeable_ranks={tok: rank for rank, tok in enumerate(self.tokens)},
                                         special_tokens={EOT_TEXT: self.eot_token})
        except ValueError as e:  # the regex does not compile
            raise UserError(f"{where}: its pre-split pattern is not a valid regex ({str(e)[:120]}); "
                            f"re-prepare the dataset") from None

    def ranks_text(self) -> str:
        """The ranks in tiktoken's file format: "base64(token) rank" per line, in rank order."""
        return "".join(f"{base64.b64encode(tok).decode('ascii')} {rank}\n" for rank, tok in enumerate(self.tokens))


def parse_ranks(text: str, where: str) -> list[bytes]:
    """The tokens of a tiktoken ranks file's text, in rank order; a damaged file is a one-line UserError.

    The ranks must be 0, 1, 2, ... in order (as BPETokenizer.ranks_text writes them), the tokens
    distinct, and every single byte among them (so that any text can be encoded).
    """
    fix = "re-prepare the dataset (or copy the file back from the dataset it came from)"
    tokens = []
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        parts = line.split(" ")
        if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()):
            raise UserError(f"{where} line {lineno} is not \"base64 rank\" ({line[:40]!r}); the file is damaged: {fix}")
        try:
            token = base64.b64decode(parts[0], validate=True)
        except (binascii.Error, ValueError):
            raise UserError(f"{where} line {lineno}: {parts[0][:40]!r} is not base64; the file is damaged: "
                            f"{fix}") from None
        if int(parts[1]) != len(tokens) or not token:
            raise UserError(f"{where} line {lineno} has rank {parts[1]}, expected {len(tokens)}; the file is "
                            f"damaged: {fix}")
        tokens.append(token)
    if len(set(tokens)) != len(tokens):
        raise UserError(f"{where} lists a token twice; the file is damaged: {fix}")
    singles = set(tokens)
    missing = [b for b in range(256) if bytes([b]) not in singles]
    if missing:
        raise UserError(f"{where} lacks {len(missing)} of the 256 single bytes (e.g. {missing[0]}); the file is "
                        f"truncated or damaged: {fix}")
    return tokens


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tiktoken_cache() -> str:
    """Where tiktoken looks for its cache files (as tiktoken.load.read_file_cached decides)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return f"{var}={os.environ[var]}" if os.environ[var] else f"tiktoken's cache ({var} is empty: no cache)"
    return f"tiktoken's cache {os.path.join(tempfile.gettempdir(), 'data-gym-cache')} (TIKTOKEN_CACHE_DIR is not set)"


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, as Hugging Face's byte-level BPE files spell tokens.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, ...) are moved to
    code points 256 and up, in byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table, moved = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + moved)
            moved += 1
    return table


def build_tokenizer(kind: str, vocab: list[str] | None = None):
    """Make a tokenizer by name; "char" needs its vocabulary (a list of characters).

    A "bpe" tokenizer is trained (prepare/text.py --tokenizer=bpe) and read back with tokenizer_from_meta.
    """
    if kind == "char":
        if vocab is None:
            raise UserError("the char tokenizer needs a vocabulary; prepare a char dataset and use its meta.json")
        return CharTokenizer(vocab)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "bpe":
        raise UserError("a bpe tokenizer is trained on a corpus: prepare one with prepare/text.py --tokenizer=bpe "
                        "and read it back from the dataset's meta (tokenizer_from_meta)")
    raise UserError(f"unknown tokenizer {kind!r}; choose one of {', '.join(KINDS)}")


# ----------------------------------------------------------------------------- chat: turn markers and rendering

CHAT_ROLES = ("system", "user", "assistant")
END_OF_TURN = "<|end|>"
CHAT_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>", END_OF_TURN)  # a turn's start (by role), every turn's end


class ChatTokenizer:
    """A tokenizer plus the turn markers, as the ids right after its own: base.vocab_size + 0 .. + 3.

    encode() is the base tokenizer's, so text never becomes a marker; decode() spells a marker as its
    text. Everything else (vocab, tokens, token_bytes, ...) is the base tokenizer's.
    """

    def __init__(self, base):
        self.base = base
        self.kind, self.eot_token = base.kind, base.eot_token
        self.markers = {m: base.vocab_size + i for i, m in enumerate(CHAT_MARKERS)}
        self.vocab_size = base.vocab_size + len(CHAT_MARKERS)
        self.end_token = self.markers[END_OF_TURN]
        self.marker_names = {i: m for m, i in self.markers.items()}  # id -> spelling

    def __getattr__(self, name):  # what a chat tokenizer does not change is the base tokenizer's
        return getattr(self.base, name)

    def encode(self, text: str) -> list[int]:
        return self.base.encode(text)

    def encode_array(self, text: str) -> np.ndarray:
        return self.base.encode_array(text)

    def decode(self, ids) -> str:
        out, run = [], []
        for i in map(int, ids):
            if i in self.marker_names:
                out += [self.base.decode(run), self.marker_names[i]]
                run = []
            else:
                run.append(i)
        return "".join(out) + self.base.decode(run)


def special_spellings(tok) -> list[str]:
    """The texts that name a special token of `tok` (the markers, <|endoftext|>), longest first."""
    names = list(getattr(tok, "markers", {})) + ([EOT_TEXT] if tok.eot_token is not None else [])
    return sorted(names, key=len, reverse=True)


def encode_content(tok, text: str) -> list[int]:
    """A message's text as ids: always text. A special token's spelling in it ("<|assistant|>") is encoded
    as text on its own, apart from the text around it, which is what transformers' apply_chat_template
    does with sanitize_control_tokens=True (so an exported tokenizer gives these ids too)."""
    spellings = special_spellings(tok)
    if not any(s in text for s in spellings):
        return tok.encode(text)
    pieces = re.split("(" + "|".join(map(re.escape, spellings)) + ")", text)
    return [i for piece in pieces if piece for i in tok.encode(piece)]


def render_chat(tok: ChatTokenizer, messages: list[dict], add_generation_prompt: bool = False):
    """(ids, trained) of a conversation: each message as <|role|> content <|end|>; trained[i] is 1 where
    ids[i] is an answer's token (the assistant's content and the <|end|> closing it), the tokens a
    finetune learns to predict. add_generation_prompt appends <|assistant|>: the model answers next.
    messages: [{"role": "system" | "user" | "assistant", "content": str}, ...] (checked by the caller)."""
    ids, trained = [], []
    for message in messages:
        content = encode_content(tok, message["content"])
        answer = int(message["role"] == "assistant")
        ids += [tok.markers[f"<|{message['role']}|>"], *content, tok.end_token]
        trained += [0] + [answer] * (len(content) + 1)
    if add_generation_prompt:
        ids.append(tok.markers["<|assistant|>"])
        trained.append(0)
    return ids, trained


def chat_template() -> str:
    """render_chat as a Jinja chat template (Hugging Face's tokenizer_config.json "chat_template"), the
    answers inside {% generation %} so that return_assistant_tokens_mask gives render_chat's mask."""
    roles = "".join(f"{'if' if i == 0 else 'elif'} message['role'] == '{role}' %}}<|{role}|>{{%- "
                    for i, role in enumerate(CHAT_ROLES))
    return ("{%- for message in messages -%}{%- " + roles + "else %}{{ raise_exception('roles are "
            + ", ".join(CHAT_ROLES) + "') }}{%- endif -%}"
            "{%- if message['role'] == 'assistant' -%}{% generation %}{{ message['content'] }}" + END_OF_TURN
            + "{% endgeneration %}{%- else -%}{{ message['content'] }}" + END_OF_TURN + "{%- endif -%}"
            "{%- endfor -%}{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}")


def chat_markers(meta: dict) -> dict:
    """The turn markers a meta dict records ({} without them): {"<|system|>": id, ...}."""
    return (meta.get("chat") or {}).get("markers") or {}


def same_vocabulary(a: dict, b: dict, markers: bool = True) -> bool:
    """Whether two meta dicts (a dataset's, a checkpoint's) give token ids the same meaning (markers=False:
    the same but for the chat markers, which one may add after the other's ids)."""
    if a.get("tokenizer") != b.get("tokenizer") or (markers and chat_markers(a) != chat_markers(b)):
        return False
    if a.get("tokenizer") == "char":
        return a.get("vocab") == b.get("vocab")
    if a.get("tokenizer") == "bpe":  # the same ranks (by their hash), pattern and special tokens
        keys = ("ranks_sha256", "pattern", "special_tokens")
        return all((a.get("bpe") or {}).get(k) == (b.get("bpe") or {}).get(k) for k in keys)
    return True


def vocabulary_name(meta: dict) -> str:
    """A tokenizer in words, for messages: "the char tokenizer (vocab 65)", "the bpe tokenizer (vocab 4096,
    ranks 3f2a9c1e)" (the start of the ranks' SHA-256, which tells two bpe tokenizers apart)."""
    name = f"the {meta.get('tokenizer')} tokenizer (vocab {meta.get('vocab_size', '?')}"
    if meta.get("tokenizer") == "bpe":
        name += f", ranks {str((meta.get('bpe') or {}).get('ranks_sha256'))[:8]}"
    return name + (", with chat markers)" if chat_markers(meta) else ")")


def tokenizer_from_meta(meta: dict, where: str = "the dataset's meta"):
    """The tokenizer a dataset was prepared with, from its meta dict (read_meta's, or a checkpoint's).

    where: what holds the meta, for error messages (a checkpoint's path, say).
    """
    kind = meta.get("tokenizer")
    if kind == "bpe":
        tok = _bpe_from_meta(meta, where)
    else:
        tok = build_tokenizer(kind, meta.get("vocab"))
    if chat_markers(meta):
        tok = ChatTokenizer(tok)
        if chat_markers(meta) != tok.markers:
            raise UserError(f"{where}: its chat markers {chat_markers(meta)} should be {tok.markers} (the ids after "
                            f"the {kind} tokenizer's); re-prepare the dataset")
    if "vocab_size" in meta and meta["vocab_size"] != tok.vocab_size:
        raise UserError(
            f"meta.json says vocab_size {meta['vocab_size']} but the {kind} tokenizer has {tok.vocab_size}; "
            "re-prepare the dataset"
        )
    return tok


def _bpe_from_meta(meta: dict, where: str) -> BPETokenizer:
    bpe = meta.get("bpe")
    if not isinstance(bpe, dict) or not isinstance(bpe.get("ranks"), str) or not isinstance(bpe.get("pattern"), str):
        raise UserError(f"{where} names the bpe tokenizer but does not hold its ranks and pattern; read a dataset "
                        f"with read_meta(folder), which adds them from its {BPE_RANKS_FILE}")
    if sha256_text(bpe["ranks"]) != bpe.get("ranks_sha256"):
        raise UserError(f"{where}: the bpe ranks do not match their recorded SHA-256; they are damaged "
                        f"(re-prepare the dataset, or restore the checkpoint)")
    tok = BPETokenizer(parse_ranks(bpe["ranks"], f"{where} (bpe ranks)"), bpe["pattern"], where)
    if bpe.get("special_tokens") != {EOT_TEXT: tok.eot_token}:
        raise UserError(f"{where}: bpe special tokens {bpe.get('special_tokens')!r} should be "
                        f"{{{EOT_TEXT!r}: {tok.eot_token}}} for {tok.eot_token} ranks; re-prepare the dataset")
    return tok


def bpe_meta(tok: BPETokenizer) -> dict:
    """meta["bpe"] of a dataset tokenized with `tok`; its "ranks" go to tokenizer.tiktoken, not meta.json."""
    ranks = tok.ranks_text()
    return {"pattern": tok.pattern, "special_tokens": {EOT_TEXT: tok.eot_token}, "ranks_file": BPE_RANKS_FILE,
            "ranks_sha256": sha256_text(ranks), "ranks": ranks}


def make_meta(tokenizer, *, train_tokens: int = 0, val_tokens: int = 0, documents: dict | None = None,
              source: str = "", dtype: str | None = None) -> dict:
    """The meta.json dict of a dataset tokenized with `tokenizer` (the one place that writes one).

    dtype: the token files' dtype, by default the smallest that fits (token_dtype); `vocab` is
    stored for the char tokenizer only, the whole vocabulary in id order.
    """
    meta = {"format_version": META_FORMAT_VERSION, "tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
            "dtype": dtype or token_dtype(tokenizer.vocab_size), "train_tokens": int(train_tokens),
            "val_tokens": int(val_tokens), "eot_token": tokenizer.eot_token, "documents": documents or {},
            "source": source}
    base = getattr(tokenizer, "base", tokenizer)  # a ChatTokenizer's own tokenizer
    if tokenizer.kind == "char":
        meta["vocab"] = list(base.vocab)
    if tokenizer.kind == "bpe":
        meta["bpe"] = bpe_meta(base)
    if base is not tokenizer:
        meta["chat"] = {"markers": dict(tokenizer.markers)}
    return meta


def write_meta(folder, meta: dict) -> list[str]:
    """Write meta.json (and, for bpe, the ranks file it names) into folder; return the names written.

    meta.json is the dict without the ranks text, which goes to its own file.
    """
    folder = Path(folder)
    on_disk = dict(meta)
    names = []
    if meta.get("tokenizer") == "bpe":
        bpe = dict(meta["bpe"])
        (folder / bpe["ranks_file"]).write_text(bpe.pop("ranks"), encoding="utf-8", newline="")
        on_disk["bpe"] = bpe
        names.append(bpe["ranks_file"])
    (folder / "meta.json").write_text(json.dumps(on_disk) + "\n", encoding="utf-8")
    return names + ["meta.json"]


_META_TYPES = {
    "format_version": int,
    "tokenizer": str,
    "vocab_size": int,
    "dtype": str,
    "train_tokens": int,
    "val_tokens": int,
    "documents": dict,
    "source": str,
}


def validate_meta(meta, where: str = "meta.json") -> dict:
    """Check a meta.json dict's keys and types; raise UserError naming the first problem."""
    fix = "re-run the prepare script for this dataset"
    if not isinstance(meta, dict):
        raise UserError(f"{where} is not a JSON object; {fix}")
    for key, tp in _META_TYPES.items():
        if key not in meta:
            raise UserError(f"{where} lacks the key {key!r}; {fix}")
        value = meta[key]
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise UserError(f"{where}: {key!r} should be a {tp.__name__}, got {value!r}; {fix}")
    if meta["format_version"] != META_FORMAT_VERSION:
        raise UserError(f"{where} has format_version {meta['format_version']}, expected {META_FORMAT_VERSION}; {fix}")
    if meta["tokenizer"] not in KINDS:
        raise UserError(f"{where} names an unknown tokenizer {meta['tokenizer']!r}; {fix}")
    if meta["dtype"] not in ("uint16", "uint32") or meta["dtype"] != token_dtype(max(meta["vocab_size"], 1)):
        raise UserError(f"{where}: dtype {meta['dtype']!r} does not fit vocab_size {meta['vocab_size']}; {fix}")
    base = _validate_chat_meta(meta, where, fix)  # the tokenizer's own ids, before any chat markers
    if meta["tokenizer"] == "char":
        vocab = meta.get("vocab")
        if not isinstance(vocab, list) or len(vocab) != base:
            raise UserError(f"{where}: a char dataset needs 'vocab', a list of {base} characters; {fix}")
    if meta["tokenizer"] == "bpe":
        _validate_bpe_meta(meta, base, where, fix)
    eot = meta.get("eot_token")
    if eot is not None and (not isinstance(eot, int) or not 0 <= eot < meta["vocab_size"]):
        raise UserError(f"{where}: eot_token {eot!r} is not a token id; {fix}")
    return meta


def _validate_chat_meta(meta: dict, where: str, fix: str) -> int:
    """Check meta["chat"], if any: the markers are the ids after the tokenizer's. Returns the tokenizer's own ids."""
    chat = meta.get("chat")
    if chat is None:
        return meta["vocab_size"]
    base = meta["vocab_size"] - len(CHAT_MARKERS)
    if not isinstance(chat, dict) or chat.get("markers") != {m: base + i for i, m in enumerate(CHAT_MARKERS)}:
        raise UserError(f"{where}: 'chat' must hold the markers {', '.join(CHAT_MARKERS)} as the last "
                        f"{len(CHAT_MARKERS)} ids ({base}..{meta['vocab_size'] - 1}); {fix}")
    return base


def _validate_bpe_meta(meta: dict, base: int, where: str, fix: str) -> None:
    bpe = meta.get("bpe")
    types = {"pattern": str, "special_tokens": dict, "ranks_file": str, "ranks_sha256": str}
    if not isinstance(bpe, dict) or any(not isinstance(bpe.get(k), tp) for k, tp in types.items()):
        raise UserError(f"{where}: a bpe dataset needs 'bpe' with {', '.join(types)}; {fix}")
    if Path(bpe["ranks_file"]).name != bpe["ranks_file"] or bpe["ranks_file"] in ("", ".", ".."):
        raise UserError(f"{where}: bpe ranks_file {bpe['ranks_file']!r} must be a file name in the dataset "
                        f"folder; {fix}")
    if bpe["special_tokens"] != {EOT_TEXT: base - 1} or meta.get("eot_token") != base - 1:
        raise UserError(f"{where}: a bpe dataset's special token is {EOT_TEXT} = its last id before any chat "
                        f"markers ({base - 1}); {fix}")


def _read_bpe_ranks(folder: Path, meta: dict) -> None:
    """Add the ranks file's text to meta["bpe"]["ranks"] after checking it against meta.json."""
    path = folder / meta["bpe"]["ranks_file"]
    fix = "re-prepare the dataset (or copy the file back from the dataset it came from)"
    if not path.is_file():
        raise UserError(f"{path} not found: meta.json says the bpe tokenizer's ranks are there; {fix}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not text (tiktoken's ranks format); the file is damaged: {fix}") from None
    n_ranks = len(parse_ranks(text, str(path)))
    if n_ranks + 1 + len(chat_markers(meta)) != meta["vocab_size"]:
        raise UserError(f"{path} holds {n_ranks} ranks but meta.json says vocab_size {meta['vocab_size']} "
                        f"(ranks + {EOT_TEXT}{' + chat markers' if chat_markers(meta) else ''}); {fix}")
    if sha256_text(text) != meta["bpe"]["ranks_sha256"]:
        raise UserError(f"{path} does not match the SHA-256 meta.json records for it: the file is damaged or "
                        f"from another dataset; {fix}")
    meta["bpe"]["ranks"] = text


def read_meta(dataset_dir) -> dict:
    """Load and validate <dataset_dir>/meta.json; also check train.bin/val.bin sizes when present.

    For a bpe dataset the ranks file is checked too and its text added as meta["bpe"]["ranks"].
    """
    folder = Path(dataset_dir)
    path = folder / "meta.json"
    if not path.is_file():
        raise UserError(f"{path} not found; prepare the dataset first (e.g. python prepare/shakespeare_char.py)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt ({e}); re-run the prepare script for this dataset") from None
    validate_meta(meta, str(path))
    itemsize = np.dtype(meta["dtype"]).itemsize
    masked = "mask" in (meta.get("chat") or {})  # conversations (prepare/chat.py): a mask byte per token
    for split in ("train", "val"):
        files = [(folder / f"{split}.bin", itemsize, f"{meta['dtype']} tokens")]
        files += [(folder / f"{split}.mask.bin", 1, "tokens (a mask byte each)")] * masked
        for binfile, size, unit in files:
            if binfile.exists() and binfile.stat().st_size != meta[f"{split}_tokens"] * size:
                raise UserError(
                    f"{binfile} holds {binfile.stat().st_size} bytes but meta.json says "
                    f"{meta[f'{split}_tokens']} {unit}; the folder's files disagree: "
                    f"re-run the prepare script for this dataset"
                )
    if meta["tokenizer"] == "bpe":
        _read_bpe_ranks(folder, meta)
    return meta


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes of each token id's text (int64, indexed by id); the end-of-text token and the chat
    markers count 0."""
    markers = np.zeros(len(getattr(tokenizer, "markers", {})), dtype=np.int64)  # ids after the tokenizer's own
    tokenizer = getattr(tokenizer, "base", tokenizer)
    if tokenizer.kind == "byte":
        lengths = np.ones(256, dtype=np.int64)
    elif tokenizer.kind == "char":
        lengths = np.array([len(c.encode("utf-8", "surrogatepass")) for c in tokenizer.vocab], dtype=np.int64)
    else:  # BPE (gpt2, bpe): every token is a byte string (a piece of a character, sometimes)
        lengths = np.array([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=np.int64)
    if tokenizer.eot_token is not None:
        lengths[tokenizer.eot_token] = 0  # a separator between documents, not text
    return np.concatenate([lengths, markers])
