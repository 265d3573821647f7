"""The report's figures, drawn with matplotlib from the records and rendered as inline SVG
(text as text, fixed ids: the same records give the same bytes)."""

from __future__ import annotations

import io
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import matplotlib
from matplotlib.figure import Figure

from ray_pipeline.hpo.results import HpoResult
from ray_pipeline.metrics import Confusion

if TYPE_CHECKING:
    import optuna

IMPORTANCE_MIN_TRIALS = 10
IMPORTANCE_MIN_PARAMS = 2
"""Parameter importance (fANOVA) from fewer complete trials or from one parameter says
nothing worth a figure."""


def svg(figure: Figure) -> str:
    """``figure`` as an ``<svg>`` element, to inline in HTML."""
    out = io.StringIO()
    # Text stays text (small, selectable); ids hash with a fixed salt (the same bytes each time).
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ray_pipeline"}):
        figure.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
    document = out.getvalue()
    return document[document.index("<svg") :]


@dataclass(frozen=True)
class LatencyPoint:
    """One trial on the accuracy-vs-latency plane."""

    variant: str
    number: int
    objective: float
    latency_ms: float
    front: str | None = None
    """The Pareto front it lies on (fronts are drawn one line each); None: dominated."""


def tradeoff(
    points: Sequence[LatencyPoint], winner: tuple[str, int] | None, metric: str, xlabel: str
) -> Figure:
    """Objective against latency, one colour per variant; Pareto fronts ringed and joined by
    a step line; the selected trial starred."""
    figure = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = figure.add_subplot()
    variants = list(dict.fromkeys(p.variant for p in points))
    for i, variant in enumerate(variants):
        mine = [p for p in points if p.variant == variant]
        xs, ys = [p.latency_ms for p in mine], [p.objective for p in mine]
        ax.scatter(xs, ys, s=32, color=f"C{i % 10}", label=variant, zorder=2)
    fronts = list(dict.fromkeys(p.front for p in points if p.front is not None))
    for n, front in enumerate(fronts):
        on = sorted((p for p in points if p.front == front), key=lambda p: p.latency_ms)
        xs, ys = [p.latency_ms for p in on], [p.objective for p in on]
        ax.plot(xs, ys, drawstyle="steps-post", color="0.35", lw=1, ls="--", zorder=1)
        label = "Pareto front" if n == 0 else None
        ax.scatter(xs, ys, s=110, facecolors="none", edgecolors="black", label=label, zorder=3)
    chosen = [p for p in points if (p.variant, p.number) == winner]
    for p in chosen:
        ax.scatter(
            [p.latency_ms],
            [p.objective],
            marker="*",
            s=380,
            color="gold",
            zorder=4,
            edgecolors="black",
            label="selected",
        )
        ax.annotate(
            f"{p.variant} trial {p.number}",
            (p.latency_ms, p.objective),
            textcoords="offset points",
            xytext=(10, -12),
            fontsize=8,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", markerscale=0.6)
    return figure


def fold_spread(hpo: HpoResult) -> Figure:
    """Each trial's fold scores as points, their mean ± std as a bar; the best trial shaded."""
    trials = [t for t in hpo.trials if t.folds]
    figure = Figure(figsize=(min(11.0, max(5.0, 0.5 * len(trials) + 2)), 3.8), layout="constrained")
    ax = figure.add_subplot()
    for x, trial in enumerate(trials):
        scores = [f.objective for f in trial.folds]
        k = len(scores)
        offsets = [x + 0.08 * (i - (k - 1) / 2) for i in range(k)]
        colour = "C0" if trial.state == "COMPLETE" else "0.6"
        ax.scatter(
            offsets,
            scores,
            s=16,
            color=colour,
            alpha=0.8,
            zorder=2,
            label="fold" if x == 0 else None,
        )
        ax.errorbar(
            [x],
            [statistics.fmean(scores)],
            yerr=[statistics.pstdev(scores)],
            fmt="_",
            markersize=18,
            color="black",
            capsize=4,
            zorder=3,
            label="mean ± std" if x == 0 else None,
        )
        if hpo.best is not None and trial.number == hpo.best.number:
            ax.axvspan(x - 0.4, x + 0.4, color="gold", alpha=0.3, label="best trial", zorder=0)
    ax.set_xticks(range(len(trials)), [str(t.number) for t in trials])
    ax.set_xlabel("trial (grey: not complete)")
    ax.set_ylabel(f"{hpo.metric} per fold")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return figure


def learning_curves(hpo: HpoResult) -> Figure | None:
    """Training loss and validation metric per epoch, one line per trial and fold (colour:
    trial); None when no fold recorded a history."""
    curves = [(t.number, f) for t in hpo.trials for f in t.folds if f.history]
    if not curves:
        return None
    numbers = sorted({n for n, _ in curves})
    colour: Callable[[int], Any]
    if len(numbers) <= 10:
        colour = lambda n: f"C{numbers.index(n)}"  # noqa: E731
    else:
        cmap = matplotlib.colormaps["viridis"]
        colour = lambda n: cmap(numbers.index(n) / (len(numbers) - 1))  # noqa: E731
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    loss, validation = figure.subplots(1, 2)
    labelled: set[int] = set()
    for number, fold in curves:
        label = None if number in labelled else f"trial {number}"
        labelled.add(number)
        epochs = [p.epoch for p in fold.history]
        loss.plot(
            epochs,
            [p.train_loss for p in fold.history],
            marker=".",
            lw=1.2,
            color=colour(number),
            alpha=0.85,
            label=label,
        )
        scored = [(p.epoch, p.validation) for p in fold.history if p.validation is not None]
        validation.plot(
            [e for e, _ in scored],
            [v for _, v in scored],
            marker=".",
            lw=1.2,
            color=colour(number),
            alpha=0.85,
        )
    loss.set_ylabel("training loss")
    validation.set_ylabel(f"validation {hpo.metric}")
    for ax in (loss, validation):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(numbers) <= 10:
        loss.legend(fontsize=8, loc="best")
    return figure


def confusion(matrix: Confusion) -> Figure:
    """Counts of each true label (rows) predicted as each label (columns)."""
    n = len(matrix.labels)
    side = max(3.6, 0.6 * n + 2.2)
    figure = Figure(figsize=(side + 0.8, side), layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(matrix.counts, cmap="Blues")
    figure.colorbar(image, ax=ax, shrink=0.8, label="test examples")
    top = max((max(row) for row in matrix.counts), default=0)
    for i, row in enumerate(matrix.counts):
        for j, count in enumerate(row):
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                color="white" if count > top / 2 else "black",
            )
    rotate = 45 if max(len(label) for label in matrix.labels) > 6 else 0
    ax.set_xticks(range(n), matrix.labels, rotation=rotate, ha="right" if rotate else "center")
    ax.set_yticks(range(n), matrix.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return figure


@dataclass(frozen=True)
class Drawn:
    """A figure as SVG, or why it was not drawn."""

    svg: str | None
    why_not: str | None = None


def study_figures(study: optuna.Study, metric: str) -> dict[str, Drawn]:
    """Optuna's optimisation history, parallel coordinates and parameter importance of
    ``study`` (on its first objective), in that order."""
    matplotlib.use("Agg")  # Optuna draws through pyplot: never open a window
    import optuna
    import optuna.visualization.matplotlib as optuna_plots

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    params = {name for t in complete for name in t.params}
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    plots: dict[str, Callable[..., Any]] = {
        "history": optuna_plots.plot_optimization_history,
        "parallel": optuna_plots.plot_parallel_coordinate,
        "importance": optuna_plots.plot_param_importances,
    }
    done: dict[str, Drawn] = {}
    for name, plot in plots.items():
        if not complete:
            done[name] = Drawn(None, "No complete trial in the Optuna study.")
        elif name == "importance" and (
            len(complete) < IMPORTANCE_MIN_TRIALS or len(params) < IMPORTANCE_MIN_PARAMS
        ):
            done[name] = Drawn(
                None,
                f"Parameter importance is not shown: it needs at least {IMPORTANCE_MIN_TRIALS} "
                f"complete trials and {IMPORTANCE_MIN_PARAMS} parameters; this study has "
                f"{len(complete)} complete trials and {len(params)} parameters.",
            )
        else:
            done[name] = _optuna_plot(plot, study, target, metric)
    return done


def _optuna_plot(plot: Callable[..., Any], study: optuna.Study, target: Any, metric: str) -> Drawn:
    import matplotlib.pyplot as plt

    # Optuna's plots switch pyplot to the ggplot style: keep that inside this context.
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        try:
            axes: Any = plot(study, target=target, target_name=metric)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            return Drawn(None, f"Optuna could not draw it: {exc}")
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        drawn = Drawn(svg(figure))
        plt.close(figure)
    return drawn
