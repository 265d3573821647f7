"""MLflow tracking: the one module that imports ``mlflow``, and knows nothing of the stages.

Where runs go: ``tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the embedded
store ``sqlite:///<outputs>/<experiment>/mlflow.db``. The generic operations on runs: open one
found again by its tags (or create it), log, tag, attach, end; ``tracked`` ends a run FINISHED,
FAILED or KILLED on every path of the block that uses it. Which run each stage opens, its name
and its tags are ``run_tree.py``'s. Runs are created with explicit parent ids from whichever Ray
process holds the data, so the nesting holds across processes and nodes.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from ray_pipeline.console import redact
from ray_pipeline.errors import ConfigError
from ray_pipeline.internals import MLFLOW_EXPERIMENT_KIND_TAG
from ray_pipeline.lease import process_gone, process_identity
from ray_pipeline.paths import OutputsLayout
from ray_pipeline.schema import PipelineConfig, resolved

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

TAG = "ray_pipeline."
PARENT_TAG = "mlflow.parentRunId"
DRIVER_TAG = f"{TAG}driver"
RunKind = Literal["variant", "trial", "fold", "benchmark", "selection"]
EndStatus = Literal["FINISHED", "FAILED", "KILLED"]
_REACH_TIMEOUT_S = 3.0
SERVER_SCHEMES = frozenset({"http", "https", "databricks", "databricks-uc", "uc"})
"""Tracking URIs whose server keeps the artifacts (``mlflow server``, Databricks)."""


class RunRef(BaseModel):
    """A run, as a plain value that crosses Ray boundaries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_uri: str
    experiment_id: str
    run_id: str
    driver: str | None = None
    """The driver process (``lease.process_identity``) of the pipeline run that opened it or
    its top-level run: tagged on every run, so a later run ends the ones it left RUNNING."""


R = TypeVar("R", bound=RunRef | None)


@contextmanager
def tracked(run: R, *, children: bool = False, unless_ended: bool = False) -> Iterator[R]:
    """Use ``run`` (None: tracking off) in the block, then end it: FINISHED, KILLED when the
    block was interrupted (``KeyboardInterrupt``), FAILED on any other error. With
    ``children``, its runs still open end with it on an error (a trial cut off); with
    ``unless_ended``, an error leaves a run that something else already ended as it is (the
    stage ends an interrupted trial's run KILLED)."""
    try:
        yield run
    except BaseException as exc:
        if run is not None:
            status: EndStatus = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            if children:
                end_open_runs(run, status)
            end(run, status, only_if_running=unless_ended)
        raise
    if run is not None:
        end(run)


def tracking_uri(config: PipelineConfig) -> str | None:
    """Where runs go, or None when tracking is off."""
    if not config.tracking.enabled:
        return None
    if config.tracking.tracking_uri:
        return config.tracking.tracking_uri
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    return f"sqlite:///{OutputsLayout.of(config).mlflow_db}"


def check_tracking_for_nodes(config: PipelineConfig, nodes: int) -> None:
    """With ``storage.uri`` on several nodes, refuse a store on the driver's disk: trials
    open their runs on whichever node they run, where that file is out of reach."""
    uri = tracking_uri(config)
    if nodes < 2 or config.storage.uri is None or uri is None:
        return
    if uri.startswith(("http://", "https://", "databricks")):
        return
    raise ConfigError.at(
        "tracking.tracking_uri",
        f"{redact(uri)} is on the driver's disk, which the other {nodes - 1} node(s) cannot reach "
        "(storage.uri is set: the nodes share no filesystem). Run an MLflow server every node "
        "reaches and set tracking.tracking_uri (or MLFLOW_TRACKING_URI) to it, or set "
        "tracking.enabled=false; see docs/cluster.md",
    )


def check_tracking(config: PipelineConfig) -> None:
    """Refuse an unreachable tracking server at once (a few seconds, not MLflow's retries)."""
    uri = tracking_uri(config)
    if uri is None or not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_REACH_TIMEOUT_S):
            return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError.at(
            "tracking.tracking_uri",
            f"MLflow server {redact(uri)} is not reachable ({redact(str(reason))}); start it, fix "
            "tracking.tracking_uri / MLFLOW_TRACKING_URI, or set tracking.enabled=false",
        ) from exc


def run_tags(kind: RunKind, parent: str | None = None, **values: Any) -> dict[str, str]:
    """Tags of a run: its kind, its parent, and identity values (stage, backbone, variant,
    study_key_hash, trial, trial_key_hash, fold, lineage ...) under the ``ray_pipeline.`` prefix
    (``redact``ed: no credential of a URI reaches MLflow)."""
    values = {k: redact(str(v)) for k, v in values.items() if v is not None}
    tags = {f"{TAG}kind": kind, **{f"{TAG}{k}": v for k, v in values.items()}}
    if parent is not None:
        tags[PARENT_TAG] = parent
    return tags


def _client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(uri)


EXPERIMENT_KIND = {MLFLOW_EXPERIMENT_KIND_TAG: "custom_model_development"}
"""The UI's ExperimentKind "custom model development" (shown in the experiment's header). It
does not choose the page the UI opens on: see ``ui_line``."""


def experiment_id(uri: str, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, created if missing (a concurrent creator wins the race harmlessly)
    with its artifacts at ``artifact_location`` (None: the store's default) and tagged
    ``EXPERIMENT_KIND``; an existing experiment without a kind gets that tag."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    existing = client.get_experiment_by_name(name)
    if existing is None:
        try:
            return str(
                client.create_experiment(
                    name, artifact_location=artifact_location, tags=EXPERIMENT_KIND
                )
            )
        except MlflowException:
            existing = client.get_experiment_by_name(name)
            if existing is None:
                raise
    for key, value in EXPERIMENT_KIND.items():
        if key not in existing.tags:  # ours from before the tag, or the user's without a kind
            client.set_experiment_tag(existing.experiment_id, key, value)
    return str(existing.experiment_id)


def _find(ref_uri: str, exp: str, tags: dict[str, str]) -> Any | None:
    clauses = " and ".join(f"tags.`{k}` = '{v}'" for k, v in sorted(tags.items()))
    runs = _client(ref_uri).search_runs([exp], filter_string=clauses, max_results=1)
    return runs[0] if runs else None


def open_run(
    uri: str, exp: str, name: str, tags: dict[str, str], key: dict[str, str], driver: str
) -> RunRef:
    """The run whose tags include ``key`` (set RUNNING again), or a new one named ``name``;
    tagged with its ``driver``."""
    client = _client(uri)
    tags = {**tags, DRIVER_TAG: driver}
    found = _find(uri, exp, key)
    if found is not None:
        client.update_run(found.info.run_id, status="RUNNING")
        for tag, value in tags.items():
            client.set_tag(found.info.run_id, tag, value)
        run_id = found.info.run_id
    else:
        run_id = client.create_run(exp, run_name=name, tags=tags).info.run_id
    return RunRef(tracking_uri=uri, experiment_id=exp, run_id=run_id, driver=driver)


def end_orphaned_runs(config: PipelineConfig) -> list[str]:
    """End KILLED every run of the experiment left RUNNING by a pipeline run whose driver is
    gone (``lease.process_gone``: known only on the machine it ran on); a run of a live
    driver (a concurrent run) is left alone. Returns the drivers whose runs were ended."""
    where = _experiment(config)
    if where is None:
        return []
    uri, exp = where
    client = _client(uri)
    gone: set[str] = set()
    query = "attributes.status = 'RUNNING'"
    for run in client.search_runs([exp], filter_string=query, max_results=5000):
        driver = run.data.tags.get(DRIVER_TAG)
        if driver and process_gone(driver):
            client.set_terminated(run.info.run_id, "KILLED")
            gone.add(driver)
    return sorted(gone)


def _experiment(config: PipelineConfig) -> tuple[str, str] | None:
    uri = tracking_uri(config)
    if uri is None:
        return None
    # A server stores artifacts where it was told to. Any other store (the embedded SQLite
    # file, or a database the user named) would put them in ./mlruns of whatever directory
    # the run started in: they go under outputs/ instead.
    server = (urllib.parse.urlsplit(uri).scheme or uri) in SERVER_SCHEMES  # bare "databricks"
    artifacts = OutputsLayout.of(config).mlflow_artifacts
    location = None if server else artifacts.resolve().as_uri()
    name = resolved(config.tracking.experiment_name, "tracking.experiment_name")
    return uri, experiment_id(uri, name, location)


def ui_line(config: PipelineConfig) -> str | None:
    """Where to look at the runs (None: tracking off). MLflow 3's UI opens an experiment on its
    GenAI overview whatever the experiment's kind tag (its GenAI / Model training switch starts
    on GenAI); ``workflowType=machine_learning`` in the URL opens the runs table."""
    where = _experiment(config)
    if where is None:
        return None
    uri, exp = where
    uri = redact(uri)  # a line people read
    page = f"#/experiments/{exp}?workflowType=machine_learning"
    if (urllib.parse.urlsplit(uri).scheme or uri) in SERVER_SCHEMES:
        return f"mlflow: {uri.rstrip('/')}/{page}"
    return f"mlflow: `mlflow ui --backend-store-uri {uri}`, then http://127.0.0.1:5000/{page}"


def open_stage_run(
    config: PipelineConfig, kind: RunKind, name: str, key: dict[str, Any], **values: Any
) -> RunRef | None:
    """A top-level run found again by ``kind`` + ``key`` tags (else created as ``name``) and
    tagged with ``values`` too; None when tracking is off."""
    where = _experiment(config)
    if where is None:
        return None
    uri, exp = where
    key_tags = run_tags(kind, **key)
    tags = {**key_tags, **run_tags(kind, **values)}
    return open_run(uri, exp, name, tags, key_tags, process_identity())


def register_model(run: RunRef, model_dir: Path, name: str) -> str:
    """Attach ``model_dir`` to ``run`` as ``model/`` and register it as a new version of
    ``name`` in the model registry; returns the version."""
    from mlflow.exceptions import MlflowException

    client = _client(run.tracking_uri)
    client.log_artifacts(run.run_id, str(model_dir), "model")
    with contextlib.suppress(MlflowException):  # it exists: add a version
        client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.run_id}/model", run_id=run.run_id)
    return str(version.version)


def find_run_id(config: PipelineConfig, kind: RunKind, **key: Any) -> str | None:
    """The id of the run tagged ``kind`` + ``key`` (for lineage tags), or None."""
    where = _experiment(config)
    if where is None:
        return None
    found = _find(where[0], where[1], run_tags(kind, **key))
    return None if found is None else str(found.info.run_id)


def find_child(parent: RunRef, kind: RunKind, **identity: Any) -> RunRef | None:
    """The child of ``parent`` of ``kind`` with the ``identity`` tags (e.g. ``trial=3``), or
    None."""
    key = run_tags(kind, parent=parent.run_id, **identity)
    found = _find(parent.tracking_uri, parent.experiment_id, key)
    return None if found is None else parent.model_copy(update={"run_id": found.info.run_id})


def open_child(parent: RunRef, kind: RunKind, name: str, **values: Any) -> RunRef:
    """A child of ``parent``, found again by kind and identity (a retried trial keeps its run)."""
    identity = {k: values[k] for k in ("trial", "fold") if values.get(k) is not None}
    key = run_tags(kind, parent=parent.run_id, **identity)
    return open_run(
        parent.tracking_uri,
        parent.experiment_id,
        name,
        run_tags(kind, parent=parent.run_id, **values),
        key,
        parent.driver or process_identity(),
    )


def log(
    run: RunRef,
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    step: int = 0,
) -> None:
    """Log numeric metrics (non-numbers skipped) and params (``redact``ed) to ``run``."""
    from mlflow.entities import Param

    param_list = [Param(k, redact(str(v))) for k, v in (params or {}).items()]
    _client(run.tracking_uri).log_batch(
        run.run_id, metrics=_metric_list({step: metrics or {}}), params=param_list
    )


def logged(run: RunRef, key: str) -> dict[int, float]:
    """What ``run`` logged as metric ``key``: the latest value at each step."""
    history = _client(run.tracking_uri).get_metric_history(run.run_id, key)
    return {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}


def log_history(run: RunRef, points: Mapping[int, Mapping[str, Any]]) -> None:
    """Log learning curves to ``run`` in one call: each step's numeric metrics at that step
    (``{epoch: {"train_loss": ..., ...}}``; None and other non-numbers skipped)."""
    metric_list = _metric_list(points)
    if metric_list:
        _client(run.tracking_uri).log_batch(run.run_id, metrics=metric_list)


def _metric_list(points: Mapping[int, Mapping[str, Any]]) -> list[Metric]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(k, float(v), now, step)
        for step, metrics in points.items()
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]


def set_tags(run: RunRef, **values: Any) -> None:
    """Add ``ray_pipeline.`` tags to a run (``redact``ed)."""
    client = _client(run.tracking_uri)
    for key, value in values.items():
        client.set_tag(run.run_id, f"{TAG}{key}", redact(str(value)))


def log_artifact(run: RunRef, path: str) -> None:
    """Attach a file to ``run``."""
    _client(run.tracking_uri).log_artifact(run.run_id, path)


def end(run: RunRef, status: EndStatus = "FINISHED", *, only_if_running: bool = False) -> None:
    """End ``run`` with ``status`` (with ``only_if_running``: unless something already ended it)."""
    client = _client(run.tracking_uri)
    if only_if_running and client.get_run(run.run_id).info.status != "RUNNING":
        return
    client.set_terminated(run.run_id, status)


def end_open_runs(parent: RunRef, status: EndStatus = "KILLED") -> int:
    """End every run under ``parent`` (children and grandchildren) still RUNNING: runs left by
    a killed process, or by a trial a scheduler stopped. Returns how many were ended."""
    client = _client(parent.tracking_uri)
    ended, queue = 0, [parent.run_id]
    while queue:
        current = queue.pop()
        query = f"tags.`{PARENT_TAG}` = '{current}'"
        for run in client.search_runs([parent.experiment_id], filter_string=query):
            queue.append(run.info.run_id)
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status)
                ended += 1
    return ended
