"""CLIP byte-level BPE tokenizer with IRRA's ``<|mask|>`` token (method.md 1.2).

The vocabulary is read from open_clip's shipped ``bpe_simple_vocab_16e6.txt.gz`` (located through
``importlib.util.find_spec("open_clip")`` without importing open_clip; the file is not vendored).
It is built as in CLIP: the 256 byte symbols, their 256 ``</w>`` (end-of-word) variants, then the
symbols made by merges 1..48894.

IRRA's change: the **last merge is dropped** and ``<|mask|>``, ``<|startoftext|>`` and
``<|endoftext|>`` are appended, so ``MASK_ID = 49405``, ``SOT_ID = 49406``, ``EOT_ID = 49407`` and
``VOCAB_SIZE = 49408`` (the same size as CLIP's embedding table). The mask token therefore reuses
the embedding row of the dropped merge. The dropped merge is also removed from the merge ranks, so
BPE can never produce its symbol: no text other than the literal ``<|mask|>`` ever encodes to
49405 (a word ending in "jekyll", which CLIP would finish with that merge, keeps two pieces).
``PAD_ID = 0`` (also the real token "!"; IRRA treats 0 as padding).

Pre-processing: ``ftfy.fix_text`` (when ftfy is importable; open_clip depends on it), HTML unescape
twice, whitespace collapsed, lowercase. The pre-tokenisation regex keeps the special strings atomic.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

import regex
import torch

try:
    import ftfy
except ImportError:  # pragma: no cover - ftfy ships with open_clip
    ftfy = None

__all__ = [
    "Tokenizer",
    "SOT_ID",
    "EOT_ID",
    "MASK_ID",
    "PAD_ID",
    "VOCAB_SIZE",
    "MASK_TOKEN",
    "SOT_TOKEN",
    "EOT_TOKEN",
    "bpe_vocab_path",
]

MASK_TOKEN = "<|mask|>"
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
MASK_ID = 49405
SOT_ID = 49406
EOT_ID = 49407
VOCAB_SIZE = 49408
PAD_ID = 0

_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = 49152 - 256 - 2  # merges 1..48894 of the file, as in CLIP
_END_OF_WORD = "</w>"

# Specials first (atomic), English contractions, letter runs, single digits, other symbol runs.
_PRETOKENIZE = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|<\|mask\|>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)


def bpe_vocab_path() -> Path:
    """Path of open_clip's BPE vocabulary file; a clear error when open_clip is absent."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the CLIP BPE vocabulary {_VOCAB_FILE} ships with open_clip, which is not installed; "
            "install open_clip_torch into this environment"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the open_clip installation lacks its BPE vocabulary; "
            "reinstall open_clip_torch"
        )
    return path


def _byte_symbols() -> dict[int, str]:
    """A reversible map from every byte to one printable character (CLIP/GPT-2 byte level).

    Printable, non-blank Latin-1 bytes stand for themselves; the other 68 bytes are given the
    characters 256, 257, ... in byte order, so BPE never sees whitespace or control characters.
    """
    keep = set(range(ord("!"), ord("~") + 1))
    keep |= set(range(ord("\xa1"), ord("\xac") + 1)) | set(range(ord("\xae"), ord("\xff") + 1))
    symbols: dict[int, str] = {}
    shifted = 0
    for byte in range(256):
        if byte in keep:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + shifted)
            shifted += 1
    return symbols


def _clean(text: str) -> str:
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class Tokenizer:
    """CLIP BPE + ``<|mask|>`` (IRRA ids); ``tokenizer(texts) -> LongTensor[B, context_length]``."""

    def __init__(self, context_length: int = 77, vocab_path: str | Path | None = None) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (SOT + EOT), got {context_length}")
        self.context_length = context_length
        path = Path(vocab_path) if vocab_path is not None else bpe_vocab_path()
        try:
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                lines = handle.read().split("\n")
        except OSError as err:
            raise FileNotFoundError(f"{path}: cannot read the BPE vocabulary ({err})") from err
        merges = [tuple(line.split()) for line in lines[1 : 1 + _NUM_MERGES]]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{path}: not a CLIP BPE merges file ({len(merges)} merges read)")
        merges = merges[:-1]  # IRRA: drop the last merge, its row becomes <|mask|>

        self.byte_symbols = _byte_symbols()
        self.byte_of_symbol = {s: b for b, s in self.byte_symbols.items()}
        base = sorted(self.byte_symbols.values(), key=ord)  # CLIP's order: kept bytes, then shifted
        vocab = base + [s + _END_OF_WORD for s in base] + ["".join(m) for m in merges]
        vocab += [MASK_TOKEN, SOT_TOKEN, EOT_TOKEN]
        if len(vocab) != VOCAB_SIZE:
            raise ValueError(f"{path}: built {len(vocab)} symbols, expected {VOCAB_SIZE}")
        self.encoder = {symbol: i for i, symbol in enumerate(vocab)}
        self.decoder = vocab
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        specials = (MASK_TOKEN, SOT_TOKEN, EOT_TOKEN)
        self._cache: dict[str, tuple[str, ...]] = {t: (t,) for t in specials}
        self.vocab_size = VOCAB_SIZE

    def _bpe(self, word: str) -> tuple[str, ...]:
        """Merge the byte symbols of one pre-token, lowest-rank pair first (cached)."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + _END_OF_WORD]
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, len(self.ranks)))
            if pair not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        result = tuple(parts)
        self._cache[word] = result
        return result

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT."""
        ids: list[int] = []
        for piece in _PRETOKENIZE.findall(_clean(text)):
            word = "".join(self.byte_symbols[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self._bpe(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (specials kept as their strings); for inspection, not round-trips."""
        symbols = "".join(self.decoder[int(i)] for i in ids)
        out = bytearray()
        for char in symbols.replace(_END_OF_WORD, " "):
            if char in self.byte_of_symbol:
                out.append(self.byte_of_symbol[char])
            else:
                out.extend(char.encode("utf-8"))
        return out.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """``[SOT] + ids + [EOT]`` per text; truncated to ``context_length`` with EOT kept last;
        right-padded with ``PAD_ID``: ``LongTensor[B, context_length]``."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [SOT_ID, *self.encode(text), EOT_ID]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = EOT_ID
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
