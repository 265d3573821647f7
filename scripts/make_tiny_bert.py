"""Build config/model/tiny_bert/: the smoke experiment's backbone, a 2-layer BERT (hidden size
32) over the character tokenizer of random backbones, pre-trained once, here, on short
reviews of products that do not occur in config/data/tiny_reviews, so that fine-tuning it on
the smoke data learns in seconds and hyperparameters matter (learning rates up to ~3e-3
reach ~0.9 macro F1 on a fold in two epochs, 3e-2 and more wreck it: ~0.3). Only the encoder
is kept: every task gets a fresh head. Deterministic: running it again writes the same weights.

    python scripts/make_tiny_bert.py [OUT_DIR]
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, BertForSequenceClassification

from ray_pipeline.models import char_tokenizer, char_vocab
from ray_pipeline.schema import TrainingParams
from ray_pipeline.training import batches, make_optimizer, train_epoch

OUT = Path(__file__).resolve().parent.parent / "config" / "model" / "tiny_bert"

PRODUCTS = [
    "bagels",
    "mustard",
    "lentils",
    "yogurt",
    "biscuits",
    "cocoa",
    "noodles",
    "ketchup",
    "raisins",
    "muffins",
    "vinegar",
    "sardines",
    "tortillas",
    "pickles",
    "cashews",
    "waffles",
    "fudge",
    "lemonade",
    "pesto",
    "quinoa",
]
GOOD = (
    "Delicious {p}, we love it.",
    "Great {p}, tasty and fresh.",
    "The {p} is delicious and fresh.",
    "We love this {p}, great flavor.",
    "Tasty {p}, great value.",
    "Fresh {p}, love the taste.",
    "Perfect {p}, so delicious.",
    "The {p} tastes great, love it.",
    "Lovely {p}, fresh and tasty.",
    "Excellent {p}, we love the flavor.",
    "I really love these {p}.",
    "My kids love the {p}, so tasty.",
)
BAD = (
    "Awful {p}, stale and bland.",
    "The {p} was stale and bitter.",
    "Bad {p}, bland and old.",
    "Stale {p}, awful taste.",
    "The {p} arrived broken and stale.",
    "Bitter {p}, a bad buy.",
    "Bland {p}, awful texture.",
    "The {p} tasted stale and bad.",
    "Terrible {p}, bitter and stale.",
    "Awful {p}, it arrived broken.",
    "I will not buy these {p} again.",
    "The {p} went stale in a day.",
)


def main(out: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    texts = [
        (t.format(p=p), label) for label, ts in enumerate((GOOD, BAD)) for p in PRODUCTS for t in ts
    ]
    random.Random(0).shuffle(texts)
    tokenizer = char_tokenizer()
    enc = tokenizer([text for text, _ in texts], truncation=True, max_length=64)
    rows = [{k: enc[k][i] for k in enc} | {"labels": label} for i, (_, label) in enumerate(texts)]
    config = AutoConfig.for_model(
        "bert",
        vocab_size=len(char_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    params = TrainingParams(learning_rate=5e-3, epochs=8, batch_size=16, warmup_ratio=0.1)
    steps = params.epochs * -(-len(rows) // params.batch_size)
    optimizer, scheduler = make_optimizer(model, params, steps)
    for epoch in range(params.epochs):
        data = batches(rows, params.batch_size, tokenizer.pad_token_id, shuffle_seed=epoch)
        loss = train_epoch(model, data, optimizer, scheduler)
        print(f"epoch {epoch + 1}/{params.epochs}: loss {loss:.4f}")
    model.bert.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
