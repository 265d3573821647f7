"""What a user sees: exit codes, messages, and that bad input writes nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_pipeline.cli import build_parser, main
from ray_pipeline.identity import study_key
from ray_pipeline.loading import load_config
from ray_pipeline.paths import OutputsLayout
from ray_pipeline.variants import resolve_variant, set_status
from tests.conftest import DEMO, MakeExp
from tests.processes import free_port


def test_validate_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", str(DEMO)]) == 0
    assert "valid:" in capsys.readouterr().out


def test_validate_without_config_uses_the_embedded_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 0
    assert "experiment demo" in capsys.readouterr().out


def test_validate_show_prints_resolved_config(
    smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "--config", str(smoke_experiment()), "--show", "hpo.seed=7"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7" in out and "train_file: /" in out


def _shown(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The configuration ``validate --show`` printed (after its ``valid:`` line)."""
    valid, shown = capsys.readouterr().out.split("\n", 1)
    assert valid.startswith("valid:")
    doc: dict[str, Any] = yaml.safe_load(shown)
    return doc


def test_validate_show_prints_the_values_the_schema_resolved(
    smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    """The nulls that mean "the default" or "as another section" show the value the run uses."""
    path = str(smoke_experiment(experiment={"name": "shown"}))
    assert main(["validate", "--config", path, "--show", "hpo.run.mode=force_new"]) == 0
    shown = _shown(capsys)
    assert shown["hpo"]["sampler"]["type"] == "tpe"
    assert shown["hpo"]["sampler"]["n_startup_trials"] == 10
    assert shown["hpo"]["sampler"]["population_size"] is None  # tpe takes none
    assert shown["selection"]["objective"] == shown["hpo"]["objective"]
    assert shown["benchmark"]["run"]["mode"] == "force_new"
    assert shown["tracking"]["experiment_name"] == "shown"
    assert shown["hpo"]["training"]["eval_batch_size"] == 32
    # Benchmarks have nothing to resume: an inherited resume_if_incomplete reuses them.
    assert main(["validate", "--config", path, "--show", "hpo.run.mode=resume_if_incomplete"]) == 0
    assert _shown(capsys)["benchmark"]["run"]["mode"] == "reuse_if_exists"
    assert main(["validate", "--config", path, "--show", "hpo.sampler=cmaes"]) == 0
    assert _shown(capsys)["hpo"]["sampler"]["n_startup_trials"] == 0
    assert main(["validate", "--config", path, "--show", "hpo.sampler=nsga2"]) == 0
    sampler = _shown(capsys)["hpo"]["sampler"]
    assert (sampler["n_startup_trials"], sampler["population_size"]) == (None, 50)


def test_validate_show_keeps_explicit_values(
    smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    explicit = [
        "hpo.sampler={type: gp, n_startup_trials: 4}",
        "selection.objective={metric: accuracy, direction: maximize}",
        "benchmark.run.mode=force_new",
        "tracking.experiment_name=mine",
        "hpo.training.eval_batch_size=8",
    ]
    assert main(["validate", "--config", str(smoke_experiment()), "--show", *explicit]) == 0
    shown = _shown(capsys)
    assert shown["hpo"]["sampler"]["n_startup_trials"] == 4
    assert shown["selection"]["objective"]["metric"] == "accuracy"
    assert shown["hpo"]["objective"]["metric"] == "macro_f1"
    assert shown["benchmark"]["run"]["mode"] == "force_new"
    assert shown["hpo"]["run"]["mode"] == "reuse_if_exists"
    assert shown["tracking"]["experiment_name"] == "mine"
    assert shown["hpo"]["training"]["eval_batch_size"] == 8


def test_three_problems_exit_2_and_write_nothing(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = smoke_experiment(hpo={"num_sample": 3, "k_folds": "two", "run": {"mode": "newest"}})
    for command in ("validate", "run", "hpo", "status", "data"):
        argv = [command, "inspect"] if command == "data" else [command]
        assert main([*argv, "--config", str(path)]) == 2
        err = capsys.readouterr().err
        for where in ("hpo.num_sample", "hpo.k_folds", "hpo.run.mode"):
            assert where in err, (command, err)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("command", [["validate"], ["hpo"], ["run", "--stages", "select"]])
@pytest.mark.parametrize("problem", ["tracking", "folds"])
def test_run_and_validate_check_the_same_inputs_before_ray(
    command: list[str],
    problem: str,
    smoke_experiment: MakeExp,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``pipeline.check_inputs``: one list, for ``validate`` and for ``run`` before Ray starts."""
    monkeypatch.setattr("ray_pipeline.cluster.ensure_ray", lambda *_: pytest.fail("Ray started"))
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    override, message = {
        "tracking": (f"tracking.tracking_uri={uri}", f"MLflow server {uri} is not reachable"),
        "folds": ("hpo.k_folds=500", "hpo.k_folds: 500 folds need at least 500"),
    }[problem]
    if problem == "folds" and "select" in command:
        return  # selection alone does not read the search's data
    assert main([*command, "--config", str(smoke_experiment()), override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_unknown_stage_exits_2(
    smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--config", str(smoke_experiment()), "--stages", "hpo,deploy"]) == 2
    assert "unknown stage(s) deploy" in capsys.readouterr().err


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["run"],
        ["hpo"],
        ["benchmark"],
        ["select"],
        ["train"],
        ["validate"],
        ["status"],
        ["data"],
        ["data", "inspect"],
        ["report"],
    ],
)
def test_help_everywhere(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: ray-pipeline" in capsys.readouterr().out


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("ray_pipeline.cli.load_config", interrupted)
    assert main(["validate"]) == 130


def test_status_lists_variants(
    smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]
) -> None:
    path = smoke_experiment()
    assert main(["status", "--config", str(path)]) == 0
    assert "no variants yet" in capsys.readouterr().out
    cfg = load_config(path)
    backbone = cfg.model.backbones[0]
    stage_dir = OutputsLayout(cfg.outputs_root, cfg.experiment.name).stage_dir("hpo", backbone.name)
    base = f"hpo_{backbone.name}"
    with resolve_variant(
        stage_dir, base, "hpo", backbone.name, study_key(cfg, backbone), "force_new"
    ) as first:
        set_status(first.variant, "complete")
    changed = load_config(path, ["hpo.seed=1"])
    with resolve_variant(
        stage_dir, base, "hpo", backbone.name, study_key(changed, backbone), "force_new"
    ):
        pass

    assert main(["status", "--config", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = [(r["variant"], r["status"], r["matches_config"]) for r in report["variants"]]
    assert rows == [("hpo_tiny-bert", "complete", True), ("hpo_tiny-bert_v2", "running", False)]
    assert main(["status", "--config", str(path)]) == 0
    table = capsys.readouterr().out
    assert "hpo_tiny-bert_v2" in table and "(config changed)" in table


@pytest.mark.slow
def test_console_script_and_module_are_the_same_cli(smoke_experiment: MakeExp) -> None:
    path = str(smoke_experiment(hpo={"k_folds": 1}))
    script = shutil.which("ray-pipeline", path=str(Path(sys.executable).parent))
    assert script is not None
    for argv in ([script], [sys.executable, "-m", "ray_pipeline"]):
        ok = subprocess.run(
            [*argv, "validate", "--config", str(DEMO)], capture_output=True, text=True
        )
        assert ok.returncode == 0, ok.stderr
        bad = subprocess.run([*argv, "validate", "--config", path], capture_output=True, text=True)
        assert bad.returncode == 2
        assert "hpo.k_folds" in bad.stderr and "greater than or equal to 2" in bad.stderr


def test_data_inspect(smoke_experiment: MakeExp, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(smoke_experiment())
    assert main(["data", "inspect", "--config", path]) == 0
    out = capsys.readouterr().out
    assert "train      160 rows" in out and "great 81 (50.6%), other 79 (49.4%)" in out
    assert "folds: 2 (stratified, seed 42)" in out
    assert main(["data", "inspect", "--config", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["test"]["rows_used"] == 46
    assert report["token_lengths"][0]["backbone"] == "tiny-bert"
    assert len(report["folds"]) == 2


def test_data_inspect_bad_data_exits_2(
    smoke_experiment: MakeExp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,score\nhello,great\n")
    assert (
        main(["data", "inspect", "--config", str(smoke_experiment()), f"data.train_file={bad}"])
        == 2
    )
    assert f"{bad}:2: missing column(s) review" in capsys.readouterr().err


def _reviews(path: Path, labels: list[str]) -> Path:
    """A training CSV in the smoke data's columns, one review per label given."""
    rows = [f"review {i} of the jar,{label}" for i, label in enumerate(labels)]
    path.write_text("review,score\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("command", [["validate"], ["data", "inspect"]])
def test_one_label_or_a_label_too_rare_for_the_folds_exits_2_with_the_counts(
    smoke_experiment: MakeExp,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    exp = str(smoke_experiment())
    single = _reviews(tmp_path / "single.csv", ["great"] * 12)
    assert main([*command, "--config", exp, f"data.train_file={single}"]) == 2
    err = capsys.readouterr().err
    assert "data.label_column: the training data" in err and "has 1 label(s) {'great': 12}" in err
    rare = _reviews(tmp_path / "rare.csv", ["great"] * 10 + ["other"] * 2)
    assert main([*command, "--config", exp, f"data.train_file={rare}", "hpo.k_folds=3"]) == 2
    err = capsys.readouterr().err
    assert "3 folds need at least 3 examples (of every label), but the rarest label has 2" in err
    assert "(label counts: {'great': 10, 'other': 2})" in err
    assert main([*command, "--config", exp, f"data.train_file={rare}", "hpo.k_folds=2"]) == 0
    assert not (tmp_path / "outputs").exists()


def test_the_dashboard_line_says_how_to_get_past_token_authentication(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray_pipeline.cluster import dashboard_line

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert dashboard_line("127.0.0.1:8265") == "http://127.0.0.1:8265"
    assert dashboard_line(None) == "not running"
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    line = dashboard_line("127.0.0.1:8265")
    assert line.startswith("http://127.0.0.1:8265 (token authentication")
    assert "`ray get-auth-token`" in line
