"""A stage's own inputs, which exist only once an earlier stage has run (issue 37, point 3):
selection's candidates and rules, final training's source. Bad ones exit 2 with a message
naming the key or file, when the stage starts, and the earlier stages' work is kept as it was
(the HPO variant's ``hpo.json`` and ``best/``, its benchmark, the selection).

One small search, benchmark and selection runs once for the module on a local Ray cluster;
each case works in a copy of its outputs tree. Cases tested elsewhere are not repeated here:
no benchmark yet or a stale one (tests/test_benchmark.py); no selection yet, a source variant
that is not one, a source trial that is not complete, a changed backbone (tests/test_final.py);
a study lost or stored elsewhere (tests/test_state_files.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ray_pipeline.cli import main
from tests.conftest import CONFIG_DIR

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

Capsys = pytest.CaptureFixture[str]
SMALL = [
    "tracking.enabled=false",
    "hpo.num_samples=1",
    "hpo.training.epochs=1",
    "benchmark.benchmarking.batch_sizes=[1]",
    "benchmark.benchmarking.iterations=3",
    "benchmark.benchmarking.warmup_iterations=1",
    "benchmark.benchmarking.max_length=32",
]
"""One trial of one epoch per fold, a short benchmark at batch size 1, no MLflow."""


def _experiment(directory: Path) -> Path:
    path = directory / "exp.yaml"
    doc = {
        "include": {
            "data": str(CONFIG_DIR / "data" / "tiny_reviews.yaml"),
            "model": str(CONFIG_DIR / "model" / "tiny_bert.yaml"),
            "hpo": str(CONFIG_DIR / "hpo" / "smoke.yaml"),
        },
        "experiment": {"name": "t"},
        "outputs_root": str(directory / "outputs"),
    }
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An outputs tree after ``run --stages hpo,benchmark,select``."""
    directory = tmp_path_factory.mktemp("searched")
    argv = ["run", "--config", str(_experiment(directory)), "--stages", "hpo,benchmark,select"]
    assert main([*argv, *SMALL]) == 0
    return directory / "outputs"


class Tree:
    """A copy of the searched outputs tree, and the CLI run on it."""

    def __init__(self, searched: Path, directory: Path, capsys: Capsys) -> None:
        self.outputs = directory / "outputs"
        shutil.copytree(searched, self.outputs)
        self.config = _experiment(directory)
        self.capsys = capsys
        self.hpo = self.outputs / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
        self.selection = self.outputs / "t" / "selection" / "selection.json"

    def kept(self) -> dict[str, str]:
        """The digest of every file the earlier stages left: the HPO variant (hpo.json, best/,
        its benchmark) and the selection."""
        files = [p for p in self.hpo.rglob("*") if p.is_file() and p.name != "lease.json"]
        files.append(self.selection)
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    def refused(self, command: str, *overrides: str) -> str:
        """``command`` (with its options) and ``overrides`` exit 2, keep the earlier stages'
        files and train nothing; the error output."""
        before = self.kept()
        code = main([*command.split(), "--config", str(self.config), *SMALL, *overrides])
        out, err = self.capsys.readouterr()
        assert code == 2, f"exit {code}\n{out[-3000:]}\n{err[-3000:]}"
        assert "Traceback" not in err
        assert self.kept() == before
        assert not (self.outputs / "t" / "final").exists()
        return err


@pytest.fixture
def tree(searched: Path, tmp_path: Path, capsys: Capsys) -> Tree:
    return Tree(searched, tmp_path, capsys)


def test_the_search_left_a_variant_a_benchmark_and_a_selection(tree: Tree) -> None:
    assert (tree.hpo / "hpo.json").is_file() and (tree.hpo / "best" / "config.json").is_file()
    assert (tree.hpo / "benchmark.json").is_file() and tree.selection.is_file()


def test_a_latency_limit_no_candidate_meets_is_refused_when_selection_runs(tree: Tree) -> None:
    """After the benchmark in the same run (which finds its benchmark up to date), the
    selection is where the limit first meets the candidates."""
    run = "run --stages benchmark,select,final"
    err = tree.refused(run, "selection.max_latency_ms=0.000001")
    assert "selection.max_latency_ms" in err and "hpo_tiny-bert" in err


def test_a_latency_batch_size_the_benchmark_did_not_time_is_refused(tree: Tree) -> None:
    """Timing batch 4 too makes the benchmark of batch 1 out of date: `select` alone (no
    benchmark stage in this run) refuses it rather than measure."""
    sizes = ["benchmark.benchmarking.batch_sizes=[1,4]", "selection.latency_batch_size=4"]
    err = tree.refused("select", *sizes)
    assert "selection: variant(s) without a current benchmark" in err
    assert "hpo_tiny-bert (benchmark settings changed)" in err


def _edit(path: Path, change: Callable[[dict[str, object]], None]) -> None:
    record = json.loads(path.read_text(encoding="utf-8"))
    change(record)
    path.write_text(json.dumps(record), encoding="utf-8")


def test_a_selection_whose_winner_is_no_variant_here_is_refused_by_train(tree: Tree) -> None:
    """A selection.json carried over from another experiment (its winner's variant does not
    exist in this tree)."""

    def elsewhere(record: dict[str, object]) -> None:
        winner = record["winner"]
        assert isinstance(winner, dict)
        winner["trial"]["variant"] = "hpo_tiny-bert_v9"

    _edit(tree.selection, elsewhere)
    err = tree.refused("train")
    assert "final_training.source (the winner in" in err and str(tree.selection) in err
    assert "hpo_tiny-bert_v9" in err


def test_a_selection_objective_the_search_never_recorded_is_refused(tree: Tree) -> None:
    """An hpo.json from before folds recorded every metric of the task (here: the folds'
    weighted_f1 removed) cannot be ranked on that metric."""

    def older(record: dict[str, object]) -> None:
        for key in ("trials", "best"):
            trials = record[key] if key == "trials" else [record[key]]
            assert isinstance(trials, list)
            for trial in trials:
                for fold in trial["folds"]:
                    fold["metrics"].pop("weighted_f1", None)

    _edit(tree.hpo / "hpo.json", older)
    before = (tree.hpo / "hpo.json").read_bytes()
    err = tree.refused("select", "selection.objective.metric=weighted_f1")
    assert "selection.objective.metric" in err and "recorded no weighted_f1" in err
    assert (tree.hpo / "hpo.json").read_bytes() == before


def test_a_corrupt_selection_stops_train_naming_the_file(tree: Tree) -> None:
    # A damaged state file is no bad input but a broken run's state: exit 1 (docs/hpo.md,
    # "State ... read safely"), naming the file and the way out, nothing trained.
    tree.selection.write_text("{not json", encoding="utf-8")
    before = tree.kept()
    code = main(["train", "--config", str(tree.config), *SMALL])
    err = tree.capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"{tree.selection} is not a valid SelectionResult artifact" in err
    assert "restore it or move the directory aside" in err
    assert tree.kept() == before and not (tree.outputs / "t" / "final").exists()
