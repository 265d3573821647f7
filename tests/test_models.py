"""Task registry, tokenizers and models built offline, NER alignment, metrics, training core."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ray_pipeline.data.encode import IGNORE_INDEX, align_labels, collate, encode
from ray_pipeline.data.examples import TextExamples, TokenExamples
from ray_pipeline.data.splits import load_splits
from ray_pipeline.errors import ConfigError
from ray_pipeline.loading import load_config
from ray_pipeline.metrics import compute_metrics, entity_metrics
from ray_pipeline.models import (
    TASK_MODEL_CLASSES,
    build_model,
    char_tokenizer,
    load_tokenizer,
    model_class,
    pretrained_source,
)
from ray_pipeline.schema import TASK_METRICS, BackboneConfig, TrainingParams
from ray_pipeline.training import batches, evaluate, make_optimizer, train_epoch
from tests.conftest import CONFIG_DIR, MakeExp

TINY = BackboneConfig.model_validate(
    {
        "name": "tiny",
        "random": {
            "model_type": "bert",
            "config": {
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 64,
            },
        },
    }
)
NER = TokenExamples(
    words=(("Ada", "visited", "Reykjavik"), ("Bo", "smiled")),
    tags=(("B-PER", "O", "B-LOC"), ("B-PER", "O")),
    origins=("x:1", "x:5"),
)
NER_IDS = {"O": 0, "B-PER": 1, "B-LOC": 2}


def test_registry_covers_every_task() -> None:
    assert set(TASK_MODEL_CLASSES) == set(TASK_METRICS)
    assert model_class("token_classification").__name__ == "AutoModelForTokenClassification"


def test_char_tokenizer_splits_words_into_sub_tokens() -> None:
    tok = char_tokenizer()
    assert tok.tokenize("Tea!") == ["t", "##e", "##a", "!"]
    assert tok("ab")["input_ids"][0] == tok.cls_token_id


def test_ner_alignment_labels_only_first_sub_tokens() -> None:
    row = encode(char_tokenizer(), NER, NER_IDS, max_length=64)[0]
    # [CLS] A ##d ##a v ##i ##s ##i ##t ##e ##d R ##e ... [SEP]
    labels = row["labels"]
    assert labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX  # specials
    assert labels[1:4] == [1, IGNORE_INDEX, IGNORE_INDEX]  # Ada -> B-PER on "a" only
    assert labels[4] == 0 and labels[5:11] == [IGNORE_INDEX] * 6  # visited -> O
    assert labels[11] == 2 and set(labels[12:-1]) == {IGNORE_INDEX}  # Reykjavik -> B-LOC
    assert sum(label != IGNORE_INDEX for label in labels) == 3  # one label per word


def test_align_labels_directly() -> None:
    assert align_labels([None, 0, 0, 1, None], [5, 6]) == [-100, 5, -100, 6, -100]


def test_truncation_and_dynamic_padding() -> None:
    tok = char_tokenizer()
    texts = TextExamples((("a long sentence here",), ("hi",)), ("great", "other"), ("a", "b"))
    rows = encode(tok, texts, {"great": 0, "other": 1}, max_length=8)
    assert [len(r["input_ids"]) for r in rows] == [8, 4]
    batch = collate(rows, tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert batch["labels"].tolist() == [0, 1]
    ner_batch = collate(encode(tok, NER, NER_IDS, 64), tok.pad_token_id)
    assert ner_batch["labels"][1, -1].item() == IGNORE_INDEX  # padded token labels ignored


@pytest.mark.parametrize("task", ["sequence_classification", "token_classification"])
def test_random_models_for_each_task(task: str) -> None:
    labels = ("a", "b", "c")
    model = build_model(TINY, task, labels, seed=0)  # type: ignore[arg-type]
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert model.config.hidden_size == 32
    again = build_model(TINY, task, labels, seed=0)  # type: ignore[arg-type]
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True)
    )


def test_backbone_source_errors(tmp_path: Path) -> None:
    empty = BackboneConfig(name="local", path=tmp_path)
    with pytest.raises(ConfigError, match=r"config\.json missing"):
        pretrained_source(empty)
    missing = BackboneConfig(name="pkg", package="no_such_model_package")
    with pytest.raises(ConfigError, match="cannot import no_such_model_package"):
        load_tokenizer(missing)
    assert pretrained_source(BackboneConfig(name="h", hub="org/model")) == "org/model"


def test_classification_metrics() -> None:
    gold = ["a", "a", "b", "b"]
    pred = ["a", "b", "b", "b"]
    m = compute_metrics("sequence_classification", gold, pred)
    assert tuple(m) == TASK_METRICS["sequence_classification"]
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_entity_metrics_are_entity_level() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]  # PER boundary wrong: 1 of 2 entities right
    m = entity_metrics(gold, pred)
    assert tuple(m) == TASK_METRICS["token_classification"]
    assert m["entity_precision"] == 0.5 and m["entity_recall"] == 0.5
    assert m["token_accuracy"] == 0.75


def test_objective_must_be_a_metric_of_the_task(smoke_experiment: MakeExp) -> None:
    with pytest.raises(ConfigError, match="'entity_f1' is not a metric of sequence_classification"):
        load_config(smoke_experiment(), ["hpo.objective.metric=entity_f1"])
    with pytest.raises(ConfigError, match="not a metric of token_classification"):
        load_config(
            CONFIG_DIR / "experiment" / "smoke_ner.yaml", ["selection.objective.metric=accuracy"]
        )


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["smoke.yaml", "smoke_ner.yaml"])
def test_tiny_model_learns_the_training_set(experiment: str) -> None:
    cfg = load_config(CONFIG_DIR / "experiment" / experiment)
    splits = load_splits(cfg.data)
    backbone = cfg.model.backbones[0]
    tok = load_tokenizer(backbone)
    rows = encode(tok, splits.train, splits.label2id, max_length=64)
    model = build_model(backbone, cfg.data.task, splits.labels, seed=0)
    params = TrainingParams(learning_rate=3e-3, batch_size=8)
    epochs = 30  # the random-init NER model needs a few dozen passes; the pre-trained one fewer
    steps = epochs * -(-len(rows) // params.batch_size)
    optimizer, scheduler = make_optimizer(model, params, steps)
    losses = [
        train_epoch(model, batches(rows, 8, tok.pad_token_id, shuffle_seed=e), optimizer, scheduler)
        for e in range(epochs)
    ]
    assert losses[-1] < 0.7 * losses[0]
    metrics = evaluate(model, rows, splits.labels, cfg.data.task, 16, tok.pad_token_id)
    assert tuple(metrics) == TASK_METRICS[cfg.data.task]
    assert metrics[cfg.hpo.objective.metric] > 0.5
