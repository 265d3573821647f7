"""Atomic JSON artifacts validated on read."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from ray_pipeline.artifacts import read_json, write_json
from ray_pipeline.errors import PipelineError


class Record(BaseModel):
    name: str
    value: int


def test_round_trip_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.json"
    write_json(path, Record(name="a", value=1))
    write_json(path, Record(name="a", value=2))
    assert read_json(path, Record) == Record(name="a", value=2)
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_corrupt_artifact_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text('{"name": "a"')
    with pytest.raises(PipelineError, match=r"r\.json is not a valid Record"):
        read_json(path, Record)
    path.write_text('{"name": "a", "value": "x"}')
    with pytest.raises(PipelineError, match="not a valid Record"):
        read_json(path, Record)


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.json"
    write_json(path, Record(name="a", value=1))

    def fail(_fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("ray_pipeline.artifacts.os.fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, Record(name="a", value=2))
    assert read_json(path, Record).value == 1
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # temp file removed
