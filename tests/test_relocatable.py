"""An outputs tree that is copied or moved keeps working, and the copy never touches the
original: records name their files relative to the variant (``VariantFiles.recorded`` /
``located``), a stage deletes only inside the variant it owns. The rules on their own, and end
to end on a real local Ray cluster: the search, benchmark, selection, refit and report run in a
copy and in a moved tree, and the original keeps its ``best/``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.final.results import FinalMetrics
from ray_pipeline.paths import VariantFiles
from tests.conftest import MakeExp

HERE = VariantFiles(Path("/runs/b/smoke/hpo/tiny-bert/hpo_tiny-bert"))


def test_records_hold_places_relative_to_their_variant() -> None:
    assert HERE.recorded(str(HERE.path / "best")) == "best"
    assert HERE.recorded(str(HERE.path / "tune/round_1/trial_0/checkpoint_000002")) == (
        "tune/round_1/trial_0/checkpoint_000002"
    )
    assert HERE.recorded("s3://bucket/smoke/hpo/x/best") == "s3://bucket/smoke/hpo/x/best"
    assert HERE.recorded(None) is None
    assert HERE.located("best") == str(HERE.path / "best")
    assert HERE.located(HERE.recorded(str(HERE.path / "pareto/trial_3"))) == str(
        HERE.path / "pareto/trial_3"
    )


def test_an_older_absolute_path_is_translated_into_this_tree_or_not_followed() -> None:
    # Written by the tree this one was copied from (or before it moved): the same place here.
    theirs = "/runs/a/smoke/hpo/tiny-bert/hpo_tiny-bert/tune/round_1/trial_0/checkpoint_000001"
    assert HERE.located(theirs) == str(HERE.path / "tune/round_1/trial_0/checkpoint_000001")
    assert HERE.located("/runs/a/smoke/hpo/tiny-bert/hpo_tiny-bert/best") == str(HERE.path / "best")
    assert HERE.located(str(HERE.path / "best")) == str(HERE.path / "best")
    # Another variant, another backbone, or somewhere else entirely: never followed.
    assert HERE.located("/runs/a/smoke/hpo/tiny-bert/hpo_tiny-bert_v2/best") is None
    assert HERE.located("/runs/a/smoke/hpo/other/hpo_tiny-bert/best") is None
    assert HERE.located("/tmp/model") is None
    assert HERE.located("file:///bucket/smoke/best") == "file:///bucket/smoke/best"
    assert HERE.owns(str(HERE.path / "tune" / "x"))
    assert not HERE.owns("/runs/a/smoke/hpo/tiny-bert/hpo_tiny-bert/tune/x")


def _variant(outputs: Path) -> Path:
    return outputs / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"


@pytest.mark.slow
def test_a_copied_and_a_moved_tree_work_and_leave_the_original_alone(
    ray_cluster: None, smoke_experiment: MakeExp, tmp_path: Path
) -> None:
    path = smoke_experiment()
    common = ["--config", str(path), "tracking.enabled=false", "hpo.num_samples=2"]
    a, b, moved = tmp_path / "a", tmp_path / "b", tmp_path / "moved"
    assert main(["hpo", *common, f"outputs_root={a}"]) == 0
    recorded = json.loads((_variant(a) / "hpo.json").read_text())
    assert recorded["best_checkpoint"] == "best"  # relative: the tree can go elsewhere
    shutil.copytree(a, b)
    before = sorted(p.name for p in (_variant(a) / "best").iterdir())
    # The same command in the copy: the original keeps its best/ (it used to be deleted).
    assert main(["hpo", *common, f"outputs_root={b}"]) == 0
    assert sorted(p.name for p in (_variant(a) / "best").iterdir()) == before
    assert (_variant(b) / "best" / "config.json").is_file()
    # Every later stage in the copy, and the report.
    for stage in ("benchmark", "select", "train"):
        assert main([stage, *common, f"outputs_root={b}", "final_training.epochs=1"]) == 0
    assert main(["report", *common, f"outputs_root={b}"]) == 0
    final = b / "t" / "final" / "tiny-bert" / "final_tiny-bert"
    assert read_json(final / "metrics.json", FinalMetrics).test_metrics
    assert (_variant(a) / "best" / "config.json").is_file()
    assert not (a / "t" / "final").exists() and not (a / "t" / "selection").exists()
    # The original moved elsewhere: the whole pipeline runs there (its search reused).
    shutil.move(a, moved)
    assert main(["run", *common, f"outputs_root={moved}", "final_training.epochs=1"]) == 0
    assert main(["report", *common, f"outputs_root={moved}"]) == 0
    assert (_variant(moved) / "best" / "config.json").is_file()
    assert (moved / "t" / "final" / "tiny-bert" / "final_tiny-bert" / "model").is_dir()
