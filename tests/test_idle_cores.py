"""No idle core in the search's tail (hpo/idle_cores.py): once a round launches no more
trials, the CPUs finished trials freed go to the trials still running on the same node. The
shares on their own, and on a real local Ray cluster: three one-CPU trials on two CPUs, where
the third trains its last epochs with both cores and the first two never take more than their
own."""

from __future__ import annotations

import pytest

from ray_pipeline.artifacts import read_json
from ray_pipeline.cli import main
from ray_pipeline.hpo.idle_cores import Holder, shares
from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.resources import Node, plan_trials
from ray_pipeline.schema import ResourcesConfig
from tests.conftest import MakeExp
from tests.test_progress import Clock, _progress


def test_free_cores_are_shared_evenly_among_the_trials_on_their_node() -> None:
    nodes = {"a": 8, "b": 4}
    # Two trials of 2 CPUs on node a share its 4 free CPUs; b's trial takes b's 3 free ones.
    holders = {3: Holder("a", 2), 5: Holder("a", 2), 7: Holder("b", 1)}
    assert shares(nodes, holders) == {3: 4, 5: 4, 7: 4}
    # An odd remainder goes to the lower trial number; cores never cross nodes.
    holders = {3: Holder("a", 1), 5: Holder("a", 2), 7: Holder("b", 4)}
    assert shares(nodes, holders) == {3: 4, 5: 4, 7: 4}
    assert shares({"a": 8}, {1: Holder("a", 3), 2: Holder("a", 3), 4: Holder("a", 1)}) == {
        1: 4,
        2: 3,
        4: 1,
    }
    # A full node (or one that lends more than it has, after a retry was placed) lends nothing.
    assert shares({"a": 2}, {1: Holder("a", 1), 2: Holder("a", 1)}) == {1: 1, 2: 1}
    assert shares({"a": 2}, {1: Holder("a", 2), 2: Holder("a", 1)}) == {1: 2, 2: 1}
    assert shares({"a": 2}, {}) == {}


def test_the_status_line_shows_the_cores_training() -> None:
    progress = _progress(Clock())
    progress.started(2)
    assert "cores training" not in progress.status()  # not lent (or not known yet)
    progress.cores = (2, 2)
    assert "2/2 cores training" in progress.status()


@pytest.mark.slow
def test_the_last_trial_takes_the_cores_the_others_freed(
    ray_cluster: None, smoke_experiment: MakeExp
) -> None:
    path = smoke_experiment()
    # Trials 0 and 1 train 1 epoch per fold, trial 2 fifteen: it is alone for most of its
    # epochs whichever of the first two ends first. (With six, on a loaded machine, fewer than
    # half of its 12 epochs had two threads: a trial that is slow to start, in a fresh process,
    # can outlast most of one that took a finished trial's warm one.)
    space = "{type: int, low: 1, high: 15}"
    starts = [f"{{learning_rate: 0.002, weight_decay: 0.0, epochs: {e}}}" for e in (1, 1, 15)]
    overrides = [
        "hpo.num_samples=3",
        f"hpo.search_space.epochs={space}",
        f"hpo.enqueue=[{', '.join(starts)}]",
        "hpo.sampler=random",
        "resources.cpus_per_worker=1",
        "resources.workers_per_trial=1",
        "tracking.enabled=false",
    ]
    assert main(["hpo", "--config", str(path), *overrides]) == 0
    variant = path.parent / "outputs" / "t" / "hpo" / "tiny-bert" / "hpo_tiny-bert"
    result = read_json(variant / "hpo.json", HpoResult)
    threads = {t.number: [p.threads for f in t.folds for p in f.history] for t in result.trials}
    assert [len(threads[n]) for n in (0, 1, 2)] == [2, 2, 30], threads
    # Trials 0 and 1 ran side by side while trial 2 waited: their own core each, always
    # (no core is lent while a trial may still be launched into it).
    assert threads[0] == [1, 1] and threads[1] == [1, 1], threads
    # Trial 2 started when one of them ended and trained alone once the other did: from
    # then on it is lent the freed core (an epoch whose ask timed out keeps its own one).
    assert set(threads[2]) <= {1, 2} and threads[2].count(2) >= 15, threads


def test_only_one_worker_cpu_trials_are_lent_cores_and_only_when_asked() -> None:
    nodes = [Node(cpus=4, gpus=2)]

    def lends(**resources: object) -> bool:
        return plan_trials(ResourcesConfig.model_validate(resources), nodes).lend_idle_cores

    assert lends()
    assert not lends(lend_idle_cores=False)
    assert not lends(gpus_per_worker=0.5)  # a GPU trial's threads only feed its GPU
    assert not lends(workers_per_trial=2)  # a DDP worker group keeps its CPUs
    assert not lends(trial_backend="train")


def test_nothing_is_lent_until_every_running_trial_has_asked() -> None:
    import time

    from ray_pipeline.hpo.idle_cores import IdleCores

    ledger = IdleCores()
    ledger.nodes, ledger.nodes_read = {"a": 4}, time.monotonic()  # one 4-CPU node, read now
    assert ledger.threads(1, "a", 1) == 1  # trials may still be launched: its own CPU
    ledger.close([1, 2, 3])  # 2 and 3 run but still load their model: their CPUs are unknown
    assert ledger.threads(1, "a", 1) == 1
    assert ledger.threads(2, "a", 1) == 1
    assert ledger.threads(3, "a", 1) == 1  # all three known: the one free CPU is lent ...
    assert ledger.threads(1, "a", 1) == 2 and ledger.threads(2, "a", 1) == 1  # ... to trial 1
    ledger.leave(3)
    assert ledger.threads(1, "a", 1) == 2 and ledger.threads(2, "a", 1) == 2
    assert ledger.busy() == 4
