"""The training settings an HPO trial and the refit train with (``hpo.training``, with a
trial's hyperparameters applied), and the names their choices take."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from ray_pipeline.schema.base import PositiveInt, Section

Precision = Literal["auto", "fp32", "bf16", "fp16"]
"""Numeric precision of training (and of inference in the benchmark): ``ray_pipeline.precision``."""

LrSchedule = Literal["linear", "cosine", "constant_with_warmup"]
"""Learning-rate schedules after the warm-up (``transformers.get_scheduler`` names)."""

DropoutMasks = Literal["torch", "numpy"]
"""Who draws dropout's masks while training on a CPU: ``ray_pipeline.dropout_masks``."""

DROPOUT_MASKS_ENV = "RAY_PIPELINE_CPU_DROPOUT_MASKS"
"""This machine's ``hpo.training.cpu_dropout_masks`` for a config that does not set it (the
schema's ``HpoConfig`` applies it; unset: ``torch``)."""


class TrainingParams(Section):
    learning_rate: float = Field(default=5e-5, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    epochs: PositiveInt = 1
    """Epochs per fold."""
    batch_size: PositiveInt = 16
    """Examples per forward pass over all DDP workers (each worker takes batch_size / workers,
    rounded up; gradient_accumulation_steps of them make one optimizer step)."""
    eval_batch_size: PositiveInt = 32
    """Examples per forward pass when a fold is evaluated and a refit is tested: the larger of
    this and ``batch_size`` (no gradients, so it may be larger; padding is masked, so it does
    not change the scores). Not part of the study key while 32."""
    gradient_accumulation_steps: PositiveInt = 1
    """Batches whose gradients are summed into one optimizer step (each batch's loss divided by
    the batches in its group), so the effective batch is batch_size x this; the last, shorter
    group of an epoch steps too. The learning-rate schedule counts optimizer steps."""
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    """Fraction of the optimizer steps with linear warm-up from 0 (before every lr_schedule)."""
    lr_schedule: LrSchedule = "linear"
    """After the warm-up: linear (decay to 0 at the last step), cosine (half a cosine down to
    0), or constant_with_warmup (the peak learning rate to the end)."""
    max_grad_norm: float | None = Field(default=None, gt=0)
    """Clip the gradients' total L2 norm to this before every optimizer step (after unscaling,
    with fp16). null: no clipping. Hugging Face Trainer's default is 1.0."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    """Label smoothing of the cross-entropy training loss (0: the plain cross-entropy, the
    model's own loss). Evaluation is unaffected."""
    dropout: float | None = Field(default=None, ge=0, lt=1)
    """Dropout inside the backbone (hidden_dropout_prob and attention_probs_dropout_prob for
    BERT, RoBERTa, MiniLM, DeBERTa; dropout and attention_dropout for DistilBERT; ...).
    null: the backbone config's own values. The exported model's config.json records it."""
    classifier_dropout: float | None = Field(default=None, ge=0, lt=1)
    """Dropout before the classification head (classifier_dropout for the BERT family,
    seq_classif_dropout for DistilBERT, cls_dropout for DeBERTa). null: the backbone config's
    own value (for BERT-like models that is usually null, i.e. the backbone's dropout)."""
    max_length: PositiveInt = 128
    """Tokens per example after truncation."""
    precision: Precision = "auto"
    """auto: bf16 autocast on CUDA GPUs with native bfloat16, fp32 elsewhere (CPUs included).
    fp32, bf16, or fp16 (with loss scaling); a device that cannot run it is refused (exit 2).
    TF32 matmuls are on for every CUDA device."""
    group_by_length: bool = False
    """Batch examples of similar length together (less padding, same examples per epoch):
    shuffle, sort within chunks of up to 50 batches, shuffle the batches. Faster, but batches
    of one length can train worse in short runs (docs/configuration.md#precision-and-padding)."""
    cpu_dropout_masks: DropoutMasks = "torch"
    """Who draws dropout's masks while training on a CPU. torch: torch's own kernel. numpy: on
    CPUs where torch draws them one element at a time on one thread (all but Intel's with MKL:
    AMD, Apple silicon, ARM), NumPy's PCG64 seeded from torch's generator, through a
    process-wide override of torch's CPU bernoulli_ kernel while an epoch trains. On an AMD
    EPYC it saved ~72 ms of a ~580 ms two-thread MiniLM step (the demo's refit took 0.578x of
    one thread's time with it, 0.611x without: docs/final-training.md). Seeded results then
    depend on the CPU's vendor (NumPy's masks on AMD, torch's on Intel). No effect on GPUs.
    Not part of the study key while torch. A config that does not set it takes
    $RAY_PIPELINE_CPU_DROPOUT_MASKS where that is set (a machine's choice: the test suite runs
    with either)."""

    @property
    def evaluation_batch(self) -> int:
        """Examples per evaluation forward pass (``eval_batch_size``, at least ``batch_size``)."""
        return max(self.batch_size, self.eval_batch_size)

    def with_params(self, params: Mapping[str, Any]) -> TrainingParams:
        """These settings with a trial's hyperparameters applied (what the trial trains with)."""
        return TrainingParams.model_validate({**self.model_dump(), **params})
