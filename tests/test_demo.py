"""The demo data (Debian r-cran-modeldata) and the demo model (all-MiniLM-L6-v2), offline."""

from __future__ import annotations

import bz2
import io
import lzma
import os
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from ray_pipeline.cli import main
from ray_pipeline.data import demo
from ray_pipeline.data.inspect import inspect_data
from ray_pipeline.data.rlazyload import _decompress
from ray_pipeline.errors import PipelineError
from ray_pipeline.loading import load_config
from tests.conftest import DEMO, SMOKE

PAYLOAD = b"X\n" + bytes(range(256)) * 40


@pytest.mark.parametrize(
    ("compressed", "block"),
    [
        (1, zlib.compress(PAYLOAD)),
        (3, b"0" + PAYLOAD),
        (3, b"1" + zlib.compress(PAYLOAD)),
        (2, b"2" + bz2.compress(PAYLOAD)),
        (
            3,
            b"Z"
            + lzma.compress(
                PAYLOAD, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 6}]
            ),
        ),
    ],
)
def test_r_lazy_load_blocks(compressed: int, block: bytes) -> None:
    assert _decompress(struct.pack(">I", len(PAYLOAD)) + block, compressed) == PAYLOAD
    with pytest.raises(ValueError, match="expected"):
        _decompress(struct.pack(">I", len(PAYLOAD) + 1) + block, compressed)


def _deb(path: Path, files: dict[str, bytes]) -> Path:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    members = {"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": data.getvalue()}
    out = b"!<arch>\n"
    for name, body in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
        out += header + body + (b"\n" if len(body) % 2 else b"")
    path.write_bytes(out)
    return path


def test_deb_unpacking(tmp_path: Path) -> None:
    deb = _deb(tmp_path / "x.deb", {"./usr/share/a.txt": b"hello"})
    root = demo._extract(deb, tmp_path / "out")
    assert (root / "usr/share/a.txt").read_bytes() == b"hello"
    not_deb = tmp_path / "y.deb"
    not_deb.write_bytes(b"PK\x03\x04")
    with pytest.raises(PipelineError, match="not a Debian package"):
        demo._extract(not_deb, tmp_path / "out2")


def test_without_apt_the_message_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ray_pipeline.data.demo.shutil.which", lambda _: None)
    with pytest.raises(PipelineError) as exc:
        demo.fetch_demo_data(cache=tmp_path)
    text = str(exc.value)
    assert "apt-get is not available" in text and "--deb FILE" in text and "huggingface" in text
    assert not (tmp_path / demo.DATASET).exists()


@pytest.mark.slow  # runs apt-get
@pytest.mark.demo
def test_fetch_demo_writes_the_csvs(tmp_path: Path) -> None:
    import shutil

    if shutil.which("apt-get") is None:
        message = "apt-get not available on this machine"
        if os.environ.get("RAY_PIPELINE_REQUIRE_DEMO"):  # as tests.conftest._need_demo
            pytest.fail(message)
        pytest.skip(message)
    target = demo.fetch_demo_data(cache=tmp_path)
    train, test = (target / "train.csv").read_text(), (target / "test.csv").read_text()
    assert train.startswith("product,review,score\n") and test.startswith("product,review,score\n")
    assert [p.name for p in tmp_path.iterdir()] == [demo.DATASET]  # no staging left behind


@pytest.mark.demo
def test_demo_data_rows_labels_and_balanced_folds(
    demo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = ["data.max_train_examples=null", "data.max_test_examples=null", "hpo.k_folds=5"]
    report = inspect_data(load_config(DEMO, full))
    assert report.splits["train"].rows_read == 4000 and report.splits["test"].rows_read == 1000
    assert report.splits["train"].label_counts == {"great": 2600, "other": 1400}
    assert report.splits["test"].label_counts == {"great": 658, "other": 342}
    assert len(report.folds) == 5
    assert all(f.max_deviation_pp <= 1.0 for f in report.folds)
    assert main(["data", "inspect", "--config", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "4,000 rows" in out and "great 2,600 (65.0%), other 1,400 (35.0%)" in out
    assert "1,000 rows" in out and "great 658 (65.8%), other 342 (34.2%)" in out


@pytest.mark.slow
@pytest.mark.demo
def test_minilm_fine_tune_step_offline(demo_model_available: None) -> None:
    import torch

    from ray_pipeline.data.encode import encode
    from ray_pipeline.data.splits import load_splits
    from ray_pipeline.models import build_model, load_tokenizer
    from ray_pipeline.schema import TrainingParams
    from ray_pipeline.training import batches, make_optimizer, train_epoch

    cfg = load_config(SMOKE)
    backbone = load_config(DEMO).model.backbones[0]
    splits = load_splits(cfg.data)
    tok = load_tokenizer(backbone)
    rows = encode(tok, splits.train.subset(range(16)), splits.label2id, max_length=32)
    model = build_model(backbone, "sequence_classification", splits.labels, seed=0)
    assert model.config.num_hidden_layers == 6  # the real MiniLM, not a random stand-in
    before = [p.detach().clone() for p in model.parameters()]
    optimizer, scheduler = make_optimizer(model, TrainingParams(learning_rate=5e-5), total_steps=2)
    loss = train_epoch(model, batches(rows, 8, tok.pad_token_id), optimizer, scheduler)
    assert 0.0 < loss < 5.0
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert changed == len(before)  # every parameter took a step
