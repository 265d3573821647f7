"""The ``ray-pipeline`` command (also ``python -m ray_pipeline``): parse, load, dispatch.

Exit codes: 0 success, 1 runtime failure, 2 bad config or input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from ray_pipeline import console, pipeline
from ray_pipeline.data.demo import fetch_demo_data
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-pipeline",
        description="Tune, benchmark, select and train Hugging Face classifiers on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    config_path: Path = args.config or default_config_path()
    config = load_config(config_path, args.overrides)
    if args.command == "validate":
        pipeline.check_inputs(config, offline=True)  # what `run` checks before Ray starts
        names = ", ".join(b.name for b in config.model.backbones)
        print(f"valid: {config_path} (experiment {config.experiment.name}; backbones {names})")
        if args.show:
            print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
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
