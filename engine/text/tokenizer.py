"""CLIP's byte-level BPE tokenizer, as dino.txt's text encoder was trained with it.

The token ids must be exactly the official ones (dinov2/hub/text/tokenizer.py over OpenAI CLIP's
SimpleTokenizer): the text encoder pools the token at the position of the largest id, the end-of-text token, so a
single id off changes the embedding. The vocabulary is the MIT-licensed `bpe_simple_vocab_16e6.txt.gz` shipped
under assets/text/, so text search never needs the network.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
import zlib
from pathlib import Path

import torch

START, END = "<|startoftext|>", "<|endoftext|>"
N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48894 merges: 512 byte symbols + merges + 2 specials = 49408
VOCAB_SIZE = 49408
VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
# Contractions, runs of letters, single digits, runs of other non-space characters (CLIP's pre-tokenizer).
_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class VocabularyError(ValueError):
    """The BPE vocabulary file is missing or unreadable; the message names the file."""


def default_vocab_path() -> Path:
    """assets/text/ in a source checkout, or inside the PyInstaller bundle."""
    from engine.assets import assets_dir

    return assets_dir() / "text" / VOCAB_NAME


@functools.cache
def byte_symbols() -> dict[int, str]:
    """Byte -> printable character: printable Latin-1 bytes map to themselves, the other 68 to chr(256 + i).

    BPE then works on strings without whitespace or control characters, and any UTF-8 input is representable.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order (printable bytes first) is the order of the vocabulary's first 256 ids


def _read_merges(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise VocabularyError(f"{path}: the text vocabulary file is missing (it ships with Dinoscope as "
                              f"assets/text/{VOCAB_NAME}; reinstall, or pass vocab_path)")
    try:
        with gzip.open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise VocabularyError(f"{path}: not a readable gzip BPE vocabulary ({e})") from e
    lines = text.split("\n")[1 : N_MERGES + 1]  # line 0 is a version header
    merges = []
    for n, line in enumerate(lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise VocabularyError(f"{path}: line {n} is not a BPE merge ('{line[:40]}')")
        merges.append((parts[0], parts[1]))
    if len(merges) != N_MERGES:
        raise VocabularyError(f"{path}: has {len(merges)} merges, CLIP's vocabulary has {N_MERGES}")
    return merges


class Tokenizer:
    """Text -> (n, context_length) token ids, identical to dino.txt's official tokenizer."""

    def __init__(self, vocab_path: str | os.PathLike | None = None) -> None:
        import regex

        path = Path(vocab_path) if vocab_path is not None else default_vocab_path()
        merges = _read_merges(path)
        symbols = list(byte_symbols().values())
        words = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges] + [START, END]
        self.vocab: dict[str, int] = {w: i for i, w in enumerate(words)}
        self.ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges)}
        self.start_id, self.end_id = self.vocab[START], self.vocab[END]
        self._bytes = byte_symbols()
        self._split = regex.compile(_PATTERN, regex.IGNORECASE)
        self._space = regex.compile(r"\s+")
        self._cache: dict[str, tuple[str, ...]] = {}

    # ------------------------------------------------------------------------------------------- text -> ids
    def clean(self, text: str) -> str:
        """ftfy's repairs, HTML entities undone (twice, as CLIP does), whitespace collapsed, lower case."""
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return self._space.sub(" ", text).strip().lower()

    def _merge(self, word: str) -> tuple[str, ...]:
        """Apply the merges to one pre-token, lowest rank first; the last symbol carries the end-of-word mark."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, N_MERGES))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        out = tuple(parts)
        if len(self._cache) < 100_000:
            self._cache[word] = out
        return out

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without start/end tokens."""
        ids: list[int] = []
        for piece in self._split.findall(self.clean(text)):
            if piece in (START, END):  # written literally in the text: CLIP maps them to the special ids
                ids.append(self.vocab[piece])
                continue
            word = "".join(self._bytes[b] for b in piece.encode("utf-8"))
            ids.extend(self.vocab[p] for p in self._merge(word))
        return ids

    def decode(self, ids: list[int]) -> str:
        inverse = {v: k for k, v in self.vocab.items()}
        back = {c: b for b, c in self._bytes.items()}
        text = "".join(inverse[i] for i in ids if i not in (self.start_id, self.end_id))
        words = [bytes(back[c] for c in w).decode("utf-8", errors="replace") for w in text.split("</w>")]
        return " ".join(w for w in words if w)

    def tokenize(self, texts: str | list[str], context_length: int = 77) -> torch.LongTensor:
        """(len(texts), context_length) ids: start, BPE ids, end, zero padding.

        A text too long keeps its first context_length - 1 tokens and ends with the end token, as the official
        code does (`truncated` tells a caller which texts were cut).
        """
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > context_length:
                ids = [*ids[: context_length - 1], self.end_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def token_count(self, text: str) -> int:
        """Tokens the text needs including start and end; over the context length means it will be cut."""
        return len(self.encode(text)) + 2
