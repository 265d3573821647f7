"""The ``ray-pipeline`` command (also ``python -m ray_pipeline``): parse, load, dispatch.

Exit codes: 0 success, 1 runtime failure, 2 bad config or input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray_pipeline import console, pipeline
from ray_pipeline.data.demo import fetch_demo_data
from ray_pipeline.data.infer import DataFlags
from ray_pipeline.data.init_config import InitFlags, format_result, init_experiment
from ray_pipeline.data.inspect import format_report, inspect_data
from ray_pipeline.errors import EXIT_INTERRUPTED, EXIT_OK, PipelineError
from ray_pipeline.loading import default_config_path, load_config
from ray_pipeline.status import collect_status, format_status

_STAGE_COMMANDS = {"hpo": "hpo", "benchmark": "benchmark", "select": "select", "train": "final"}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="experiment YAML (default: the embedded demo, config/experiment/demo.yaml)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="override config keys, e.g. hpo.num_samples=8",
    )


def _add_verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray Tune's trial tables and Ray's, MLflow's and transformers' own output",
    )


def _add_init(sub: Any) -> None:
    init = sub.add_parser(
        "init",
        help="write an experiment YAML for your data file (format, task, columns and sizes "
        "inferred; flags override)",
    )
    init.add_argument(
        "--data",
        type=Path,
        required=True,
        help="training data: a CSV, JSONL, "
        "Parquet or CoNLL file, or a Hugging Face dataset saved with save_to_disk",
    )
    init.add_argument("--validation", type=Path, help="validation file (HPO scores trials on it)")
    init.add_argument("--test", type=Path, help="test file (default: 20%% of --data held out)")
    init.add_argument(
        "--format",
        choices=["csv", "jsonl", "parquet", "conll"],
        help="the files' format (default: from the file name)",
    )
    init.add_argument(
        "--task",
        choices=["sequence", "token"],
        help="sequence (one label per text) or token (one tag per token)",
    )
    init.add_argument("--text-column", help="the text column")
    init.add_argument("--text-pair-column", help="the second text of a sentence pair")
    init.add_argument("--label-column", help="the label (or tags) column")
    init.add_argument(
        "--backbone",
        help="a shipped model (minilm, tiny_bert, ...), a model "
        "directory, a package, or a Hub id (default: the demo's offline MiniLM)",
    )
    init.add_argument("--out", type=Path, help="the YAML to write (default: ./<name>.yaml)")
    init.add_argument("--name", help="experiment name (default: from the data file's name)")
    init.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def _init(args: argparse.Namespace) -> int:
    data = DataFlags(
        train=args.data,
        validation=args.validation,
        test=args.test,
        format=args.format,
        task=args.task,
        text_column=args.text_column,
        text_pair_column=args.text_pair_column,
        label_column=args.label_column,
    )
    flags = InitFlags(data, args.backbone, args.out, args.name, args.force)
    print(format_result(init_experiment(flags)))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-pipeline",
        description="Tune, benchmark, select and train Hugging Face classifiers on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_init(sub)
    run = sub.add_parser("run", help="run the pipeline's stages in order")
    _add_config_args(run)
    run.add_argument(
        "--stages", default=",".join(pipeline.STAGE_ORDER), help="comma-separated subset of stages"
    )
    _add_verbose_arg(run)
    for name, stage in _STAGE_COMMANDS.items():
        one = sub.add_parser(name, help=f"run only the {stage} stage")
        _add_config_args(one)
        _add_verbose_arg(one)
    validate = sub.add_parser("validate", help="check a config; exit 0 valid, 2 invalid")
    _add_config_args(validate)
    validate.add_argument("--show", action="store_true", help="print the resolved configuration")
    status = sub.add_parser("status", help="variants, their status and hashes")
    _add_config_args(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    inspect = data_sub.add_parser("inspect", help="rows, labels, token lengths, folds")
    _add_config_args(inspect)
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    fetch = data_sub.add_parser(
        "fetch-demo", help="download the demo reviews (Debian r-cran-modeldata) into the data cache"
    )
    fetch.add_argument("--deb", type=Path, help="use this r-cran-modeldata .deb instead of apt-get")
    fetch.add_argument("--force", action="store_true", help="fetch again even if present")
    _add_config_args(
        sub.add_parser(
            "report",
            help="one self-contained HTML page: leaderboard, trials, selection, final model",
        )
    )
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "data" and args.data_command == "fetch-demo":
        fetch_demo_data(deb=args.deb, force=args.force)
        return EXIT_OK
    console.set_verbose(getattr(args, "verbose", False))
    if args.command == "init":
        return _init(args)
    config_path: Path = args.config or default_config_path()
    config = load_config(config_path, args.overrides)
    if args.command == "validate":
        pipeline.check_inputs(config, offline=True)  # what `run` checks before Ray starts
        names = ", ".join(b.name for b in config.model.backbones)
        print(f"valid: {config_path} (experiment {config.experiment.name}; backbones {names})")
        if args.show:
            print(pipeline.resolved_yaml(config), end="")
        return EXIT_OK
    if args.command == "status":
        report = collect_status(config)
        print(report.model_dump_json(indent=2) if args.json else format_status(report))
        return EXIT_OK
    if args.command == "run":
        pipeline.run(config, pipeline.parse_stages(args.stages))
        return EXIT_OK
    if args.command in _STAGE_COMMANDS:
        pipeline.run(config, [_STAGE_COMMANDS[args.command]])
        return EXIT_OK
    if args.command == "data":
        data_report = inspect_data(config)
        print(data_report.model_dump_json(indent=2) if args.json else format_report(data_report))
        return EXIT_OK
    if args.command == "report":
        from ray_pipeline.report import write_report

        write_report(config)
        return EXIT_OK
    raise PipelineError(f"unknown command {args.command!r}")  # argparse allows no other


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
