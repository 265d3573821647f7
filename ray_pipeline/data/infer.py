"""What a data file holds, for ``ray-pipeline init``: its format, its task, and its text and
label columns, each choice with the reason. Files are read with the package's own readers
(``readers.py``, ``hub.py``'s ``datasets``); what cannot be decided is refused (exit 2) naming
the file and the flag that settles it."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from ray_pipeline.data import readers
from ray_pipeline.data.examples import tag_problem
from ray_pipeline.errors import ConfigError
from ray_pipeline.schema import DataConfig

FileFormat = Literal["csv", "jsonl", "parquet", "conll"]
TaskFlag = Literal["sequence", "token"]

SUFFIXES: dict[str, FileFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",  # what datasets' to_json writes: one object per line
    ".parquet": "parquet",
    ".pq": "parquet",
    ".conll": "conll",
    ".iob": "conll",
    ".iob2": "conll",
    ".bio": "conll",
}
"""File name endings -> format; ``.txt`` is CoNLL when its first token line looks like one."""

SAMPLE_ROWS = 5000
"""Rows read to choose the columns (the whole file is read later, by the run's own readers)."""

LABEL_NAMES = (
    "label", "labels", "category", "class", "intent", "target", "sentiment", "score", "y",
    "topic", "emotion", "rating", "stars", "label_text", "class_label",
)  # fmt: skip
TAG_NAMES = ("ner_tags", "tags", "ner", "labels", "label")
"""Columns of per-token tags in a Hugging Face dataset, most specific first."""
ID_NAMES = frozenset({"id", "idx", "index", "uid", "guid", "key"})
PAIRS = (
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("question", "passage"),
    ("query", "passage"),
    ("text_a", "text_b"),
    ("text1", "text2"),
    ("sentence_a", "sentence_b"),
)
"""Column names of sentence pairs, in their order (others: a shared stem ending 1/2 or a/b)."""
VALIDATION_SPLITS = ("validation", "valid", "dev", "val")
TASKS: dict[TaskFlag, str] = {
    "sequence": "sequence_classification",
    "token": "token_classification",
}
COLUMN_FIX = "pass --text-column NAME (and --text-pair-column NAME2 for sentence pairs)"


@dataclass(frozen=True)
class DataFlags:
    """What ``ray-pipeline init`` was told about the data (None: infer it)."""

    train: Path
    validation: Path | None = None
    test: Path | None = None
    format: FileFormat | None = None
    task: TaskFlag | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None


@dataclass(frozen=True)
class DataGuess:
    """The data section init writes, and why each of its choices was made."""

    data: DataConfig
    why: dict[str, str]
    """Why each inferred key (``format``, ``task``, ``text_columns``, ...) has its value."""


@dataclass(frozen=True)
class Column:
    """What the sampled values of one column look like."""

    name: str
    filled: int
    distinct: int
    mean_chars: float
    numeric: bool
    spaced: float
    """Share of the values with whitespace inside: free text has it, labels and ids rarely."""
    nested: bool
    """Lists or mappings (a Hugging Face token or tag column)."""
    once: tuple[str, ...] = ()
    """Values that occur only once (the first few; none looked for in a sample of a file)."""

    @property
    def text_like(self) -> bool:
        return not self.numeric and not self.nested and self.spaced >= 0.5

    def label_like(self, rows: int) -> bool:
        """Few distinct values, each repeated: at least 2, at most half the rows (and 1,000)."""
        return not self.nested and 2 <= self.distinct <= min(1000, max(2, rows // 2))

    def describe(self) -> str:
        return f"{self.distinct:,} distinct values, mean {self.mean_chars:.0f} characters"


def column_stats(name: str, values: Sequence[Any], whole: bool = False) -> Column:
    """Describe one column from its values (empty strings and None count as missing);
    ``whole``: the values are all of the file's, so values seen once occur once."""
    filled = [v for v in values if v is not None and str(v).strip() != ""]
    nested = any(isinstance(v, list | tuple | dict) for v in filled)
    texts = [str(v) for v in filled]
    counts = Counter(texts) if whole and not nested else Counter[str]()
    return Column(
        name=name,
        filled=len(filled),
        distinct=len(set(texts)),
        mean_chars=sum(map(len, texts)) / len(texts) if texts else 0.0,
        numeric=bool(texts) and not nested and all(_is_number(v) for v in filled),
        spaced=sum(1 for t in texts if len(t.split()) > 1) / len(texts) if texts else 0.0,
        nested=nested,
        once=tuple(sorted(v for v, n in counts.items() if n == 1)[:5]),
    )


def _is_number(value: Any) -> bool:
    if isinstance(value, bool | int | float):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def infer_file(flags: DataFlags) -> DataGuess:
    """The data section for the file ``flags.train`` (and the other splits' files), or
    ConfigError (exit 2) naming the file and the flag to pass."""
    fmt, how = detect_format(flags.train, flags.format)
    for flag, path in (("--validation", flags.validation), ("--test", flags.test)):
        if path is not None and detect_format(path, flags.format)[0] != fmt:
            raise ConfigError.at(flag, f"{path} is not {fmt} like {flags.train}: give one format")
    task = "token_classification" if fmt == "conll" else "sequence_classification"
    if flags.task is not None and TASKS[flags.task] != task:
        raise ConfigError.at(
            "--task",
            f"{flags.train} is {fmt}, which holds {_holds(fmt)}; token classification reads "
            "CoNLL files or a Hugging Face dataset directory, sequence classification "
            "CSV, JSONL or Parquet: drop --task, or convert the file",
        )
    files: dict[str, Any] = {"train_file": flags.train, "validation_file": flags.validation}
    files["test_file"] = flags.test
    why = {"format": how, "task": f"{fmt} files hold {_holds(fmt)}"}
    labels: int | None = None
    rows = 0
    if fmt == "conll":
        _no_column_flags(flags)
    else:
        columns = read_columns(flags.train, fmt)
        text, label, chosen = choose_columns(columns, flags, str(flags.train))
        files.update(text_columns=text, label_column=label)
        why.update(chosen)
        found = next(c for c in columns if c.name == label)
        labels, rows = found.distinct, found.filled
    if flags.test is None:
        files["test_size"], why["test_size"] = carved_test(labels, rows, str(flags.train))
    return DataGuess(DataConfig(task=task, format=fmt, **files), why)


def _no_column_flags(flags: DataFlags) -> None:
    given = [f for f, v in _column_flags(flags).items() if v is not None]
    if given:
        raise ConfigError.at(
            given[0],
            f"{flags.train} is CoNLL: no named columns (the token is a line's first field, its "
            "tag the last); drop the flag",
        )


def carved_test(labels: int | None, rows: int, source: str) -> tuple[float, str]:
    """``data.test_size`` (and why) when the test set is carved out of train: the default, or
    more when there are so many labels that a stratified share would miss some (it needs an
    example of each). ``labels`` None: token classification (not stratified)."""
    default: float = DataConfig.model_fields["test_size"].default
    # draws.held_out (as train_test_split) holds out ceil(share x rows): exactly one row per
    # label at most, not one more
    needed = math.ceil(1e4 * (labels - 0.5) / rows) / 1e4 if labels and rows else 0.0
    share = max(default, needed)
    if share > 0.5:
        raise ConfigError.at(
            source,
            f"{labels} labels in {rows} rows: too few rows to hold out a test set with an "
            "example of every label; pass --test FILE, or add rows",
        )
    why = f"no test file: {share:.0%} of train is held out as the test set"
    return share, why + (f" (one example of each of {labels} labels)" if share > default else "")


def _holds(fmt: str) -> str:
    return "one tag per token" if fmt == "conll" else "one label per row"


def _column_flags(flags: DataFlags) -> dict[str, str | None]:
    return {
        "--text-column": flags.text_column,
        "--text-pair-column": flags.text_pair_column,
        "--label-column": flags.label_column,
    }


def detect_format(path: Path, given: FileFormat | None) -> tuple[FileFormat, str]:
    """(format, why) of a data file: ``--format``, else its name, else a CoNLL-looking .txt."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise ConfigError.at(str(path), f"{what}; give a data file (csv, jsonl, parquet, conll)")
    if given is not None:
        return given, "--format"
    suffix = path.suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix], f"the file name ends in {suffix}"
    if suffix == ".txt" and _looks_like_conll(path):
        return "conll", "lines of whitespace-separated fields ending in IOB tags"
    known = ", ".join(SUFFIXES)
    raise ConfigError.at(
        str(path),
        f"cannot tell the format from {path.name!r} (known endings: {known}); pass --format "
        "csv|jsonl|parquet|conll, or save the file as one of these (CSV is comma-separated)",
    )


def _looks_like_conll(path: Path) -> bool:
    """The first token line of the file has two fields or more and ends in an IOB tag."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in islice(handle, 100):
            fields = line.split()
            if fields and fields[0] != "-DOCSTART-":
                return len(fields) >= 2 and tag_problem(fields[-1]) is None
    return False


def read_columns(path: Path, fmt: FileFormat) -> list[Column]:
    """The columns of a CSV, JSONL or Parquet file, described from its first rows."""
    out = readers._Collector(path)
    readers._check_readable(path, out)
    records: Iterator[tuple[str, dict[str, Any]]]
    if fmt == "csv":
        records = readers._records_csv(path)
    elif fmt == "jsonl":
        records = readers._records_jsonl(path, out)
    else:
        records = readers._records_parquet(path)
    try:
        rows = [record for _, record in islice(records, SAMPLE_ROWS + 1)]
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        out.add("?", f"could not be read as {fmt} ({exc.__class__.__name__}: {exc})")
        rows = []
    out.raise_if_any()
    names = list(dict.fromkeys(k for row in rows for k in row if isinstance(k, str)))
    if not rows or not names:
        raise ConfigError.at(str(path), "holds no rows of data; give a file with examples")
    whole = len(rows) <= SAMPLE_ROWS
    return [
        column_stats(name, [row.get(name) for row in rows[:SAMPLE_ROWS]], whole) for name in names
    ]


def choose_columns(
    columns: list[Column], flags: DataFlags, source: str
) -> tuple[list[str], str, dict[str, str]]:
    """(text columns, label column, why for each): the flags where given, else inferred."""
    rows = max(c.filled for c in columns)
    by_name = {c.name: c for c in columns}
    for flag, name in _column_flags(flags).items():
        if name is not None and name not in by_name:
            have = ", ".join(by_name)
            raise ConfigError.at(flag, f"{source} has no column {name!r} (columns: {have})")
    label, why_label = _label(columns, flags.label_column, rows, source)
    rest = [c for c in columns if c.name != label.name]
    text, why_text = _text(rest, flags, label.name, source)
    return [c.name for c in text], label.name, {"label_column": why_label, "text_columns": why_text}


def _label(columns: list[Column], flag: str | None, rows: int, source: str) -> tuple[Column, str]:
    by_name = {c.name: c for c in columns}
    if flag is not None:
        return _usable(by_name[flag], source), "--label-column"
    named = [c for c in columns if c.name.lower() in LABEL_NAMES]
    if len(named) > 1:
        named = [c for c in named if c.label_like(rows)] or named
    if len(named) == 1:
        found = _usable(named[0], source)
        return found, f"named like a label ({found.describe()})"
    few = [c for c in columns if c.label_like(rows) and not c.text_like]
    if len(named) > 1 or len(few) > 1:
        several = ", ".join(f"{c.name} ({c.distinct:,} values)" for c in (named or few))
        raise ConfigError.at(
            source, f"several columns could be the label: {several}; pass --label-column NAME"
        )
    if not few:
        raise ConfigError.at(
            source,
            "no column looks like a label (one with a few values, each repeated over the rows; "
            f"columns: {', '.join(by_name)}); pass --label-column NAME",
        )
    found = _usable(few[0], source)
    return found, f"the only column with few values ({found.describe()})"


def _usable(label: Column, source: str) -> Column:
    """The label column, unless it holds one value, or a label with a single example."""
    if label.distinct < 2:
        raise ConfigError.at(
            source,
            f"label column {label.name!r} holds {label.distinct} value(s) in its first "
            f"{label.filled:,} rows; a classifier needs two or more: pass --label-column NAME "
            "(the column of labels), or add examples of other labels",
        )
    if label.once:
        raise ConfigError.at(
            source,
            f"{label.name} {', '.join(map(repr, label.once))} occur(s) once: each label needs "
            "two examples or more (some are held out to score trials and to test); add "
            "examples, drop those rows, or pass --label-column NAME",
        )
    return label


def _text(
    rest: list[Column], flags: DataFlags, label: str, source: str
) -> tuple[list[Column], str]:
    by_name = {c.name: c for c in rest}
    if flags.text_pair_column is not None and flags.text_column is None:
        raise ConfigError.at("--text-pair-column", "needs --text-column (the pair's first text)")
    if flags.text_column is not None:
        names = [flags.text_column, *([flags.text_pair_column] if flags.text_pair_column else [])]
        clash = [n for n in names if n not in by_name]
        if clash or len(set(names)) < len(names):
            raise ConfigError.at(
                "--text-column",
                f"{', '.join(names)}: text columns must differ from each other and from the "
                f"label column {label!r}",
            )
        flagged = "--text-column --text-pair-column" if len(names) > 1 else "--text-column"
        return [by_name[n] for n in names], flagged
    texts = [c for c in rest if c.text_like]
    if not texts:  # single words: any column that is neither numbers nor an id
        texts = [c for c in rest if not (c.numeric or c.nested or c.name.lower() in ID_NAMES)]
    if len(texts) == 1:
        found = texts[0]
        return texts, f"the only column of text ({found.describe()})"
    pair = _pair(texts)
    if pair is not None:
        a, b = pair
        return [a, b], "a sentence pair (named as one)"
    if not texts:
        raise ConfigError.at(source, f"no column holds text; {COLUMN_FIX}")
    several = ", ".join(c.name for c in texts)
    raise ConfigError.at(source, f"several columns could be the text ({several}); {COLUMN_FIX}")


def _pair(texts: list[Column]) -> tuple[Column, Column] | None:
    """The two columns in pair order when they are the only candidates and named as a pair."""
    if len(texts) != 2:
        return None
    a, b = texts
    names = (a.name.lower(), b.name.lower())
    if names in PAIRS:
        return a, b
    if names[::-1] in PAIRS:
        return b, a
    ends = re.compile(r"^(.*?)[_ -]?([12ab])$")
    match_a, match_b = ends.match(names[0]), ends.match(names[1])
    if match_a and match_b and match_a[1] == match_b[1] and match_a[2] != match_b[2]:
        return (a, b) if match_a[2] < match_b[2] else (b, a)
    return None
