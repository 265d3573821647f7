"""JSON artifacts: written atomically (temp file + rename), validated by pydantic on read."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ray_pipeline.errors import PipelineError

M = TypeVar("M", bound=BaseModel)


class Record(BaseModel):
    """Base of every artifact record: unknown keys refused, immutable once made. NaN and
    infinities round-trip through JSON (as ``NaN``, ``Infinity``; pydantic's default writes
    ``null``, which the record then refuses): a fold scored on a DDP rank that does not
    evaluate, or a metric that is undefined, is NaN."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` so readers see the old file or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; artifacts are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, record: BaseModel) -> None:
    """Atomically write a pydantic record as indented JSON."""
    write_text_atomic(path, record.model_dump_json(indent=2) + "\n")


def read_json(path: Path, model: type[M]) -> M:
    """Read and validate a JSON artifact; a corrupt one raises PipelineError naming the file."""
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise
    except (ValidationError, OSError, ValueError) as exc:
        raise PipelineError(
            f"{path} is not a valid {model.__name__} artifact ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}); restore it or move the directory aside"
        ) from exc
