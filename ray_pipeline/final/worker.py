"""The epoch loop of final training, the same on one process or on every DDP worker: every
epoch on all training data, an epoch checkpoint written by rank 0, test-set evaluation after
the last one. Knows nothing of Tune; the ``Session`` says where it runs.

Epoch checkpoints are the variant's own (``checkpoints/epoch_<n>/``, renamed into place when
complete), not Ray Train's: any attempt, with any number of workers, resumes after the last
one, so a spot cluster that comes back smaller continues the same refit. Each holds the
training state (model, optimiser, scheduler) and the epoch records; the last epoch's also
holds the model and tokenizer as export takes them (``model/``) and the test metrics.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_pipeline.console import STATUS_EVERY_S, duration
from ray_pipeline.data.encode import encode
from ray_pipeline.data.splits import load_splits
from ray_pipeline.final.results import EpochRecord, FinalJob, FinalState
from ray_pipeline.layout_names import (
    CHECKPOINT_MODEL,
    FINAL_EPOCH_PREFIX,
    FINAL_STATE,
    TRAINING_STATE,
)
from ray_pipeline.metrics import class_scores, compute_metrics, confusion
from ray_pipeline.models import build_model, load_tokenizer
from ray_pipeline.paths import is_uri
from ray_pipeline.precision import Amp, resolve
from ray_pipeline.sessions import Session, TaskSession, TrainSession, quiet_checkpoints
from ray_pipeline.storage import (
    children,
    delete,
    is_file,
    join,
    local_copy,
    name_of,
    publish,
    read_text,
)
from ray_pipeline.training import (
    batches,
    epoch_shard,
    labelled_predictions,
    make_optimizer,
    optimizer_steps,
    train_epoch,
)

if TYPE_CHECKING:
    import torch


def epoch_checkpoints(directory: str | PathLike[str]) -> list[str]:
    """The complete epoch checkpoints in ``directory`` (a place: a path, or under
    ``storage.uri``), oldest first."""
    found = [
        join(directory, name)
        for name in children(directory, FINAL_EPOCH_PREFIX)
        if is_file(join(directory, name, FINAL_STATE))
    ]
    return sorted(found, key=lambda p: int(name_of(p)[len(FINAL_EPOCH_PREFIX) :]))


def read_state(checkpoint: str | PathLike[str]) -> FinalState:
    return FinalState.model_validate_json(read_text(join(checkpoint, FINAL_STATE)))


def _save(
    job: FinalJob,
    state: FinalState,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    amp: Amp,
    tokenizer: Any,
) -> None:
    """Write the checkpoint after ``state``'s last epoch aside, put it in place (its state file
    last: it marks the checkpoint complete), and keep the newest ``job.keep_checkpoints``."""
    import torch

    root = job.checkpoints
    final = join(root, f"{FINAL_EPOCH_PREFIX}{state.next_epoch:04d}")
    if is_uri(root):
        aside = Path(tempfile.mkdtemp(prefix=f"{name_of(final)}-"))
    else:  # beside its place: renamed into it
        Path(root).mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(prefix=f".{name_of(final)}-", dir=root))
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": amp.state_dict(),
        },
        aside / TRAINING_STATE,
    )
    if state.next_epoch == job.training.epochs:  # what export takes (training state resumes)
        model.save_pretrained(aside / CHECKPOINT_MODEL)
        tokenizer.save_pretrained(aside / CHECKPOINT_MODEL)
    (aside / FINAL_STATE).write_text(state.model_dump_json())
    publish(aside, final, last=FINAL_STATE)  # the last epoch again: now with its test metrics
    for old in epoch_checkpoints(root)[: -job.keep_checkpoints]:
        delete(old)


def _restore(
    job: FinalJob, model: Any, optimizer: Any, scheduler: Any, amp: Amp, device: torch.device
) -> FinalState:
    import torch

    found = epoch_checkpoints(job.checkpoints)
    if not found:
        return FinalState()
    with local_copy(found[-1]) as checkpoint:
        saved = torch.load(checkpoint / TRAINING_STATE, map_location=device, weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    amp.load_state_dict(saved.get("scaler"))
    return read_state(found[-1])


def run_epochs(job: FinalJob, session: Session) -> None:
    """Train (or finish training) ``job`` on this worker."""
    import torch

    quiet_checkpoints()
    splits = load_splits(job.data)
    tokenizer = load_tokenizer(job.backbone)
    p, rank, world = job.training, session.rank, session.world_size
    rows = encode(tokenizer, splits.refit_rows(job.with_validation), splits.label2id, p.max_length)
    pad_id = int(tokenizer.pad_token_id or 0)
    model = build_model(job.backbone, job.task, splits.labels, job.seed, p)
    ddp = session.prepare(model)
    own_rows = math.ceil(len(rows) / world)
    per_epoch = optimizer_steps(own_rows, job.batch_size_per_worker, p.gradient_accumulation_steps)
    optimizer, scheduler = make_optimizer(ddp, p, p.epochs * per_epoch)
    amp = Amp(resolve(p.precision, session.device, "hpo.training.precision"), session.device)
    state = _restore(job, model, optimizer, scheduler, amp, session.device)
    start = state.next_epoch
    if start and start < p.epochs:
        state = state.model_copy(update={"resumed_from_epoch": start})
        if rank == 0:
            print(f"final {job.variant}: resuming after epoch {start} of {p.epochs}")
    steps = StepProgress(job.variant, p.epochs, per_epoch)
    for epoch in range(start, p.epochs):
        seed = job.seed * 10_007 + epoch
        own = [rows[i] for i in epoch_shard(len(rows), seed, rank, world)]
        # The rank's rows are already shuffled (epoch_shard): grouping sorts them with the seed.
        data = batches(
            own,
            job.batch_size_per_worker,
            pad_id,
            seed if p.group_by_length else None,
            session.device,
            group_by_length=p.group_by_length,
        )
        begin = time.perf_counter()
        steps.epoch = epoch
        loss = train_epoch(ddp, data, optimizer, scheduler, amp, p, steps if rank == 0 else None)
        steps.done_before += per_epoch
        seconds = time.perf_counter() - begin
        record = EpochRecord(
            epoch=epoch,
            train_loss=loss,
            seconds=seconds,
            attempt=job.attempt,
            workers=world,
            threads=torch.get_num_threads(),
            precision=amp.precision,
            learning_rate=float(scheduler.get_last_lr()[0]),
            step_seconds=seconds / max(per_epoch, 1),
        )
        state = state.model_copy(update={"epochs": [*state.epochs, record]})
        if rank == 0:
            print(progress_line(job.variant, state.epochs, p.epochs))
            if epoch == p.epochs - 1:
                state = _tested(job, state, model, splits, tokenizer, pad_id, session.device)
            _save(job, state, model, optimizer, scheduler, amp, tokenizer)
        session.report({"epoch": epoch, "train_loss": loss}, None)  # DDP: a barrier
    if state.test_metrics is None and rank == 0:  # restarted after the last epoch's checkpoint
        state = _tested(job, state, model, splits, tokenizer, pad_id, session.device)
        _save(job, state, model, optimizer, scheduler, amp, tokenizer)


@dataclass
class StepProgress:
    """Rank 0's line inside an epoch, after its first step and then at most every
    ``STATUS_EVERY_S``: ``final f: epoch 1/3 step 20/50, ETA 2 min``, the ETA from the seconds
    per step that this attempt measured so far (evaluation and export not included)."""

    variant: str
    epochs: int
    steps_per_epoch: int
    clock: Callable[[], float] = time.monotonic
    epoch: int = 0
    done_before: int = 0
    """Steps this attempt trained in its earlier epochs."""
    started: float | None = None
    last: float | None = None

    def __call__(self, step: int) -> None:
        line = self.line(step)
        if line is not None:
            print(line, flush=True)

    def line(self, step: int) -> str | None:
        now = self.clock()
        if self.started is None:  # the first step's time is its own: measured from here on
            self.started = now
            return None
        if self.last is not None and now - self.last < STATUS_EVERY_S:
            return None
        self.last = now
        trained = self.done_before + step - 1  # steps since ``started``
        per_step = (now - self.started) / max(trained, 1)
        left = self.steps_per_epoch - step + (self.epochs - self.epoch - 1) * self.steps_per_epoch
        return (
            f"final {self.variant}: epoch {self.epoch + 1}/{self.epochs} step "
            f"{step}/{self.steps_per_epoch}, ETA {duration(per_step * left)}"
        )


def progress_line(variant: str, records: list[EpochRecord], epochs: int) -> str:
    """Rank 0's line after the last of ``records``: its loss and precision, the mean time of
    the epochs this attempt trained on as many workers, and the time the rest will take."""
    record = records[-1]
    timed = [
        r.seconds for r in records if (r.attempt, r.workers) == (record.attempt, record.workers)
    ]
    per_epoch = sum(timed) / len(timed)
    left = epochs - record.epoch - 1
    eta = f", ETA {duration(per_epoch * left)}" if left > 0 else ""
    return (
        f"final {variant}: epoch {record.epoch + 1}/{epochs} train_loss {record.train_loss:.4f} "
        f"({record.precision}), {duration(per_epoch)}/epoch{eta}"
    )


def _tested(
    job: FinalJob,
    state: FinalState,
    model: Any,
    splits: Any,
    tokenizer: Any,
    pad_id: int,
    device: Any,
) -> FinalState:
    """``state`` with the test metrics of ``model`` on ``splits.test``, per class too."""
    rows = encode(tokenizer, splits.test, splits.label2id, job.training.max_length)
    size = job.training.evaluation_batch
    labels = splits.labels
    gold, predicted = labelled_predictions(model, rows, labels, job.task, size, pad_id, device)
    classifier = job.task == "sequence_classification"
    update = {
        "test_metrics": compute_metrics(job.task, gold, predicted),
        "per_class": class_scores(job.task, gold, predicted, labels),
        "confusion": confusion(gold, predicted, labels) if classifier else None,
    }
    return state.model_copy(update=update)


def train_in_task(config: dict[str, Any]) -> None:
    """The body of final training's Ray task (one worker)."""
    run_epochs(FinalJob.model_validate(config), TaskSession())


def train_on_worker(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of final training's Ray Train worker group (DDP)."""
    run_epochs(FinalJob.model_validate(config), TrainSession())
