"""Text for training and evaluating lenses: the train/held-out split, packed chunks, batches.

`chunk_and_tokenize` is tuned-lens's function of that name (same arguments, same
`(dataset, nats_to_bpb)` result) for code ported from it; `pack` streams token chunks
from any iterable of texts, which is what the training loop uses. A stable hash of each
text puts it in the train or the held-out split (`split_texts`), so the split never
depends on file order or sampling.

Where the texts come from (`load_texts`, `check_data_source`, `data_fingerprint`) is
`hooklens.training.sources`; those names are re-exported here.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from hooklens.errors import DataError, InputError, InputTypeError

# Re-exported: imported from here before the sources moved out.
from hooklens.training.sources import WIKIPEDIA_SUMMARIES as WIKIPEDIA_SUMMARIES
from hooklens.training.sources import check_data_source as check_data_source
from hooklens.training.sources import data_fingerprint as data_fingerprint
from hooklens.training.sources import load_texts as load_texts
from hooklens.training.sources import local_data_files as local_data_files
from hooklens.training.sources import wikipedia_summaries_path as wikipedia_summaries_path

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    DatasetT = TypeVar("DatasetT", Dataset, DatasetDict)
else:
    DatasetT = TypeVar("DatasetT")


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
        ... )
        >>> chunks[0]["input_ids"].shape
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
        _TokenizeWithEos(tokenizer, text_key, where),
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
        _RowsStartingInBatch(tokenized.with_format("arrow"), offsets, max_seq_len, n_rows),
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


# The two `map` functions below are module-level classes, not closures: with num_proc
# datasets pickles the function into each worker, and a class pickles by reference
# (a closure drags in whatever wraps it, e.g. a runtime type checker).


@dataclass(frozen=True)
class _TokenizeWithEos:
    """A `map` function from a batch of texts to their token ids, an EOS before each,
    with each text's token and byte counts."""

    tokenizer: Any
    text_key: str
    where: str

    def __call__(self, texts: list[Any], indices: list[int]) -> dict[str, list[Any]]:
        for text, index in zip(texts, indices, strict=True):
            if not isinstance(text, str):
                raise DataError(
                    f"row {index} of {self.where}: column {self.text_key!r} holds "
                    f"{text!r:.40} ({type(text).__name__}), not text; drop such rows first "
                    f"(dataset.filter(lambda row: isinstance(row[{self.text_key!r}], str))), "
                    "or pass text_key= a column of strings"
                )
        eos_id = self.tokenizer.eos_token_id
        eos_bytes = len(self.tokenizer.eos_token.encode("utf-8"))
        ids = self.tokenizer(
            texts, add_special_tokens=False, return_attention_mask=False, verbose=False
        )["input_ids"]
        return {
            "input_ids": [[eos_id, *row] for row in ids],
            "length": [len(row) + 1 for row in ids],
            "bytes": [len(text.encode("utf-8")) + eos_bytes for text in texts],
        }


@dataclass(frozen=True)
class _RowsStartingInBatch:
    """A `map` function from a batch of texts to the rows that start among its tokens.

    A row may run on into the texts after the batch; it reads them from `tokenized`
    (the tokenized texts in arrow format) directly, so rows are cut from the whole token
    stream, not from each batch.
    """

    tokenized: Dataset
    offsets: np.ndarray  # text i is tokens [offsets[i], offsets[i + 1])
    max_seq_len: int
    n_rows: int

    def __call__(self, _lengths: list[int], indices: list[int]) -> dict[str, list[Any]]:
        import pyarrow.compute as pc

        offsets, max_seq_len = self.offsets, self.max_seq_len
        n_tokens = int(offsets[-1])
        first_row = -(-int(offsets[indices[0]]) // max_seq_len)
        stop_row = min(self.n_rows, -(-int(offsets[indices[-1] + 1]) // max_seq_len))
        if first_row >= stop_row:
            return {"input_ids": []}
        start, stop = first_row * max_seq_len, min(stop_row * max_seq_len, n_tokens)
        first_text = int(np.searchsorted(offsets, start, side="right")) - 1
        stop_text = int(np.searchsorted(offsets, stop, side="left"))
        ids = pc.list_flatten(self.tokenized[first_text:stop_text]["input_ids"]).to_numpy()
        window = ids[start - offsets[first_text] : stop - offsets[first_text]]
        return {
            "input_ids": [window[i : i + max_seq_len] for i in range(0, len(window), max_seq_len)]
        }
