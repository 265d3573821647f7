"""Where workers write: the one owner of ``storage.uri`` (docs/cluster.md).

Without a storage URI, what trials, final training and benchmark actors write and read lives
under ``outputs_root``, which every node must then mount (NFS, EFS). With one (any URI pyarrow
understands: ``s3://``, ``gs://``, ``file://``), it lives at the same relative path under the
URI instead: Tune rounds and Ray Train runs (trial checkpoints), each variant's kept models
(``best/``, ``pareto/``), final training's epoch checkpoints. The driver keeps its own state
(variant records, studies, hpo.json, selection, report, the exported model) under
``outputs_root`` on its own disk, and downloads what it needs.

A *place* is a directory or file: a local path, or a URI. The functions below take places and
work the same on both; credentials come from the environment (instance roles, ``AWS_*``
variables, ``AWS_ENDPOINT_URL`` for an S3-compatible server), never from the config.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

from ray_pipeline.artifacts import Record, read_json, write_json
from ray_pipeline.layout_names import STORAGE_NAMESPACE, VARIANT_RECORD
from ray_pipeline.paths import is_uri, staging_for

if TYPE_CHECKING:
    import pyarrow.fs

    from ray_pipeline.schema import PipelineConfig


class StorageError(Exception):
    """A place that cannot be reached, read or written."""


def filesystem(place: str | PathLike[str]) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem of ``place`` and the path inside it."""
    import pyarrow.fs

    place = str(place)
    if is_uri(place):
        fs, path = pyarrow.fs.FileSystem.from_uri(place)
        return fs, str(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(place).absolute())


def join(place: str | PathLike[str], *names: str) -> str:
    """``place``/``names``."""
    place = str(place)
    if is_uri(place):
        return "/".join([place.rstrip("/"), *names])
    return str(Path(place, *names))


def name_of(place: str) -> str:
    """The last component of ``place``."""
    return place.rstrip("/").rsplit("/", 1)[-1] if is_uri(place) else Path(place).name


def parent_of(place: str) -> str:
    """The directory holding ``place``."""
    return place.rstrip("/").rsplit("/", 1)[0] if is_uri(place) else str(Path(place).parent)


def children(place: str | PathLike[str], prefix: str = "") -> list[str]:
    """The names of what is directly inside the directory ``place`` (none if it is missing)
    that start with ``prefix``, sorted."""
    import pyarrow.fs

    fs, path = filesystem(place)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        return []
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.base_name.startswith(prefix))


def is_file(place: str | PathLike[str]) -> bool:
    import pyarrow.fs

    fs, path = filesystem(place)
    return bool(fs.get_file_info(path).type == pyarrow.fs.FileType.File)


def is_dir(place: str | PathLike[str]) -> bool:
    import pyarrow.fs

    fs, path = filesystem(place)
    return bool(fs.get_file_info(path).type == pyarrow.fs.FileType.Directory)


def read_text(place: str | PathLike[str]) -> str:
    fs, path = filesystem(place)
    with fs.open_input_stream(path) as stream:
        return bytes(stream.read()).decode("utf-8")


def write_text(place: str, text: str) -> None:
    fs, path = filesystem(place)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode("utf-8"))


def delete(place: str | PathLike[str]) -> None:
    """Remove the directory or file ``place``; nothing if it is missing."""
    import pyarrow.fs

    fs, path = filesystem(place)
    kind = fs.get_file_info(path).type
    if kind == pyarrow.fs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pyarrow.fs.FileType.File:
        fs.delete_file(path)


def copy(source: str, target: str) -> None:
    """Copy the directory ``source`` to ``target`` (either may be local or a URI), replacing
    what was there. A local target is assembled aside and renamed into place."""
    import pyarrow.fs

    source_fs, source_path = filesystem(source)
    if not is_uri(target):
        final = Path(target)
        staging = staging_for(final)
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        if is_uri(source):
            staging.mkdir()
            pyarrow.fs.copy_files(
                source_path,
                str(staging.absolute()),
                source_filesystem=source_fs,
                destination_filesystem=pyarrow.fs.LocalFileSystem(),
            )
        else:
            shutil.copytree(source_path, staging)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        return
    delete(target)
    target_fs, target_path = filesystem(target)
    target_fs.create_dir(target_path, recursive=True)  # local: needed; S3: an empty marker
    pyarrow.fs.copy_files(
        source_path, target_path, source_filesystem=source_fs, destination_filesystem=target_fs
    )


def move(source: str, target: str) -> None:
    """Rename the directory ``source`` to ``target`` (object stores: copy, then delete)."""
    if not is_uri(source) and not is_uri(target):
        Path(source).rename(target)
        return
    copy(source, target)
    delete(source)


def publish(local: Path, target: str, last: str) -> None:
    """Put the directory ``local`` at ``target`` so that a reader who finds the file ``last``
    in it finds everything: a local target by renaming ``local`` (on the same filesystem)
    into place, a URI by uploading ``last`` after every other file (over what is there: an
    object is replaced whole, and a checkpoint saved again keeps its state file until the new
    one lands). ``local`` is gone after."""
    import pyarrow.fs

    if not is_uri(target):
        final = Path(target)
        if final.exists():
            shutil.rmtree(final)
        local.rename(final)
        return
    fs, path = filesystem(target)
    local_fs = pyarrow.fs.LocalFileSystem()
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for file in sorted(files, key=lambda p: p.name == last):
        relative = file.relative_to(local).as_posix()
        fs.create_dir(f"{path}/{relative}".rsplit("/", 1)[0], recursive=True)
        pyarrow.fs.copy_files(
            str(file),
            f"{path}/{relative}",
            source_filesystem=local_fs,
            destination_filesystem=fs,
        )
    shutil.rmtree(local)


@contextmanager
def local_copy(place: str) -> Iterator[Path]:
    """``place`` as a local path: itself, or a temporary download of it."""
    if not is_uri(place):
        yield Path(place)
        return
    with tempfile.TemporaryDirectory(prefix="ray_pipeline_fetch_") as directory:
        local = Path(directory) / name_of(place)
        copy(place, str(local))
        yield local


def size_of(place: str | PathLike[str]) -> int:
    """The bytes of every file under the directory ``place``."""
    import pyarrow.fs

    fs, path = filesystem(place)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        return 0
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    return sum(i.size or 0 for i in infos if i.type == pyarrow.fs.FileType.File)


def probe(place: str) -> str:
    """Write a small file under ``place``, read it back and delete it; returns its content
    (a fresh token). Raises StorageError naming ``place`` and the filesystem's error."""
    token = uuid.uuid4().hex
    target = join(place, f".ray_pipeline_probe_{token}")
    try:
        write_text(target, token)
        seen = read_text(target)
        delete(target)
    # pyarrow: OSError (network, denied), ValueError (URI), NotImplementedError (a filesystem
    # this pyarrow was built without)
    except (OSError, ValueError, NotImplementedError) as exc:
        raise StorageError(f"{place}: {_first_line(exc)}") from exc
    if seen != token:
        raise StorageError(f"{place}: wrote {token!r} and read back {seen!r}")
    return token


def read_probe(place: str) -> str | None:
    """The content of the probe file ``place`` (from another node), None if unreadable."""
    try:
        return read_text(place)
    except (OSError, ValueError, NotImplementedError):
        return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Namespace(Record):
    """``<outputs_root>/.storage_namespace.json``: the outputs root's own prefix under
    ``storage.uri``, so that two outputs roots on one URI never touch each other's places."""

    namespace: str
    """``""``: none (a tree that had places under the URI before namespaces existed)."""
    root: str
    """The absolute outputs root it was written for (a copy beside it is told apart)."""


def namespace_of(outputs_root: Path) -> str:
    """The outputs root's namespace under ``storage.uri`` (reads only): the one written into
    it, or for a copy of a tree whose original still holds the same namespace, one derived
    from the copy's own path (its records keep reading the original's places, and nothing it
    creates or clears is the original's). None written yet: ``""`` (``claim_namespace``
    writes it when a run starts)."""
    path = outputs_root / STORAGE_NAMESPACE
    if not path.is_file():
        return ""
    found = read_json(path, Namespace)
    here = str(outputs_root.absolute())
    if found.root == here or not found.namespace:
        return found.namespace
    original = Path(found.root) / STORAGE_NAMESPACE
    if original.is_file() and read_json(original, Namespace).namespace == found.namespace:
        return hashlib.sha256(f"{found.namespace}:{here}".encode()).hexdigest()[:12]
    return found.namespace  # moved (or its original is gone): the places are its own


def claim_namespace(outputs_root: Path) -> str:
    """Write the outputs root's namespace (a run with ``storage.uri`` calls this before its
    stages) and return it: once, a new random one, or ``""`` for a tree that already holds
    variants made without one (their places stay where they are); in a copied or moved tree,
    the one ``namespace_of`` gives it, with the tree's own root, so a copy keeps its own after
    its original is gone."""
    path = outputs_root / STORAGE_NAMESPACE
    if not path.is_file():
        made_before = any(outputs_root.glob(f"*/*/*/*/{VARIANT_RECORD}"))
        record = Namespace(
            namespace="" if made_before else uuid.uuid4().hex[:12],
            root=str(outputs_root.absolute()),
        )
        outputs_root.mkdir(parents=True, exist_ok=True)
        try:
            with path.open("x", encoding="utf-8") as handle:  # a concurrent run's write wins
                handle.write(record.model_dump_json(indent=2) + "\n")
        except FileExistsError:
            pass
    current, here = namespace_of(outputs_root), str(outputs_root.absolute())
    if read_json(path, Namespace).root != here:  # a copy or a move: the file now says so
        write_json(path, Namespace(namespace=current, root=here))
    return current


@dataclass(frozen=True)
class WorkerStorage:
    """Maps the outputs tree's worker-written paths to their places: the path itself, or the
    same relative path under ``storage.uri`` and the outputs root's namespace."""

    outputs_root: Path
    uri: str | None = None
    namespace: str = ""

    @classmethod
    def of(cls, config: PipelineConfig) -> WorkerStorage:
        uri = config.storage.uri
        if uri is None:
            return cls(config.outputs_root)
        return cls(config.outputs_root, uri, namespace_of(config.outputs_root))

    def located(self, path: str) -> str:
        """A path Ray reports inside this storage's filesystem (a checkpoint's carries no
        URI scheme) as a place."""
        if self.uri is None:
            return path
        return f"{self.uri.split('://', 1)[0]}://{path}"  # s3: bucket/key; file: /abs/path

    def clear(self, local: Path) -> None:
        """Remove what an earlier life of the directory ``local`` left under the URI (a new
        variant whose name a variant of a lost driver disk had: its checkpoints and models
        must not be taken for this one's). Nothing without a URI."""
        if self.uri is not None:
            delete(self.place(local))

    def place(self, local: Path) -> str:
        """Where workers find ``local`` (a path under the outputs root)."""
        if self.uri is None:
            return str(local)
        relative = local.absolute().relative_to(self.outputs_root.absolute()).as_posix()
        return (
            join(self.uri, self.namespace, relative) if self.namespace else join(self.uri, relative)
        )
