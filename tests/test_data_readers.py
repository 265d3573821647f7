"""Reading every supported format, and the messages for bad files (file and line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_pipeline.data.examples import TextExamples
from ray_pipeline.data.readers import read_conll, read_file, read_text_file
from ray_pipeline.errors import ConfigError

ROWS: list[tuple[str, ...]] = [
    ("Crisp apples, sweet and fresh.", "great"),
    ("Stale bread, tasted of cardboard.", "other"),
    ('She said "wow", then bought two.', "great"),
]


def _write_csv(path: Path, rows: list[tuple[str, ...]], header: str = "review,score") -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header.split(","))
        writer.writerows(rows)
    return path


def test_csv(tmp_path: Path) -> None:
    ex = read_text_file(_write_csv(tmp_path / "a.csv", ROWS), "csv", ["review"], "score")
    assert ex.texts == tuple((text,) for text, _ in ROWS)  # quotes and commas kept
    assert ex.labels == ("great", "other", "great")
    assert ex.origins == ("a.csv:2", "a.csv:3", "a.csv:4")


def test_csv_multiline_field_keeps_line_numbers(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "m.csv", [("line one\nline two", "great"), ("next", "")])
    with pytest.raises(ConfigError) as exc:
        read_text_file(path, "csv", ["review"], "score")
    assert f"{path}:4: empty 'score'" in str(exc.value)  # the record after the 2-line one


def test_csv_sentence_pairs(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "p.csv", [("a", "b", "great")], header="first,second,score")
    ex = read_text_file(path, "csv", ["first", "second"], "score")
    assert ex.texts == (("a", "b"),)


def test_csv_missing_column_names_file_line_and_columns(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "a.csv", ROWS, header="text,score")
    with pytest.raises(ConfigError) as exc:
        read_text_file(path, "csv", ["review"], "score")
    text = str(exc.value)
    assert f"{path}:2: missing column(s) review (columns found: text, score)" in text
    assert "data.text_columns" in text
    assert exc.value.exit_code == 2


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(ConfigError, match="file is empty"):
        read_text_file(empty, "csv", ["review"], "score")
    header = tmp_path / "h.csv"
    header.write_text("review,score\n")
    with pytest.raises(ConfigError, match="holds no examples"):
        read_text_file(header, "csv", ["review"], "score")


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"review": t, "score": s}) for t, s in ROWS]
    path.write_text("\n".join([lines[0], "", *lines[1:]]) + "\n")
    ex = read_text_file(path, "jsonl", ["review"], "score")
    assert ex.labels == ("great", "other", "great")
    assert ex.origins == ("a.jsonl:1", "a.jsonl:3", "a.jsonl:4")


def test_jsonl_bad_lines_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    path.write_text(
        '{"review": "ok", "score": "great"}\n{"review": oops}\n[1, 2]\n{"review": "x"}\n'
    )
    with pytest.raises(ConfigError) as exc:
        read_text_file(path, "jsonl", ["review"], "score")
    text = str(exc.value)
    assert f"{path}:2: not valid JSON" in text
    assert f"{path}:3: each line must be a JSON object" in text
    assert f"{path}:4: missing column(s) score" in text


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    table = pa.table({"review": [t for t, _ in ROWS], "score": [s for _, s in ROWS]})
    pq.write_table(table, path)
    ex = read_file(path, "parquet", ["review"], "score")
    assert ex == TextExamples(
        texts=tuple((text,) for text, _ in ROWS),
        labels=("great", "other", "great"),
        origins=("a.parquet:row 1", "a.parquet:row 2", "a.parquet:row 3"),
    )
    with pytest.raises(ConfigError, match="row 1: missing column"):
        read_file(path, "parquet", ["text"], "score")


CONLL = """-DOCSTART- -X- -X- O

Ada NNP B-NP B-PER
visited VBD B-VP O
Paris NNP B-NP B-LOC
<SPACES>
The DT B-NP O
Acme NNP I-NP B-ORG
Corp NNP I-NP I-ORG
grew VBD B-VP O
\t
-DOCSTART- -X- -X- O
Lone NN B-NP O
""".replace("<SPACES>", "   ")  # a whitespace-only separator line


def test_conll_sentences_docstart_and_whitespace_separators(tmp_path: Path) -> None:
    path = tmp_path / "a.conll"
    path.write_text(CONLL)
    ex = read_conll(path)
    assert ex.words == (("Ada", "visited", "Paris"), ("The", "Acme", "Corp", "grew"), ("Lone",))
    assert ex.tags[1] == ("O", "B-ORG", "I-ORG", "O")
    assert ex.origins == ("a.conll:3", "a.conll:7", "a.conll:13")


def test_conll_two_column_files(tmp_path: Path) -> None:
    path = tmp_path / "b.conll"
    path.write_text("Ada B-PER\nsmiled O\n\nBo B-PER\n")
    assert read_conll(path).tags == (("B-PER", "O"), ("B-PER",))


def test_conll_wrong_field_count_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "c.conll"
    path.write_text("Ada NNP B-PER\nvisited O\nParis NNP B-LOC\n\nX Y Z W\n")
    with pytest.raises(ConfigError) as exc:
        read_conll(path)
    text = str(exc.value)
    assert f"{path}:2: has 2 field(s) but earlier lines have 3" in text
    assert f"{path}:5: has 4 field(s)" in text


def test_conll_single_field_line(tmp_path: Path) -> None:
    path = tmp_path / "d.conll"
    path.write_text("lonely\n")
    with pytest.raises(ConfigError, match=r"d\.conll:1: needs at least two fields"):
        read_conll(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        read_file(tmp_path / "nope.csv", "csv", ["review"], "score")
