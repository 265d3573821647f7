"""The data and model sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ray_pipeline.naming import check_safe_name
from ray_pipeline.schema.base import ConfigPath, PositiveInt, Section, Seed

Task = Literal["sequence_classification", "token_classification"]

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "sequence_classification": ("accuracy", "macro_f1", "micro_f1", "weighted_f1"),
    "token_classification": ("entity_f1", "entity_precision", "entity_recall", "token_accuracy"),
}
"""The metrics each task reports; an objective must name one of its task's metrics."""


SplitRole = Literal["train", "validation", "test"]


def _default_hf_splits() -> dict[SplitRole, str]:
    return {"train": "train", "test": "test"}


class DataConfig(Section):
    task: Task = "sequence_classification"
    """What is predicted: one label per text, or one tag per token (NER)."""
    format: Literal["csv", "jsonl", "parquet", "conll", "huggingface"] = "csv"
    """How the data is stored. ``huggingface`` loads ``hf_name`` with the datasets library."""
    train_file: ConfigPath | None = None
    """Training split file. ``{data_cache}`` expands to the demo data cache directory."""
    validation_file: ConfigPath | None = None
    """Optional validation split file: HPO scores trials on it (``hpo.evaluation: holdout``)
    and the refit trains on it too (``final_training.data: train_and_validation``)."""
    test_file: ConfigPath | None = None
    """Test split file; when null, ``test_size`` of the training data is carved out."""
    hf_name: str | None = None
    """Hugging Face dataset: a Hub name, or a local directory (saved with ``save_to_disk``
    or holding data files)."""
    hf_config: str | None = None
    """Hugging Face dataset configuration name."""
    hf_splits: dict[SplitRole, str] = Field(default_factory=_default_hf_splits)
    """Which Hugging Face split plays each role; a missing test split is carved out."""
    text_columns: list[str] = Field(default_factory=lambda: ["text"], min_length=1, max_length=2)
    """Text column(s); two columns make sentence pairs. Token classification: the words column
    (Hugging Face format only)."""
    label_column: str = "label"
    """Label column (sequence classification) or tags column (token classification, Hugging
    Face format). CoNLL files take the first field as the token and the last as its tag."""
    test_size: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Fraction of the training data held out as test when no test split is given."""
    seed: Seed = 42
    """Seeds the test carve-out and the subsetting below (in [0, 2**32))."""
    max_train_examples: PositiveInt | None = None
    """Use only N training examples, drawn with a seeded shuffle (quick runs)."""
    max_test_examples: PositiveInt | None = None
    """Use only N test examples, drawn with a seeded shuffle (quick runs)."""

    @property
    def has_validation(self) -> bool:
        """Whether a validation split is given (a file, or a Hugging Face split's role)."""
        if self.format == "huggingface":
            return "validation" in self.hf_splits
        return self.validation_file is not None

    @model_validator(mode="after")
    def _source_given(self) -> DataConfig:
        if self.format == "huggingface" and self.hf_name is None:
            raise ValueError("format huggingface needs hf_name (the dataset name on the Hub)")
        if self.format != "huggingface" and self.train_file is None:
            raise ValueError(f"format {self.format} needs train_file (a path to the file)")
        mismatched = (self.format == "conll") != (self.task == "token_classification")
        if mismatched and self.format != "huggingface":
            raise ValueError(
                f"format {self.format} does not fit task {self.task}: CoNLL files are for "
                "token_classification, csv/jsonl/parquet for sequence_classification"
            )
        return self


class RandomInit(Section):
    model_type: str = "bert"
    """transformers model type whose config class builds the random model."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Config overrides, e.g. ``{hidden_size: 32, num_hidden_layers: 2}``."""


class BackboneConfig(Section):
    name: str
    """Short id used in directory, variant and run names (``minilm`` -> ``hpo_minilm``)."""
    hub: str | None = None
    """A Hugging Face Hub model id (needs network on first use)."""
    path: ConfigPath | None = None
    """A local directory holding a saved model and tokenizer."""
    package: str | None = None
    """A Python module whose ``get_model_path()`` returns a local model directory."""
    random: RandomInit | None = None
    """Build a randomly initialised model from a config (tests, offline smoke runs)."""
    trust_remote_code: bool = False
    """Allow model code from the model repository to run (off unless you trust it)."""

    @field_validator("name")
    @classmethod
    def _safe(cls, value: str) -> str:
        return check_safe_name(value, "backbone name")

    @model_validator(mode="after")
    def _one_source(self) -> BackboneConfig:
        given = [k for k in ("hub", "path", "package", "random") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"backbone {self.name!r} needs exactly one of hub, path, package, random "
                f"(got {', '.join(given) or 'none'})"
            )
        return self


class ModelConfig(Section):
    backbones: list[BackboneConfig] = Field(min_length=1)
    """The backbones to tune; each gets its own HPO variants."""

    @field_validator("backbones")
    @classmethod
    def _unique(cls, value: list[BackboneConfig]) -> list[BackboneConfig]:
        names = [b.name for b in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"backbone names must be unique, but {', '.join(dupes)} repeat")
        return value
