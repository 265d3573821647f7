"""``ray-pipeline report``: one self-contained page, ``outputs/<experiment>/report/index.html``
(inline CSS and SVG figures, no script: it opens offline), built only from the records on disk,
and ``leaderboard.json``. ``status`` prints the same leaderboard.

The page: the leaderboard; the selection's reasoning and candidates; the final model on the
test set (metrics against the majority baseline, per class or entity type, confusion matrix,
lineage); accuracy against latency with the Pareto front and the selected trial; per HPO
variant its trials, fold spread, learning curves and Optuna's optimisation history, parallel
coordinates and parameter importance.

Modules: ``leaderboard`` (the rows), ``write`` (the page), ``trials`` (the search's sections),
``figures`` (matplotlib to SVG), ``page`` (HTML).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ray_pipeline.report.leaderboard import LeaderRow, format_leaderboard, leaderboard

if TYPE_CHECKING:
    from ray_pipeline.schema import PipelineConfig

__all__ = ["LeaderRow", "format_leaderboard", "leaderboard", "write_report"]


def write_report(config: PipelineConfig) -> Path:
    """Write ``report/index.html`` and ``report/leaderboard.json``; returns the page."""
    # Imported here: matplotlib and Optuna take a second, and `status` imports this package.
    from ray_pipeline.report.write import write_report as write

    return write(config)
