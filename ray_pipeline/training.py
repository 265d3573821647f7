"""The training core: one epoch, prediction and evaluation. Knows nothing of Ray, Tune or
Optuna; the HPO worker loop and final training call it."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from ray_pipeline.data.encode import IGNORE_INDEX, Row, collate
from ray_pipeline.dropout_masks import numpy_dropout_masks
from ray_pipeline.metrics import compute_metrics
from ray_pipeline.schema import Task, TrainingParams

if TYPE_CHECKING:
    import torch

    from ray_pipeline.precision import Amp


def batches(
    rows: Sequence[Row],
    batch_size: int,
    pad_id: int,
    shuffle_seed: int | None = None,
    device: torch.device | None = None,
    *,
    group_by_length: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded batches of ``rows`` on ``device``: in order, shuffled with ``shuffle_seed``, or
    (``group_by_length``) length-grouped with it (``grouped_order``)."""
    order = list(range(len(rows)))
    if shuffle_seed is not None and group_by_length:
        lengths = [len(r["input_ids"]) for r in rows]
        order = grouped_order(lengths, batch_size, shuffle_seed)
    elif shuffle_seed is not None:
        order = _permutation(len(rows), shuffle_seed)
    for start in range(0, len(order), batch_size):
        batch = collate([rows[i] for i in order[start : start + batch_size]], pad_id)
        yield {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def _permutation(count: int, seed: int) -> list[int]:
    import torch

    order: list[int] = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return order


MEGA_BATCHES = 50
"""Batches per chunk that ``grouped_order`` sorts by length (Hugging Face Trainer's 50)."""


def grouped_order(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """Every index of ``lengths`` once, so that consecutive ``batch_size`` slices hold rows of
    similar length: shuffle with ``seed``, sort chunks of up to 50 batches (fewer, so there
    are at least 4 chunks) by length, cut them into batches and shuffle the batches, the one
    holding the longest row first (an out-of-memory shows at the first step, not mid-epoch).
    The last, short batch stays last, so every other batch is full."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = batch_size * max(1, min(len(lengths) // (batch_size * 4), MEGA_BATCHES))
    ranked: list[int] = []
    for start in range(0, len(order), chunk):
        ranked += sorted(order[start : start + chunk], key=lambda i: -lengths[i])
    groups = [ranked[i : i + batch_size] for i in range(0, len(ranked), batch_size)]
    tail = [groups.pop()] if groups and len(groups[-1]) < batch_size else []
    shuffled = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
    if shuffled:
        longest = max(range(len(shuffled)), key=lambda b: max(lengths[i] for i in shuffled[b]))
        shuffled[0], shuffled[longest] = shuffled[longest], shuffled[0]
    return [i for group in [*shuffled, *tail] for i in group]


def shard(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's share of ``indices``, padded by wrap-around so every rank has the same count
    and so runs the same number of steps (unequal step counts leave DDP waiting on an
    all-reduce for good). With one worker: every index, in order."""
    if world == 1:
        return list(indices)
    total = math.ceil(len(indices) / world) * world
    padded = [*indices, *indices[: total - len(indices)]]
    return padded[rank::world]


def epoch_shard(count: int, seed: int, rank: int, world: int) -> list[int]:
    """This rank's rows of one epoch: all ``count`` rows shuffled with ``seed`` (the same order
    on every rank), then ``shard``-ed. With one worker: the whole shuffled order."""
    return shard(_permutation(count, seed), rank, world)


def per_worker_batch(batch_size: int, workers: int) -> int:
    """A DDP worker's batch size that keeps the effective batch (``workers`` x this) at the
    trial's ``batch_size``, rounded up when it does not divide."""
    return math.ceil(batch_size / workers)


def optimizer_steps(examples: int, batch_size: int, accumulation: int) -> int:
    """Optimizer steps in one epoch of ``examples`` rows cut into batches of ``batch_size``, one
    step per ``accumulation`` batches (the last, shorter group steps too)."""
    return math.ceil(math.ceil(examples / batch_size) / accumulation)


def make_optimizer(
    model: torch.nn.Module, params: TrainingParams, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW, and ``params.lr_schedule`` over ``total_steps`` optimizer steps after a linear
    warm-up (``transformers.get_scheduler``). Fused on CPU and CUDA: torch's default for-loop
    AdamW took 200 ms of a 1.5 s MiniLM step here (16 x 64 tokens, one thread), the fused one
    30 ms."""
    import torch
    from transformers import get_scheduler

    devices = {p.device.type for p in model.parameters()}
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=params.learning_rate,
        weight_decay=params.weight_decay,
        fused=devices <= {"cpu", "cuda"} or None,
    )
    warmup = math.ceil(params.warmup_ratio * total_steps)
    scheduler: torch.optim.lr_scheduler.LRScheduler = get_scheduler(
        params.lr_schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
    )
    return optimizer, scheduler


def train_epoch(
    model: torch.nn.Module,
    batch_iter: Iterator[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    amp: Amp | None = None,
    params: TrainingParams | None = None,
    on_step: Callable[[int], None] | None = None,
) -> float:
    """Train over the batches once (in ``amp``'s precision; default fp32) with ``params``'
    loss, accumulation and clipping settings; return the mean loss of the batches.
    ``on_step(n)`` is called after the epoch's n-th optimizer step (progress lines). With
    ``cpu_dropout_masks: numpy``, NumPy draws dropout's masks on CPUs where torch draws them on
    one thread (``dropout_masks``).

    One optimizer step per ``gradient_accumulation_steps`` batches, each batch's loss divided
    by the batches in its group (the last group of an epoch may be shorter), so a group trains
    like one batch of its rows. A DDP model synchronises gradients on a group's last batch only.
    """
    import torch

    from ray_pipeline.precision import Amp

    amp = amp or Amp("fp32", torch.device("cpu"))
    params = params or TrainingParams()
    model.train()
    total, count, steps = 0.0, 0, 0
    numpy_masks = params.cpu_dropout_masks == "numpy"
    with numpy_dropout_masks(amp.device_type) if numpy_masks else nullcontext():
        while group := list(itertools.islice(batch_iter, params.gradient_accumulation_steps)):
            for position, batch in enumerate(group):
                with _gradient_sync(model, position == len(group) - 1):
                    with amp.autocast():
                        loss = training_loss(model, batch, params.label_smoothing)
                    amp.backward(loss / len(group))
                total += float(loss.detach())
                count += 1
            amp.step(optimizer, params.max_grad_norm)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if on_step is not None:
                on_step(steps)
    return total / max(count, 1)


def training_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of the model's logits on the batch's labels, with ``label_smoothing``;
    labels ``IGNORE_INDEX`` (special and continuation tokens, padding) do not count. With no
    smoothing it is the loss the model computes itself."""
    import torch

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, -2).float(),
        batch["labels"].flatten(),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


def _gradient_sync(model: torch.nn.Module, sync: bool) -> AbstractContextManager[Any]:
    """DDP's ``no_sync`` unless ``sync``: gradients of a group's earlier batches stay local and
    are all-reduced with its last one."""
    from torch.nn.parallel import DistributedDataParallel

    if sync or not isinstance(model, DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def predict(
    model: torch.nn.Module,
    rows: Sequence[Row],
    batch_size: int,
    pad_id: int,
    device: torch.device | None = None,
) -> list[Any]:
    """Predicted label ids in the order of ``rows``: one per example (sequence) or one per
    labelled token (tokens). Batches are cut from the rows sorted by length (least padding)."""
    import torch

    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out: list[Any] = [None] * len(rows)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = collate([rows[i] for i in chosen], pad_id)
            labels = batch.pop("labels")
            inputs = {k: v.to(device) for k, v in batch.items()} if device is not None else batch
            ids = model(**inputs).logits.argmax(dim=-1).cpu()
            for row, row_ids, row_labels in zip(chosen, ids, labels, strict=True):
                if row_ids.dim() == 0:
                    out[row] = int(row_ids)
                else:
                    out[row] = row_ids[row_labels != IGNORE_INDEX].tolist()
    return out


def labelled_predictions(
    model: torch.nn.Module,
    rows: Sequence[Row],
    labels: Sequence[str],
    task: Task,
    batch_size: int,
    pad_id: int,
    device: torch.device | None = None,
) -> tuple[list[Any], list[Any]]:
    """Gold and predicted label names of ``model`` on encoded ``rows``: one per example
    (sequence classification) or a list per sentence of its labelled tokens' tags (NER)."""
    predicted = predict(model, rows, batch_size, pad_id, device)
    if task == "sequence_classification":
        return [labels[r["labels"]] for r in rows], [labels[p] for p in predicted]
    gold_tags = [[labels[t] for t in r["labels"] if t != IGNORE_INDEX] for r in rows]
    return gold_tags, [[labels[t] for t in sentence] for sentence in predicted]


def evaluate(
    model: torch.nn.Module,
    rows: Sequence[Row],
    labels: Sequence[str],
    task: Task,
    batch_size: int,
    pad_id: int,
    device: torch.device | None = None,
) -> dict[str, float]:
    """The task's metrics of ``model`` on encoded ``rows``."""
    gold, predicted = labelled_predictions(model, rows, labels, task, batch_size, pad_id, device)
    return compute_metrics(task, gold, predicted)
