"""The package's reaches into its dependencies' internals (``ray_pipeline.internals``): each
guard passes on the installed versions, and where the internal is gone (deleted or renamed
here with monkeypatch, or a snapshot in another format) its fallback is taken with a warning,
never an error. No Ray cluster: Ray's classes are used as plain Python objects."""

from __future__ import annotations

import json
import re
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ray_pipeline import internals
from ray_pipeline.hpo import retries
from ray_pipeline.hpo.schedulers import make_scheduler
from ray_pipeline.hpo.trial_report import TrialReport
from ray_pipeline.hpo.tune_state import repair_recorded_checkpoints
from ray_pipeline.precision import supported
from ray_pipeline.schema import SchedulerConfig
from tests.conftest import REPO

PRIVATE_REACH = re.compile(
    r"\b(?:torch|ray|optuna|mlflow|transformers)(?:\.[A-Za-z]\w*)*\._[A-Za-z]\w*"
    r"|\.run_metadata\b|\._destroy\b|" + internals.MEDIAN_RULE_HOOK
)
"""A dependency's private name spelled in code: only ``internals`` may."""


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test sees the first warning of every internal (they are warned about once)."""
    monkeypatch.setattr(internals, "_warned", set())
    internals.checkpoint_loggers.cache_clear()
    yield
    internals.checkpoint_loggers.cache_clear()


# The table ------------------------------------------------------------------------------------


def test_every_row_is_a_name_of_the_module_and_of_the_docs_table() -> None:
    docs = (REPO / "docs" / "architecture.md").read_text()
    section = docs.split("## Dependency internals", 1)[1].split("\n## ", 1)[0]
    for row in internals.INTERNALS:
        assert hasattr(internals, row.name), row.name
        assert f"`{row.name}`" in section, f"docs/architecture.md lacks {row.name}"
        module = row.where.split(" ", 1)[0]
        assert (REPO / "ray_pipeline" / module).is_file(), row.where
    assert len({row.name for row in internals.INTERNALS}) == len(internals.INTERNALS)


def test_no_other_module_spells_a_dependencys_private_name() -> None:
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "ray_pipeline").rglob("*.py"))
        if path.name != "internals.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_REACH.search(line)
    ]
    assert found == [], "go through ray_pipeline/internals.py:\n" + "\n".join(found)


# torch ----------------------------------------------------------------------------------------


def test_mkldnn_probes_answer_on_this_torch() -> None:
    assert isinstance(internals.mkldnn_supports("bf16"), bool)
    assert isinstance(internals.mkldnn_supports("fp16"), bool)
    assert internals._warned == set()


def test_without_mkldnn_probes_a_cpu_runs_fp32_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace())
    with pytest.warns(RuntimeWarning, match="is taken as unsupported"):
        assert supported("cpu") == ("fp32",)
    assert supported("cpu") == ("fp32",)  # warned once


def _ones(self: torch.Tensor, p: float = 0.5, *, generator: Any = None) -> torch.Tensor:
    return self.fill_(1.0)


def _drawn(p: float = 0.0) -> torch.Tensor:
    return torch.empty(100).bernoulli_(p)


def test_a_cpu_kernel_goes_in_and_comes_out_on_this_torch() -> None:
    with internals.cpu_kernel("bernoulli_.float", _ones) as in_place:
        assert in_place and bool((_drawn() == 1).all())
    assert bool((_drawn() == 0).all())  # torch's own kernel is back
    assert internals._warned == set()


def test_without_a_way_to_take_it_out_no_kernel_goes_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch.library.Library, "_destroy")
    with (
        pytest.warns(RuntimeWarning, match="own CPU kernel"),
        internals.cpu_kernel("bernoulli_.float", _ones) as in_place,
    ):
        assert not in_place and bool((_drawn() == 0).all())


def test_a_refused_registration_leaves_torchs_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise RuntimeError("no such operator")

    monkeypatch.setattr(torch.library.Library, "impl", refuse)
    with (
        pytest.warns(RuntimeWarning, match="no such operator"),
        internals.cpu_kernel("bernoulli_.float", _ones) as in_place,
    ):
        assert not in_place and bool((_drawn() == 0).all())
    assert bool((_drawn() == 0).all())


def test_numpy_dropout_masks_fall_back_to_torchs(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray_pipeline.dropout_masks as dropout_masks

    monkeypatch.setattr(dropout_masks, "torch_draws_serially", lambda: True)
    monkeypatch.delattr(torch.library.Library, "_destroy")
    with pytest.warns(RuntimeWarning), dropout_masks.numpy_dropout_masks("cpu"):
        out = torch.nn.functional.dropout(torch.ones(10_000), 0.5, training=True)
    assert 0.4 < float((out == 0).float().mean()) < 0.6 and not dropout_masks._active


# Ray: the median stopping rule ------------------------------------------------------------------


class _Trial:
    def __init__(self, status: str) -> None:
        self.status = self.trial_id = status


class _Controller:
    """What the rule asks of Tune's controller: the live trials, one waiting to start."""

    def get_live_trials(self) -> list[_Trial]:
        return [_Trial("PENDING")]


def _decision(scheduler: Any) -> str:
    """The rule's decision on a trial's first report, with no other trial to compare it to."""
    result = {TrialReport.STEP: 1, TrialReport.SCORE: 0.5}
    return str(scheduler.on_trial_result(_Controller(), _Trial("RUNNING"), result))


def _median() -> Any:
    config = SchedulerConfig(type="median", grace_period=1, min_samples_required=3)
    return make_scheduler(config, k_folds=2, epochs=2, mode="max")


def test_the_median_rule_continues_a_trial_it_cannot_judge_where_rays_pauses_it() -> None:
    from ray.tune.schedulers import MedianStoppingRule, TrialScheduler

    assert internals.median_rule_hook() == internals.MEDIAN_RULE_HOOK
    stock = MedianStoppingRule(
        time_attr=TrialReport.STEP, metric=TrialReport.SCORE, mode="max", grace_period=1
    )
    assert _decision(stock) == TrialScheduler.PAUSE  # so the override is what continues it
    assert _decision(_median()) == TrialScheduler.CONTINUE
    assert internals._warned == set()


@pytest.mark.parametrize("change", ["renamed", "other parameters"])
def test_without_the_hook_the_median_rule_is_rays_own(
    monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    from ray.tune.schedulers import MedianStoppingRule

    hook = internals.MEDIAN_RULE_HOOK
    if change == "renamed":  # gone under the name read
        monkeypatch.delattr(MedianStoppingRule, hook)
    else:
        monkeypatch.setattr(MedianStoppingRule, hook, lambda self, trial: "CONTINUE")
    with pytest.warns(RuntimeWarning, match="stock rule"):
        scheduler = _median()
    assert isinstance(scheduler, MedianStoppingRule)
    assert hook not in type(scheduler).__dict__  # nothing of ours under the old name


# Ray: trials, Ray Train's report, loggers ---------------------------------------------------------


def test_a_trials_failures_are_read_from_rays_trial() -> None:
    from ray.tune.experiment import Trial

    assert internals.trial_failures(Trial("__fake", stub=True)) == 0
    assert internals._warned == set()


def test_a_trial_without_failures_goes_unnumbered() -> None:
    with pytest.warns(RuntimeWarning, match="not numbered"):
        assert internals.trial_failures(object()) is None


@pytest.fixture
def tune_controller(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Ray Tune's controller class with Ray's own failure handlers and no guard (also where a
    run in this process put it in place); as it was again after the test."""
    from ray.tune.execution.tune_controller import TuneController

    for name, _ in internals.TUNE_FAILURE_HANDLERS:
        method = getattr(TuneController, name)
        monkeypatch.setattr(TuneController, name, getattr(method, "__wrapped__", method))
    monkeypatch.setattr(TuneController, internals.TUNE_FAILURES_ONCE, False, raising=False)
    return TuneController


def test_the_guard_on_tunes_failure_handlers_goes_in_once(tune_controller: Any) -> None:
    rays = [getattr(tune_controller, name) for name, _ in internals.TUNE_FAILURE_HANDLERS]
    assert internals.tune_failures_once() and internals.tune_failures_once()
    guarded = [getattr(tune_controller, name) for name, _ in internals.TUNE_FAILURE_HANDLERS]
    assert [method.__wrapped__ for method in guarded] == rays  # wrapped once
    assert retries.reuse_trial_processes(True) and not retries.reuse_trial_processes(False)
    assert internals._warned == set()


Calls = list[tuple[str, str, BaseException]]


def _stand_ins(controller_class: Any, calls: Calls) -> dict[str, Callable[..., None]]:
    """Stand-ins for Ray 2.60's two handlers, with their parameters: each records its call;
    ``_actor_failed`` handles a waiting trial's loss through ``_trial_task_failure``, as
    Ray's does."""

    def _actor_failed(self: Any, tracked_actor: Any, exception: Exception) -> None:
        trial = self._actor_to_trial.pop(tracked_actor)
        calls.append(("actor", trial.status, exception))
        if trial.status == "PENDING":
            controller_class._trial_task_failure(self, trial, exception=exception)

    def _trial_task_failure(self: Any, trial: Any, exception: Exception) -> None:
        calls.append(("task", trial.status, exception))

    return {"_actor_failed": _actor_failed, "_trial_task_failure": _trial_task_failure}


@pytest.mark.parametrize("status", ["PENDING", "RUNNING"])
def test_a_lost_process_is_one_failure_of_its_trial(
    tune_controller: Any, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    """Ray 2.60 calls both handlers with one exception: a waiting (PENDING) trial's loss is
    handled by the first, so the second (its reset's) is skipped; a running trial's by the
    second (the first only cleans up). Any other failure reaches Ray's handler."""
    calls: Calls = []
    for name, stand_in in _stand_ins(tune_controller, calls).items():
        monkeypatch.setattr(tune_controller, name, stand_in)
    assert internals.tune_failures_once()
    trial, actor = _Trial(status), object()
    controller = types.SimpleNamespace(_actor_to_trial={actor: trial}, _resetting_trials={trial})
    lost, later = OSError("lost"), OSError("later")
    tune_controller._actor_failed(controller, actor, lost)
    tune_controller._trial_task_failure(controller, trial, lost)  # the task's own handler
    tune_controller._trial_task_failure(controller, trial, later)
    assert calls == [("actor", status, lost), ("task", status, lost), ("task", status, later)]
    # A trial whose reset was cut short is no longer waiting for it.
    assert controller._resetting_trials == (set() if status == "PENDING" else {trial})


@pytest.mark.parametrize("change", ["renamed", "other parameters"])
def test_without_tunes_handlers_trials_get_fresh_processes(
    tune_controller: Any, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    if change == "renamed":
        monkeypatch.delattr(tune_controller, "_actor_failed")
    else:
        monkeypatch.setattr(tune_controller, "_trial_task_failure", lambda self, trial: None)
    rays = {
        name: getattr(tune_controller, name, None) for name, _ in internals.TUNE_FAILURE_HANDLERS
    }
    with pytest.warns(RuntimeWarning, match="reuse_actors off"):
        assert not retries.reuse_trial_processes(True)
    assert not internals.tune_failures_once()  # warned once
    assert {name: getattr(tune_controller, name, None) for name in rays} == rays  # untouched
    assert not getattr(tune_controller, internals.TUNE_FAILURES_ONCE)


def test_ray_train_reports_a_checkpoint_under_the_key_read() -> None:
    assert internals.train_checkpoint_key() == internals.CHECKPOINT_PATH_KEY
    assert internals._warned == set()


def test_without_rays_key_the_one_read_from_260_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.tune.integration import ray_train

    monkeypatch.delattr(ray_train, "CHECKPOINT_PATH_KEY")
    with pytest.warns(RuntimeWarning, match="checkpoint_path"):
        assert internals.train_checkpoint_key() == internals.CHECKPOINT_PATH_KEY


def test_rays_checkpoint_loggers_are_modules_of_this_ray() -> None:
    assert internals.checkpoint_loggers() == internals.CHECKPOINT_LOGGERS


def test_a_logger_module_ray_no_longer_has_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = ("ray.train._gone.storage", "no_such_package.storage")
    monkeypatch.setattr(internals, "CHECKPOINT_LOGGERS", (*internals.CHECKPOINT_LOGGERS, *gone))
    assert internals.checkpoint_loggers() == internals.CHECKPOINT_LOGGERS[: -len(gone)]


# Ray: Tune's experiment snapshot ------------------------------------------------------------------


def _rays_own_snapshot() -> str:
    """A snapshot with one running trial, its state and metadata written by Ray's ``Trial``."""
    from ray.tune.experiment import Trial

    trial: Any = Trial("__fake", stub=True, trial_id="a")
    trial.relative_logdir = "trial_3"
    trial.set_status(Trial.RUNNING)
    trial.update_last_result({"checkpoint_dir_name": "checkpoint_000003"})
    return json.dumps({"trial_data": [list(trial.get_json_state())], "runner_data": {}})


def test_rays_own_snapshot_is_read() -> None:
    trials = internals.tune_snapshot_trials(_rays_own_snapshot(), "experiment_state-x.json")
    assert trials is not None and len(trials) == 1
    assert trials[0].directory == "trial_3" and trials[0].checkpoint == "checkpoint_000003"
    assert trials[0].status in internals.TUNE_STATUSES
    assert internals._warned == set()


UNKNOWN_SNAPSHOTS = {
    "not json": "{",
    "no trial_data": json.dumps({"trials": []}),
    "a trial as one record": json.dumps({"trial_data": [{"status": "RUNNING"}]}),
    "an unknown status": json.dumps(
        {"trial_data": [[json.dumps({"relative_logdir": "t", "status": "GONE"}), "{}"]]}
    ),
    "no last_result": json.dumps(
        {"trial_data": [[json.dumps({"relative_logdir": "t", "status": "RUNNING"}), "{}"]]}
    ),
    "last_result a list": json.dumps(
        {
            "trial_data": [
                [
                    json.dumps({"relative_logdir": "t", "status": "RUNNING"}),
                    json.dumps({"last_result": [1]}),
                ]
            ]
        }
    ),
}


@pytest.mark.parametrize("text", UNKNOWN_SNAPSHOTS.values(), ids=UNKNOWN_SNAPSHOTS.keys())
def test_a_snapshot_in_another_format_is_not_read(text: str) -> None:
    with pytest.warns(RuntimeWarning, match="not in the format"):
        assert internals.tune_snapshot_trials(text, "experiment_state-x.json") is None


def test_a_round_with_such_a_snapshot_is_left_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "experiment_state-2026-11-30_01-00-00.json").write_text('{"trials": {}}')
    checkpoint = tmp_path / "trial_1" / "checkpoint_000004"
    checkpoint.mkdir(parents=True)
    with pytest.warns(RuntimeWarning, match="restoring without checking"):
        assert repair_recorded_checkpoints(tmp_path) == []
    assert checkpoint.is_dir()
