"""The demo data: Debian's r-cran-modeldata ``small_fine_foods`` as CSV in the data cache.

4,000 training and 1,000 test Amazon fine-food reviews (text ``review``, label ``score``:
great/other; MIT licence). ``apt-get download`` fetches the package without installing R;
the data is read from its R lazy-load database and written as CSV, atomically.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ray_pipeline.data.rlazyload import read_objects
from ray_pipeline.errors import PipelineError
from ray_pipeline.paths import data_cache_dir

DEB_PACKAGE = "r-cran-modeldata"
DATASET = "small_fine_foods"
_DB = "usr/lib/R/site-library/modeldata/data/Rdata"
_SPLITS = {"train.csv": ("training_data", 4000), "test.csv": ("testing_data", 1000)}
_NO_APT = (
    "apt-get is not available here. Download the {pkg} .deb from a Debian mirror and run "
    "`ray-pipeline data fetch-demo --deb FILE`, or point `data` at your own CSV files or at a "
    "Hugging Face dataset (format: huggingface, hf_name: ...) instead of the demo data."
)


def demo_dir(cache: Path | None = None) -> Path:
    """Where the demo CSVs live (the configs refer to it as ``{data_cache}/small_fine_foods``)."""
    return (cache or data_cache_dir()) / DATASET


def fetch_demo_data(
    cache: Path | None = None, deb: Path | None = None, force: bool = False
) -> Path:
    """Make sure the demo CSVs exist; return their directory. Idempotent unless ``force``."""
    target = demo_dir(cache)
    if not force and all((target / name).is_file() for name in _SPLITS):
        print(f"demo data already present in {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        work = Path(tmp)
        package = deb or _apt_download(work)
        print(f"reading {DATASET} from {package.name}")
        root = _extract(package, work / "deb")
        frames = read_objects(
            root / f"{_DB}.rdx", root / f"{_DB}.rdb", [obj for obj, _ in _SPLITS.values()]
        )
        staged = work / DATASET
        staged.mkdir()
        for name, (obj, rows) in _SPLITS.items():
            frame = frames[obj]
            if len(frame) != rows or set(frame["score"]) != {"great", "other"}:
                raise PipelineError(f"{obj} in {package} has an unexpected shape; cannot use it")
            frame.to_csv(staged / name, index=False)
            counts = ", ".join(f"{k} {v:,}" for k, v in frame["score"].value_counts().items())
            print(f"  {name}: {len(frame):,} rows ({counts})")
        (staged / "SOURCE.txt").write_text(
            f"small_fine_foods from Debian package {DEB_PACKAGE} ({package.name}); "
            "R package modeldata, MIT licence. Columns: product, review, score.\n"
        )
        if target.exists():
            shutil.rmtree(target)
        os.rename(staged, target)
    print(f"demo data written to {target}")
    return target


def _apt_download(work: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise PipelineError(_NO_APT.format(pkg=DEB_PACKAGE))
    print(f"apt-get download {DEB_PACKAGE}")
    result = _run(["apt-get", "download", DEB_PACKAGE], work)
    if result.returncode != 0 and "Unable to locate package" in result.stderr:
        print("package lists are missing; running apt-get update once")
        _run(["apt-get", "update"], work)
        result = _run(["apt-get", "download", DEB_PACKAGE], work)
    found = sorted(work.glob(f"{DEB_PACKAGE}_*.deb"))
    if result.returncode != 0 or not found:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PipelineError(
            f"apt-get download {DEB_PACKAGE} failed: {detail[0]}. "
            + _NO_APT.format(pkg=DEB_PACKAGE)
        )
    return found[-1]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _extract(deb: Path, dest: Path) -> Path:
    """Unpack a .deb's data archive (an ``ar`` archive holding ``data.tar.*``) into ``dest``."""
    if not deb.is_file():
        raise PipelineError(f"{deb} not found")
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise PipelineError(f"{deb} is not a Debian package (.deb)")
    pos = 8
    while pos + 60 <= len(blob):
        name = blob[pos : pos + 16].decode().strip().rstrip("/")
        size = int(blob[pos + 48 : pos + 58].decode().strip())
        body = blob[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            try:
                with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                    tar.extractall(dest, filter="data")
            except tarfile.TarError as exc:  # e.g. zstd on an old Python: try dpkg-deb
                if shutil.which("dpkg-deb") is None:
                    raise PipelineError(f"cannot unpack {name} from {deb}: {exc}") from exc
                dest.mkdir(parents=True, exist_ok=True)
                subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
            return dest
        pos += 60 + size + (size % 2)
    raise PipelineError(f"{deb} has no data archive")
