"""What generating text needs beyond model.py: decoding a sample token by token, and fast one-row matmuls on CPUs.

    from smallgpt.inference import SampleText, use_row_split
    text = SampleText(tokenizer, stop="\n\n", eot_token=tokenizer.eot_token)
    for token in tokens: print(text.push(token), end="")

`SampleText` turns a stream of token ids into text that is final: whole UTF-8 characters only, cut
at a stop text, ended by the end-of-text token. sample.py and chat.py stream with it. `use_row_split`
makes a built model's Linear layers compute a single row (decoding at batch 1) as a batched matmul of
row blocks, which some CPUs run on every thread where torch's matrix-vector product uses one;
`row_split_is_faster` times both on this machine, and sample.py takes whichever is faster.
"""

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

REPLACEMENT_CHAR = "\ufffd"  # what decoding puts where a UTF-8 character is cut short


class SampleText:
    """The text of one sample, built token by token: whole characters only, cut at the stop text.

    `push(token)` returns the text that became final with that token (possibly ""), so printing each
    return value streams the sample; `finish()` returns the rest. `text` is everything generated so
    far (without the stop text), `done` whether the sample has ended (stop text or end-of-text).
    """

    def __init__(self, tokenizer, stop: str = "", eot_token: int | None = None):
        self.tokenizer, self.stop, self.eot_token = tokenizer, stop, eot_token
        self.text = ""  # decoded so far; its first `emitted` characters have been returned
        self.emitted = 0
        self.pending: list[int] = []  # tokens whose text is not final yet (a split UTF-8 character)
        self.done = False

    def push(self, token: int) -> str:
        if self.done:
            return ""
        if token == self.eot_token:
            return self.finish()
        self.pending.append(token)
        tail = self.tokenizer.decode(self.pending)
        if tail.endswith(REPLACEMENT_CHAR):
            if len(self.pending) < 8:
                return ""  # most likely a character cut short: wait for its remaining bytes
            tail = self._commit_longest_whole_prefix()  # garbage bytes: do not wait forever
        else:
            self.pending = []
        return self._append(tail)

    def finish(self) -> str:
        """End the sample: decode what is left (broken bytes become U+FFFD) and return it."""
        if self.done:
            return ""
        tail = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        out = self._append(tail, final=True)
        self.done = True
        return out

    def _commit_longest_whole_prefix(self) -> str:
        # Decoding a prefix whose text does not end in U+FFFD ends on a character boundary, so its
        # text is exactly what decoding everything at once would give for those tokens.
        for cut in range(len(self.pending) - 1, 0, -1):
            head = self.tokenizer.decode(self.pending[:cut])
            if not head.endswith(REPLACEMENT_CHAR):
                self.pending = self.pending[cut:]
                return head
        return ""

    def _append(self, tail: str, final: bool = False) -> str:
        search_from = max(0, len(self.text) - len(self.stop) + 1)
        self.text += tail
        end = len(self.text)
        if self.stop:
            found = self.text.find(self.stop, search_from)
            if found >= 0:
                self.text = self.text[:found]
                self.done = True
                end = found
            elif not final:  # hold back an ending that may yet grow into the stop text
                for k in range(min(len(self.stop) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(self.stop[:k]):
                        end = len(self.text) - k
                        break
        out = self.text[self.emitted:end]
        self.emitted = end
        return out


# ----------------------------------------------------------------------------- one row on many CPU threads

def row_splits(x: torch.Tensor, weight: torch.Tensor) -> int:
    """Into how many row blocks to split `weight` for x @ weight.T; 0: use F.linear as it is.

    Only one row on a CPU (decoding at batch 1), on 2+ threads that divide the output rows, with a
    weight of at least ~128K entries: below that the threads cost more than they save.
    """
    splits = torch.get_num_threads()
    if x.device.type != "cpu" or x.numel() != x.size(-1) or splits < 2:
        return 0
    return splits if weight.numel() >= 1 << 17 and weight.size(0) % splits == 0 else 0


def row_split_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, splits: int) -> torch.Tensor:
    """F.linear(x, weight, bias) for one row x, computed as `splits` row blocks of the weight in one
    batched matmul. On some CPUs torch runs a matrix-vector product on one thread; the batched form
    uses every thread (where the BLAS threads the product already, it is slower: sample.py times both).
    Each output is still one row of the weight times x."""
    out_features, in_features = weight.shape
    blocks = weight.view(splits, out_features // splits, in_features)  # (S, out/S, in)
    y = torch.bmm(x.reshape(1, 1, -1).expand(splits, 1, -1), blocks.transpose(1, 2))  # (S, 1, out/S)
    y = y.view(x.shape[:-1] + (out_features,))
    return y if bias is None else y + bias


class RowSplitLinear(nn.Linear):
    """nn.Linear whose one-row calls on a CPU take row_split_linear (set on a built model by use_row_split)."""

    def forward(self, x):
        splits = row_splits(x, self.weight)
        return row_split_linear(x, self.weight, self.bias, splits) if splits else F.linear(x, self.weight, self.bias)


def use_row_split(model: nn.Module) -> None:
    """Make every nn.Linear of a built model a RowSplitLinear (same weights, same state dict)."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = RowSplitLinear


@torch.no_grad()
def row_split_is_faster(layer: nn.Linear, repeats: int = 50) -> bool:
    """Time one row through `layer` with F.linear and with the row split (on the current threads)."""
    x = torch.randn(1, layer.in_features, dtype=layer.weight.dtype)
    splits = row_splits(x, layer.weight)
    if not splits:
        return False
    paths = {True: lambda: row_split_linear(x, layer.weight, layer.bias, splits),
             False: lambda: F.linear(x, layer.weight, layer.bias)}
    timings = {}
    for split in (True, False, True, False):  # twice each, interleaved; the first rounds warm up
        start = time.perf_counter()
        for _ in range(repeats):
            paths[split]()
        timings[split] = time.perf_counter() - start
    return timings[True] < timings[False]
