"""``storage.uri`` (docs/cluster.md): the config rules, the probe that ``validate`` and every
run make, and the place functions on a ``file://`` URI (the code path of ``s3://`` and
``gs://``; the real S3 server is in test_cluster_job.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ray_pipeline import storage
from ray_pipeline.cli import main
from ray_pipeline.errors import ConfigError
from ray_pipeline.final.results import FinalJob
from ray_pipeline.final.worker import epoch_checkpoints, read_state, run_epochs
from ray_pipeline.layout_names import FINAL_STATE
from ray_pipeline.loading import load_config
from ray_pipeline.schema import TrainingParams
from ray_pipeline.tracking import check_tracking_for_nodes
from tests.conftest import SMOKE, MakeExp
from tests.processes import free_port
from tests.test_training_settings import _OneProcess


@pytest.mark.parametrize(
    ("uri", "wrong"),
    [
        ("bucket/prefix", "not a URI"),
        ("s3://KEYID:SECRETVALUE@bucket/prefix", "no credentials"),
        ("s3://bucket/prefix?secret_key=SECRETVALUE", "no credentials"),
    ],
)
def test_a_storage_uri_with_credentials_or_no_scheme_exits_2_without_echoing_it(
    uri: str, wrong: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "--config", str(SMOKE), f"storage.uri={uri}"]) == 2
    err = capsys.readouterr().err
    assert "storage.uri" in err and wrong in err, err
    assert "SECRETVALUE" not in err


def test_the_uri_is_kept_without_a_trailing_slash(smoke_experiment: MakeExp) -> None:
    config = load_config(smoke_experiment(), ["storage.uri=s3://bucket/runs/"])
    assert config.storage.uri == "s3://bucket/runs"
    assert load_config(smoke_experiment()).storage.uri is None


@pytest.mark.parametrize("reach", ["unwritable", "unreachable"])
def test_validate_refuses_storage_it_cannot_write(
    reach: str,
    smoke_experiment: MakeExp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if reach == "unwritable":
        uri = "file:///proc/ray-pipeline-storage"
        error = "Cannot create directory"
    else:  # an S3 server that nothing serves (the AWS SDK retries for ~13 s)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(name, "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        uri = "s3://bucket/runs"
        error = "Could not connect"
    path = smoke_experiment()
    assert main(["validate", "--config", str(path), f"storage.uri={uri}"]) == 2
    err = capsys.readouterr().err
    assert f"storage.uri: cannot write and read back {uri}: " in err and error in err, err
    assert not (tmp_path / "outputs").exists()


def test_places_on_a_uri(tmp_path: Path) -> None:
    local = tmp_path / "model"
    (local / "sub").mkdir(parents=True)
    (local / "config.json").write_text("{}")
    (local / "sub" / "weights").write_bytes(b"0123")
    root = (tmp_path / "bucket").as_uri()
    target = storage.join(root, "runs", "best")

    storage.copy(str(local), target)  # up
    assert storage.children(storage.join(root, "runs")) == ["best"]
    assert storage.is_file(storage.join(target, "config.json"))
    assert storage.size_of(target) == 2 + 4
    storage.move(target, storage.join(root, "runs", "kept"))
    assert storage.children(storage.join(root, "runs")) == ["kept"]
    with storage.local_copy(storage.join(root, "runs", "kept")) as fetched:  # down
        assert (fetched / "sub" / "weights").read_bytes() == b"0123"
    back = tmp_path / "back"
    storage.copy(storage.join(root, "runs", "kept"), str(back))
    assert (back / "config.json").read_text() == "{}"
    storage.delete(storage.join(root, "runs"))
    assert storage.children(root) == [] and storage.children(storage.join(root, "none")) == []
    assert storage.probe(root) and storage.children(root) == []  # it cleans up


def test_worker_storage_maps_outputs_paths_to_the_uri(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    variant = outputs / "exp" / "hpo" / "b" / "hpo_b"
    shared = storage.WorkerStorage(outputs)
    assert shared.place(variant / "best") == str(variant / "best")
    assert shared.located("/x/checkpoint_000001") == "/x/checkpoint_000001"
    remote = storage.WorkerStorage(outputs, "s3://bucket/runs")
    assert remote.place(variant / "best") == "s3://bucket/runs/exp/hpo/b/hpo_b/best"
    # Ray reports a checkpoint's path inside the filesystem, without the scheme.
    assert remote.located("bucket/runs/t/checkpoint_000001") == (
        "s3://bucket/runs/t/checkpoint_000001"
    )
    on_disk = storage.WorkerStorage(outputs, (tmp_path / "bucket").as_uri())
    found = on_disk.located(str(tmp_path / "bucket" / "t"))
    assert found == (tmp_path / "bucket" / "t").as_uri() and not storage.is_dir(found)
    stale = on_disk.place(variant / "checkpoints" / "epoch_0009")
    storage.write_text(storage.join(stale, "final_state.json"), "{}")
    assert storage.is_dir(stale)
    on_disk.clear(variant)  # a new variant of that name: what an old one left goes
    assert not storage.is_dir(on_disk.place(variant))
    with pytest.raises(ValueError):
        remote.place(tmp_path / "elsewhere")


def test_two_outputs_roots_on_one_uri_have_their_own_namespaces(tmp_path: Path) -> None:
    uri = (tmp_path / "bucket").as_uri()
    roots = [tmp_path / "a", tmp_path / "b"]
    assert storage.namespace_of(roots[0]) == ""  # reading writes nothing
    assert not roots[0].exists()
    spaces = [storage.claim_namespace(root) for root in roots]
    assert all(len(ns) == 12 for ns in spaces) and spaces[0] != spaces[1]
    assert storage.claim_namespace(roots[0]) == spaces[0]  # written once, then read
    a, b = (storage.WorkerStorage(root, uri, ns) for root, ns in zip(roots, spaces, strict=True))
    same = Path("exp") / "hpo" / "m" / "hpo_m"
    assert a.place(roots[0] / same) == f"{uri}/{spaces[0]}/exp/hpo/m/hpo_m"
    # Each root creates "the same" variant: clearing one's never touches the other's.
    storage.write_text(storage.join(b.place(roots[1] / same), "best", "config.json"), "{}")
    a.clear(roots[0] / same)
    assert storage.is_file(storage.join(b.place(roots[1] / same), "best", "config.json"))


def test_a_tree_with_variants_from_before_namespaces_keeps_its_places(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    variant = root / "exp" / "hpo" / "m" / "hpo_m"
    variant.mkdir(parents=True)
    (variant / "variant.json").write_text("{}")
    assert storage.claim_namespace(root) == ""
    uri = (tmp_path / "bucket").as_uri()
    assert storage.WorkerStorage(root, uri, "").place(variant) == f"{uri}/exp/hpo/m/hpo_m"


def test_a_copy_beside_its_original_gets_a_namespace_of_its_own_and_a_move_keeps_it(
    tmp_path: Path,
) -> None:
    original = tmp_path / "a"
    mine = storage.claim_namespace(original)
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    copied = storage.namespace_of(copy)
    assert copied not in ("", mine) and storage.namespace_of(copy) == copied  # stable
    assert storage.namespace_of(original) == mine
    assert storage.claim_namespace(copy) == copied  # a run in the copy writes it down
    moved = tmp_path / "c"
    original.rename(moved)  # no original left: the places are the moved tree's own
    assert storage.namespace_of(moved) == mine
    assert storage.claim_namespace(moved) == mine
    assert storage.namespace_of(copy) == copied  # its original gone, the copy keeps its own


def test_final_epoch_checkpoints_on_a_uri_resume(smoke_experiment: MakeExp, tmp_path: Path) -> None:
    """The refit's checkpoints go to the URI (the state file last) and a second attempt finds
    the finished one there and trains nothing more."""
    overrides = ["data.max_train_examples=16", "data.max_test_examples=4"]
    config = load_config(smoke_experiment(), overrides)
    checkpoints = storage.join((tmp_path / "bucket").as_uri(), "final", "checkpoints")
    job = FinalJob(
        variant="final_t",
        checkpoints=checkpoints,
        keep_checkpoints=1,
        batch_size_per_worker=8,
        backbone=config.model.backbones[0],
        data=config.data,
        task=config.data.task,
        training=TrainingParams(epochs=2, batch_size=8, max_length=16),
        seed=0,
        attempt="now",
    )
    run_epochs(job, _OneProcess())
    (last,) = epoch_checkpoints(checkpoints)  # keep_checkpoints=1: epoch 1's is gone
    assert last == storage.join(checkpoints, "epoch_0002")
    assert storage.is_file(storage.join(last, FINAL_STATE))
    state = read_state(last)
    assert state.next_epoch == 2 and state.test_metrics is not None
    assert not list(tmp_path.glob("**/.epoch_*"))  # nothing left aside
    run_epochs(job.model_copy(update={"attempt": "again"}), _OneProcess())
    assert read_state(last).epochs == state.epochs  # resumed after the last epoch


def test_a_store_on_the_drivers_disk_is_refused_on_nodes_that_share_nothing(
    smoke_experiment: MakeExp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    remote = load_config(smoke_experiment(), ["storage.uri=s3://bucket/runs"])
    with pytest.raises(ConfigError) as exc:
        check_tracking_for_nodes(remote, 2)
    assert "tracking.tracking_uri" in str(exc.value) and "sqlite:///" in str(exc.value)
    check_tracking_for_nodes(remote, 1)  # one node: the driver's disk is every node's
    served = ["storage.uri=s3://bucket/runs", "tracking.tracking_uri=http://10.0.0.1:5000"]
    check_tracking_for_nodes(load_config(smoke_experiment(), served), 2)
    check_tracking_for_nodes(load_config(smoke_experiment()), 2)  # shared outputs_root
