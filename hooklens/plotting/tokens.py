"""Readable token strings for plots: byte-level BPE and SentencePiece alike."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

_SENTENCEPIECE_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SENTENCEPIECE_SPACE = "▁"


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte → printable-character table (Ġ is a space, Ċ a newline).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to
    U+0100 onwards, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {chr(b): b for b in printable}
    shifted = (b for b in range(256) if b not in set(printable))
    for offset, byte in enumerate(shifted):
        table[chr(256 + offset)] = byte
    return table


def decode_token(token: str) -> str:
    """The text a vocabulary entry stands for.

    `"Ġthe"` → `" the"`, `"Ċ"` → `"\\n"`, `"âĢĻ"` → `"’"`, `"▁the"` → `" the"`,
    `"<0x0A>"` → `"\\n"`. A byte-level fragment of a multi-byte character shows its
    bytes (`"\\xe2\\x80"`); anything else is returned unchanged.
    """
    if _SENTENCEPIECE_BYTE.fullmatch(token):
        byte = int(token[3:5], 16)
        return chr(byte) if byte < 0x80 else token
    if _SENTENCEPIECE_SPACE in token:
        return token.replace(_SENTENCEPIECE_SPACE, " ")
    table = _byte_level_decoder()
    if not token or any(ch not in table for ch in token):
        return token
    raw = bytes(table[ch] for ch in token)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Latin-1 text that is not byte-level BPE reads as itself; BPE fragments as bytes.
        if all(ord(ch) < 256 for ch in token):
            return token
        return raw.decode("utf-8", errors="backslashreplace")


@dataclass
class TokenFormatter:
    """Format tokens for display in plots: decoded, whitespace made visible, truncated.

    Examples:
        >>> TokenFormatter().format("Ġinterpretability")
        '_inter…'
        >>> TokenFormatter(max_string_len=None).format("<0x0A>")
        '\\\\n'
    """

    ellipsis: str = "…"
    newline_replacement: str = "\\n"
    tab_replacement: str = "\\t"
    whitespace_replacement: str = "_"
    max_string_len: int | None = 7
    vectorized_format: np.vectorize = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.vectorized_format = np.vectorize(self.format, otypes=[object])

    def format(self, token: str | None) -> str:
        """Format one vocabulary entry (as from `tokenizer.convert_ids_to_tokens`, which
        gives `None` for an id outside the vocabulary: shown as `<unk>`)."""
        if not isinstance(token, str):
            return "<unk>"
        text = decode_token(token)
        text = text.replace("\n", self.newline_replacement).replace("\t", self.tab_replacement)
        text = text.replace(" ", self.whitespace_replacement)
        if self.max_string_len is not None and len(text) > self.max_string_len:
            text = text[: self.max_string_len - len(self.ellipsis)] + self.ellipsis
        return text

    def format_ids(self, tokenizer, ids: NDArray[np.int64]) -> NDArray[np.object_]:
        """Format an array of token ids of any shape with `tokenizer`'s vocabulary.

        Each distinct id is decoded once; the result is an object array whose entries
        share those strings (8 bytes per entry, however long the token).
        """
        ids = np.asarray(ids)
        unique, inverse = np.unique(ids.reshape(-1), return_inverse=True)
        tokens = tokenizer.convert_ids_to_tokens([int(i) for i in unique])
        formatted = np.array([self.format(token) for token in tokens] + [""], dtype=object)
        return formatted[:-1][inverse].reshape(ids.shape)
