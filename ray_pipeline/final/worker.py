"""The per-worker loop of final training: every epoch on all training data, a checkpoint per
epoch (model, optimiser, scheduler, epoch records), test-set evaluation after the last one.
A restarted run continues after the last checkpointed epoch. Knows nothing of Tune."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_pipeline.data.encode import encode
from ray_pipeline.data.splits import load_splits
from ray_pipeline.final.results import EpochRecord, FinalJob, FinalState
from ray_pipeline.models import build_model, load_tokenizer
from ray_pipeline.paths import CHECKPOINT_MODEL, FINAL_STATE, TRAINING_STATE
from ray_pipeline.training import batches, evaluate, make_optimizer, shard, train_epoch

if TYPE_CHECKING:
    import torch

TEST_PREFIX = "test_"


def _restore(model: Any, optimizer: Any, scheduler: Any, device: torch.device) -> FinalState:
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return FinalState()
    with checkpoint.as_directory() as directory:
        state = FinalState.model_validate_json((Path(directory) / FINAL_STATE).read_text())
        saved = torch.load(Path(directory) / TRAINING_STATE, map_location=device)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return state


def _report(
    state: FinalState,
    start: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    tokenizer: Any,
    test_metrics: dict[str, float] | None,
) -> None:
    """All workers report; rank 0 attaches the epoch checkpoint."""
    import ray.train
    import torch

    metrics = {
        "epoch": state.next_epoch - 1,
        "train_loss": state.epochs[-1].train_loss if state.epochs else float("nan"),
        "start_epoch": start,
        **{f"{TEST_PREFIX}{k}": v for k, v in (test_metrics or {}).items()},
    }
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        (path / FINAL_STATE).write_text(state.model_dump_json())
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            },
            path / TRAINING_STATE,
        )
        model.save_pretrained(path / CHECKPOINT_MODEL)
        tokenizer.save_pretrained(path / CHECKPOINT_MODEL)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def train_final(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of final training."""
    import ray.train
    import ray.train.torch

    job = FinalJob.model_validate(config)
    splits = load_splits(job.data)
    tokenizer = load_tokenizer(job.backbone)
    p = job.training
    rows = encode(tokenizer, splits.train, splits.label2id, p.max_length)
    test_rows = encode(tokenizer, splits.test, splits.label2id, p.max_length)
    pad_id = int(tokenizer.pad_token_id or 0)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    own = shard(range(len(rows)), rank, world)  # every rank the same number of steps
    train_rows = [rows[i] for i in own]
    model = build_model(job.backbone, job.task, splits.labels, seed=job.seed)
    device = ray.train.torch.get_device()
    ddp = ray.train.torch.prepare_model(model)
    steps = p.epochs * math.ceil(len(train_rows) / p.batch_size)
    optimizer, scheduler = make_optimizer(ddp, p, steps)
    state = _restore(model, optimizer, scheduler, device)
    start = state.next_epoch
    if start:
        print(f"final {job.variant}: resuming after epoch {start} of {p.epochs}")
    for epoch in range(start, p.epochs):
        data = batches(train_rows, p.batch_size, pad_id, job.seed * 10_007 + epoch, device)
        begin = time.perf_counter()
        loss = train_epoch(ddp, data, optimizer, scheduler)
        record = EpochRecord(
            epoch=epoch, train_loss=loss, seconds=time.perf_counter() - begin, attempt=job.attempt
        )
        state = FinalState(epochs=[*state.epochs, record])
        print(f"final {job.variant}: epoch {epoch + 1}/{p.epochs} train_loss {loss:.4f}")
        last = epoch == p.epochs - 1
        test = _test(model, test_rows, splits.labels, job, pad_id, device) if last else None
        _report(state, start, model, optimizer, scheduler, tokenizer, test)
    if start >= p.epochs:  # every epoch was checkpointed before the restart: evaluate again
        test = _test(model, test_rows, splits.labels, job, pad_id, device)
        _report(state, start, model, optimizer, scheduler, tokenizer, test)


def _test(model: Any, rows: Any, labels: Any, job: FinalJob, pad_id: int, device: Any) -> Any:
    import ray.train

    if ray.train.get_context().get_world_rank() != 0:
        return None
    size = max(job.training.batch_size, 32)
    return evaluate(model, rows, labels, job.task, size, pad_id, device)
