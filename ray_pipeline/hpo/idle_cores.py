"""No idle core in the search's tail: once a round will launch no more trials, the CPUs its
finished trials freed go to the trials still running on the same node, as torch threads.

Ray reserves a one-worker CPU trial ``resources.cpus_per_worker`` CPUs, and its torch trains
with that many threads (``resources.match_threads``). While trials wait to be launched a freed
slot is the next trial's; once the searcher has launched its last trial (``num_samples``
reached, or a budget spent) and none is pending, a freed slot would stay idle until the round
ends. Then each running trial's fold loop, at the start of every epoch, asks the round's
``IdleCores`` actor how many threads it may use: its own CPUs plus an even share of its
node's CPUs that no trial holds. The extra threads are not reserved in Ray; a retried trial
that Ray places on a freed slot registers, and the others give their share back at their next
epoch. GPU trials and worker-group trials (DDP, ``trial_backend: train``) keep their own
CPUs. Public Ray APIs only: a named actor, ``ray.nodes()``, a Tune callback.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from ray_pipeline.hpo.progress import SearchProgress
from ray_pipeline.hpo.search import TRIAL_NUMBER, StudySearch
from ray_pipeline.resources import threads_for

if TYPE_CHECKING:
    from ray.tune.experiment import Trial


@dataclass(frozen=True)
class Holder:
    """A running trial: the node it trains on and the CPUs Ray reserved it."""

    node: str
    cpus: int


def shares(nodes: dict[str, int], holders: dict[int, Holder]) -> dict[int, int]:
    """The torch threads of each running trial (by number): its reserved CPUs plus an even
    share of its node's CPUs no trial holds (lower trial numbers take the remainder)."""
    out = {number: holder.cpus for number, holder in holders.items()}
    for node, cpus in nodes.items():
        here = sorted(n for n, h in holders.items() if h.node == node)
        free = cpus - sum(holders[n].cpus for n in here)
        if not here or free <= 0:
            continue
        each, rest = divmod(free, len(here))
        for index, number in enumerate(here):
            out[number] += each + (1 if index < rest else 0)
    return out


class IdleCores:
    """The round's ledger of running CPU trials (a Ray actor with no CPU of its own)."""

    NODES_EVERY_S = 30.0
    """How often the CPUs of the cluster's nodes are read again (nodes may come and go)."""

    def __init__(self) -> None:
        self.holders: dict[int, Holder] = {}
        self.launching = True
        self.waiting: set[int] = set()
        """Running trials that have not asked yet (their node and CPUs are not known)."""
        self.granted: dict[int, int] = {}
        self.nodes: dict[str, int] = {}
        self.nodes_read = -math.inf

    def close(self, running: list[int]) -> None:
        """The round launches no more trials, and ``running`` are its running ones: freed CPUs
        may be shared once each of them has asked (until then some hold CPUs not yet known)."""
        self.launching = False
        self.waiting = set(running) - set(self.holders)

    def threads(self, number: int, node: str, cpus: int) -> int:
        """Trial ``number`` on ``node`` with ``cpus`` reserved: the threads for its next epoch."""
        self.holders[number] = Holder(node, cpus)
        self.waiting.discard(number)
        lend = not self.launching and not self.waiting
        threads = shares(self._nodes(), self.holders)[number] if lend else cpus
        self.granted[number] = threads
        return threads

    def _nodes(self) -> dict[str, int]:
        now = time.monotonic()
        if now - self.nodes_read > self.NODES_EVERY_S:
            self.nodes, self.nodes_read = _node_cpus(), now
        return self.nodes

    def leave(self, number: int) -> None:
        """Trial ``number`` ended (or failed): its CPUs are free."""
        self.holders.pop(number, None)
        self.waiting.discard(number)
        self.granted.pop(number, None)

    def busy(self) -> int:
        """Threads the running trials train with now."""
        return sum(self.granted.values())


def _node_cpus() -> dict[str, int]:
    """The CPUs of each alive node, by node id."""
    import ray

    return {
        str(n["NodeID"]): int(n["Resources"].get("CPU", 0))
        for n in ray.nodes()  # type: ignore[no-untyped-call]
        if n.get("Alive")
    }


def start(name: str) -> Any:
    """The round's ``IdleCores`` actor, named ``name`` so its trials find it."""
    import ray

    actor = ray.remote(num_cpus=0)(IdleCores)
    return actor.options(name=name, get_if_exists=True).remote()


def stop(actor: Any) -> None:
    import ray

    ray.kill(actor)


class Lender:
    """A trial's side: the threads its next epoch may use, asked of the round's actor (its
    own CPUs when the actor is gone or slow)."""

    ASK_TIMEOUT_S = 5.0

    def __init__(self, name: str, number: int, cpus: float) -> None:
        self.name, self.number, self.cpus = name, number, threads_for(cpus)
        self.actor: Any | None = None

    def threads(self) -> int:
        import ray

        try:
            if self.actor is None:
                self.actor = ray.get_actor(self.name)
            node = ray.get_runtime_context().get_node_id()
            ref = self.actor.threads.remote(self.number, node, self.cpus)
            return int(ray.get(ref, timeout=self.ASK_TIMEOUT_S))
        except (ValueError, ray.exceptions.RayError):
            return self.cpus  # no such actor (a restored round), or it did not answer

    def leave(self) -> None:
        if self.actor is not None:
            self.actor.leave.remote(self.number)


class LendIdleCores(Callback):
    """Tells the round's ``IdleCores`` actor (named ``name``) when the round will launch no
    more trials (every trial it may launch is created and none waits: ``num_samples`` of them,
    or the searcher finished on a budget) and which trials ended; keeps ``progress.cores``
    (busy threads of the cluster's CPUs) current for the status line. Tune pickles its
    callbacks into the round's snapshot: the actor is found by name, never pickled, and a
    restored round's callback, whose actor is gone, does nothing."""

    def __init__(
        self, name: str, search: StudySearch, num_samples: int, progress: SearchProgress
    ) -> None:
        import ray

        self.name, self.search, self.progress = name, search, progress
        self.num_samples, self.launching = num_samples, True
        self.cpus = int(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]
        self.handle: Any | None = None
        self.asked: Any | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "handle": None, "asked": None, "launching": False}

    def _actor(self) -> Any | None:
        import ray

        if self.handle is None:
            try:
                self.handle = ray.get_actor(self.name)
            except ValueError:
                return None
        return self.handle

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        import ray

        actor = self._actor()
        if actor is None:
            return
        waiting = any(t.status == "PENDING" for t in trials)
        launched = len(trials) >= self.num_samples or self.search.stop_reason is not None
        if self.launching and launched and not waiting:
            running = [int(t.config.get(TRIAL_NUMBER, -1)) for t in trials if t.status == "RUNNING"]
            actor.close.remote(running)
            self.launching = False
        if self.asked is not None and ray.wait([self.asked], timeout=0)[0]:
            try:
                self.progress.cores = (int(ray.get(self.asked)), self.cpus)
            except ray.exceptions.RayError:
                self.handle = None
            self.asked = None
        if self.asked is None:
            self.asked = actor.busy.remote()

    def _left(self, trial: Trial) -> None:
        actor = self._actor()
        if actor is not None:
            actor.leave.remote(int(trial.config.get(TRIAL_NUMBER, -1)))

    def on_trial_complete(self, iteration: int, trials: Any, trial: Trial, **info: Any) -> None:
        self._left(trial)

    def on_trial_error(self, iteration: int, trials: Any, trial: Trial, **info: Any) -> None:
        self._left(trial)
