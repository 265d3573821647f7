"""Training throughput: our fold loop against ``transformers.Trainer``, in one command.

The same model (the demo's MiniLM, or ``--model tiny``: the tests' 2-layer BERT), the same
encoded demo reviews, batch size, number of steps, learning-rate schedule and precision go
through:

(a) ours: ``ray_pipeline.training`` as an HPO fold or the refit runs it (length-grouped
    batches, fused AdamW, ``get_scheduler``, autocast in ``--precision``);
(b) Trainer: ``transformers.Trainer`` configured as a careful user would: the same precision,
    ``train_sampling_strategy="group_by_length"``, fused AdamW, no evaluation, saving,
    logging or progress bar;
(c) ours without length grouping (random batches padded to their longest row), for the
    speed-up that grouping gives on this data.

Each way builds a fresh model (seeded) before its clock starts; the clock covers the optimiser
set-up and the steps (Trainer: ``trainer.train()``). Before any clock, a few untimed steps
warm torch up. Prints examples/s and real (non-padding) tokens/s per way and the ratios;
``--json FILE`` writes ``{"ours_eps", "trainer_eps", "ratio", "precision", "device", ...}``.

    python benchmarks/train_throughput.py [--model minilm|tiny] [--steps 30] [--batch-size 16]
        [--max-length 64] [--precision fp32] [--device cpu|cuda] [--json FILE]

Needs the demo data (``make demo-data``) and, for Trainer, ``accelerate`` (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "config" / "experiment" / "demo.yaml"
SMOKE = REPO / "config" / "experiment" / "smoke.yaml"
SEED = 42


def _inputs(model: str, max_length: int, count: int) -> tuple[Any, Any, list[dict[str, Any]]]:
    """The backbone, its tokenizer and ``count`` encoded demo reviews."""
    from ray_pipeline.data.encode import encode
    from ray_pipeline.data.splits import load_splits
    from ray_pipeline.loading import load_config
    from ray_pipeline.models import load_tokenizer

    demo = load_config(DEMO, ["data.max_train_examples=null"])
    backbone = demo.model.backbones[0]
    if model == "tiny":
        backbone = load_config(SMOKE).model.backbones[0]
    splits = load_splits(demo.data)
    tokenizer = load_tokenizer(backbone)
    rows = encode(tokenizer, splits.train, splits.label2id, max_length)[:count]
    if len(rows) < count:
        raise SystemExit(f"the demo data has {len(rows)} reviews, fewer than {count}")
    return backbone, tokenizer, rows


def _model(backbone: Any, device: Any) -> Any:
    from ray_pipeline.models import build_model

    return build_model(backbone, "sequence_classification", ("great", "other"), seed=SEED).to(
        device
    )


def _params(batch_size: int, max_length: int, precision: str) -> Any:
    from ray_pipeline.schema import TrainingParams

    return TrainingParams(
        learning_rate=1e-4,
        weight_decay=0.01,
        batch_size=batch_size,
        warmup_ratio=0.1,
        max_length=max_length,
        precision=precision,  # one of argparse's choices
    )


def ours(
    backbone: Any,
    rows: list[dict[str, Any]],
    params: Any,
    device: Any,
    pad_id: int,
    *,
    grouped: bool,
) -> float:
    """Seconds for one epoch over ``rows`` through our loop."""
    from ray_pipeline.precision import Amp, resolve
    from ray_pipeline.training import batches, make_optimizer, train_epoch

    model = _model(backbone, device)
    start = time.perf_counter()
    steps = -(-len(rows) // params.batch_size)
    optimizer, scheduler = make_optimizer(model, params, steps)
    amp = Amp(resolve(params.precision, device), device)
    data = batches(rows, params.batch_size, pad_id, SEED, device, group_by_length=grouped)
    train_epoch(model, data, optimizer, scheduler, amp)
    _sync(device)
    return time.perf_counter() - start


def trainer(
    backbone: Any, tokenizer: Any, rows: list[dict[str, Any]], params: Any, device: Any
) -> float:
    """Seconds of ``Trainer.train()`` for one epoch over the same rows."""
    import datasets
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from ray_pipeline.precision import resolve

    precision = resolve(params.precision, device)
    model = _model(backbone, device)
    dataset = datasets.Dataset.from_list([{**r, "length": len(r["input_ids"])} for r in rows])
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=params.batch_size,
            num_train_epochs=1,
            learning_rate=params.learning_rate,
            weight_decay=params.weight_decay,
            warmup_steps=params.warmup_ratio,  # a float < 1: a ratio of the steps
            lr_scheduler_type="linear",
            optim="adamw_torch_fused",
            train_sampling_strategy="group_by_length",
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            use_cpu=device.type == "cpu",
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=SEED,
        )
        run = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
        )
        start = time.perf_counter()
        run.train()
        _sync(device)
        return time.perf_counter() - start


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per way")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import torch
    import transformers

    from ray_pipeline.precision import resolve

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve(args.precision, device)
    count = args.steps * args.batch_size
    backbone, tokenizer, rows = _inputs(args.model, args.max_length, count)
    params = _params(args.batch_size, args.max_length, args.precision)
    tokens = sum(len(r["input_ids"]) for r in rows)
    print(
        f"{args.model} on {device} ({precision}, {torch.get_num_threads()} threads): "
        f"{args.steps} steps of {args.batch_size}, max_length {args.max_length}, "
        f"{tokens / len(rows):.1f} real tokens per example"
    )
    pad_id = int(tokenizer.pad_token_id or 0)
    ours(backbone, rows[: 3 * args.batch_size], params, device, pad_id, grouped=True)  # warm-up

    seconds = {
        "ours": ours(backbone, rows, params, device, pad_id, grouped=True),
        "trainer": trainer(backbone, tokenizer, rows, params, device),
        "ours_ungrouped": ours(backbone, rows, params, device, pad_id, grouped=False),
    }
    eps = {way: count / s for way, s in seconds.items()}
    for way, s in seconds.items():
        print(f"  {way:15s} {s:7.1f} s  {eps[way]:6.1f} examples/s  {tokens / s:8.0f} tokens/s")
    ratio = eps["ours"] / eps["trainer"]
    grouping = eps["ours"] / eps["ours_ungrouped"]
    print(f"ours / Trainer: {ratio:.2f}x; length grouping on / off: {grouping:.2f}x")
    if args.json is not None:
        figures = {
            "ours_eps": eps["ours"],
            "trainer_eps": eps["trainer"],
            "ratio": ratio,
            "ours_ungrouped_eps": eps["ours_ungrouped"],
            "grouping_speedup": grouping,
            "precision": precision,
            "device": str(device),
            "model": args.model,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "threads": torch.get_num_threads(),
            "tokens_per_example": tokens / len(rows),
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
