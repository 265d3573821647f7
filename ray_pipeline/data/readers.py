"""Readers for local files: CSV, JSONL, Parquet (sequence classification) and CoNLL (NER).

Every problem names the file and the line (or row) and says how to fix it; up to
``MAX_PROBLEMS`` are collected per file before giving up. Text files are UTF-8, with or
without a byte-order mark (``utf-8-sig``: spreadsheet programs write one).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ray_pipeline.data.examples import Examples, TextExamples, TokenExamples, tag_problem
from ray_pipeline.errors import ConfigError, Problem

MAX_PROBLEMS = 10
_DOCSTART = "-DOCSTART-"
_ENCODING = "utf-8-sig"
"""UTF-8; a leading byte-order mark is dropped (not read as part of the first column name)."""


class _Collector:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[Problem] = []

    def add(self, where: str, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(where=f"{self.path}:{where}", message=message))

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems, header=f"bad data file {self.path}")


def _records_csv(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding=_ENCODING, newline="") as handle:
        reader = csv.DictReader(handle)
        start = reader.line_num + 2  # header is line 1
        for row in reader:
            yield f"{start}", row
            start = reader.line_num + 1


def _records_jsonl(path: Path, out: _Collector) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding=_ENCODING) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                out.add(f"{number}", f"not valid JSON ({exc.msg}); each line must be one object")
                continue
            if not isinstance(record, dict):
                out.add(f"{number}", "each line must be a JSON object with the configured keys")
                continue
            yield f"{number}", record


def _records_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for number, record in enumerate(table.to_pylist(), start=1):
        yield f"row {number}", record


def read_text_file(
    path: Path, fmt: str, text_columns: list[str], label_column: str
) -> TextExamples:
    """Read a CSV, JSONL or Parquet file of texts and labels."""
    out = _Collector(path)
    _check_readable(path, out)
    records: Iterable[tuple[str, dict[str, Any]]]
    if fmt == "csv":
        records = _records_csv(path)
    elif fmt == "jsonl":
        records = _records_jsonl(path, out)
    else:
        records = _records_parquet(path)
    wanted = [*text_columns, label_column]
    texts, labels, origins = [], [], []
    try:
        for where, record in records:
            missing = [c for c in wanted if c not in record]
            if missing:
                have = ", ".join(map(str, record)) or "none"
                out.add(
                    where,
                    f"missing column(s) {', '.join(missing)} (columns found: {have}); "
                    "set data.text_columns / data.label_column to match the file",
                )
                if fmt != "jsonl":  # every row of a table has the same columns
                    break
                continue
            label = record[label_column]
            if label is None or str(label).strip() == "":
                out.add(where, f"empty {label_column!r}: every example needs a label")
                continue
            texts.append(tuple("" if record[c] is None else str(record[c]) for c in text_columns))
            labels.append(str(label).strip())
            origins.append(f"{path.name}:{where}")
    except (UnicodeDecodeError, csv.Error, OSError, ValueError) as exc:
        out.add("?", f"could not be read as {fmt} ({exc.__class__.__name__}: {exc})")
    if not labels and not out.problems:
        out.add("1", "holds no examples")
    out.raise_if_any()
    return TextExamples(tuple(texts), tuple(labels), tuple(origins))


def read_conll(path: Path) -> TokenExamples:
    """Read a CoNLL/IOB file: one token per line (token first, tag last), blank line between
    sentences; whitespace-only lines separate too and ``-DOCSTART-`` lines are skipped."""
    out = _Collector(path)
    _check_readable(path, out)
    words: list[tuple[str, ...]] = []
    tags: list[tuple[str, ...]] = []
    origins: list[str] = []
    sentence: list[tuple[str, str]] = []
    start = 0
    fields_expected: int | None = None

    def close() -> None:
        if sentence:
            words.append(tuple(w for w, _ in sentence))
            tags.append(tuple(t for _, t in sentence))
            origins.append(f"{path.name}:{start}")
            sentence.clear()

    for number, line in _lines(path, out):
        fields = line.split()
        if not fields:
            close()
            continue
        if fields[0] == _DOCSTART:
            close()
            continue
        if fields_expected is None:
            fields_expected = len(fields)
            if fields_expected < 2:
                out.add(f"{number}", "needs at least two fields: the token and its tag")
                break
        if len(fields) != fields_expected:
            out.add(
                f"{number}",
                f"has {len(fields)} field(s) but earlier lines have "
                f"{fields_expected}; separate token and tag by whitespace",
            )
            continue
        problem = tag_problem(fields[-1])
        if problem is not None:
            out.add(f"{number}", problem)
            continue
        if not sentence:
            start = number
        sentence.append((fields[0], fields[-1]))
    close()
    if not tags and not out.problems:
        out.add("1", "holds no sentences")
    out.raise_if_any()
    return TokenExamples(tuple(words), tuple(tags), tuple(origins))


def _lines(path: Path, out: _Collector) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line, decoded one at a time so that a line that is not
    UTF-8 is reported with its number (and skipped) instead of ending the read."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode(_ENCODING if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                byte = raw[exc.start]
                out.add(
                    f"{number}",
                    f"not UTF-8 text (byte 0x{byte:02x} at column {exc.start + 1}); save the "
                    "file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
                )


def _check_readable(path: Path, out: _Collector) -> None:
    if not path.is_file():
        out.add("", "file not found; check the path in the data config")
        out.raise_if_any()
    if path.stat().st_size == 0:
        out.add("1", "file is empty")
        out.raise_if_any()


def read_file(path: Path, fmt: str, text_columns: list[str], label_column: str) -> Examples:
    """Read one split file in ``fmt``."""
    if fmt == "conll":
        return read_conll(path)
    return read_text_file(path, fmt, text_columns, label_column)
