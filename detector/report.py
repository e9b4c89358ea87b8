"""Evaluation plots written as PNG files: reliability diagram, precision-recall curve, series timeline.

Each function draws on its own ``matplotlib.figure.Figure`` rendered by the Agg canvas, so it never
touches pyplot's global state or opens a window. Matplotlib itself is not thread-safe (its shared
mathtext parser and text caches fail under concurrent use), so the plot functions hold one module
lock while they draw: they may be called from several threads at once, and run one at a time.
Each writes exactly one PNG at ``path`` (creating missing parent directories) and returns that path.
Input validation is the metrics module's: mismatched lengths or probabilities outside [0, 1] raise
``ValueError`` before anything is written.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import precision_recall_curve

from detector.model.metrics import binary_metrics, expected_calibration_error, reliability_curve

__all__ = ["plot_precision_recall", "plot_reliability", "plot_timeline"]

DPI = 120
EPOCH_MS_MIN = 1e11  # times at or above this are epoch milliseconds (1973-03-03); below, step indices
_EVENT_COLOR = "tab:orange"
_FLAG_COLOR = "tab:red"
_DRAW_LOCK = threading.Lock()
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _serialized(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` under the module's drawing lock (matplotlib is not thread-safe)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _DRAW_LOCK:
            return fn(*args, **kwargs)

    return wrapper


@_serialized
def plot_reliability(
    y_true: ArrayLike,
    prob: ArrayLike,
    path: str | os.PathLike[str],
    bins: int = 15,
    title: str = "Reliability diagram",
) -> Path:
    """Observed frequency against mean predicted probability per bin, over a log-count histogram."""
    mean_pred, observed, _ = reliability_curve(y_true, prob, bins)
    ece = expected_calibration_error(y_true, prob, bins)
    p = np.asarray(prob, dtype=np.float64)

    fig = _figure(6.4, 7.0)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="0.5", label="perfect calibration")
    top.plot(mean_pred, observed, marker="o", color="tab:blue", label=f"model (ECE = {ece:.3f})")
    top.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="observed frequency of events")
    top.set_title(f"{title} ({len(p):,} samples, {bins} bins)")
    top.legend(loc="upper left")
    top.grid(True, alpha=0.3)

    bottom.hist(p, bins=np.linspace(0.0, 1.0, bins + 1), color="tab:blue", alpha=0.6, edgecolor="white")
    bottom.set_yscale("log")
    bottom.set(xlim=(0, 1), xlabel="mean predicted probability", ylabel="count (log)")
    bottom.grid(True, alpha=0.3, which="major")
    return _save(fig, path)


@_serialized
def plot_precision_recall(
    y_true: ArrayLike,
    prob: ArrayLike,
    path: str | os.PathLike[str],
    threshold: float | None = None,
    title: str = "Precision-recall curve",
) -> Path:
    """Precision against recall over all thresholds, the positive-rate baseline, and an operating point."""
    summary = binary_metrics(y_true, prob, 0.5 if threshold is None else threshold)
    y = np.asarray(y_true, dtype=np.float64)
    base_rate = summary["positives"] / summary["n"]

    fig = _figure(6.4, 5.2)
    ax = fig.subplots()
    if summary["positives"] > 0:
        precision, recall, _ = precision_recall_curve(y, np.asarray(prob, dtype=np.float64))
        ax.plot(
            recall,
            precision,
            drawstyle="steps-post",
            color="tab:blue",
            label=f"model (AUPRC = {summary['auprc']:.3f})",
        )
    else:
        ax.text(0.5, 0.5, "no positive labels: curve undefined", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(base_rate, linestyle="--", color="0.5", label=f"baseline (positive rate = {base_rate:.3f})")
    if threshold is not None:
        ax.plot(
            summary["recall"],
            summary["precision"],
            marker="*",
            markersize=15,
            linestyle="none",
            color=_FLAG_COLOR,
            markeredgecolor="black",
            clip_on=False,  # stays visible on the axes edge (e.g. recall 0)
            zorder=5,
            label=f"threshold {threshold:.3g}: P = {summary['precision']:.3f}, R = {summary['recall']:.3f}",
        )
    ax.set(xlim=(0, 1.01), ylim=(0, 1.03), xlabel="recall", ylabel="precision")
    ax.set_title(f"{title} ({summary['n']:,} samples, {summary['positives']:,} positive)")
    ax.legend(loc="lower left")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


@_serialized
def plot_timeline(
    times: ArrayLike,
    values: ArrayLike,
    scores: ArrayLike,
    threshold: float,
    path: str | os.PathLike[str],
    labels: ArrayLike | None = None,
    flags: ArrayLike | None = None,
    feature_names: list[str] | None = None,
    title: str = "Anomaly timeline",
) -> Path:
    """One series: raw values with labelled events shaded, and the probability score with threshold and flags.

    ``times`` are epoch milliseconds (shown as UTC dates) unless all are below 1e11, then step indices.
    ``values`` has shape (N,) or (N, F); ``scores``, ``labels`` (0/1) and ``flags`` (bool) shape (N,).
    """
    t = _vector(times, "times")
    n = t.size
    v = np.asarray(values, dtype=np.float64)
    v = v.reshape(-1, 1) if v.ndim == 1 else v
    if v.ndim != 2 or v.shape[0] != n:
        raise ValueError(f"values must have shape ({n},) or ({n}, F), got {np.shape(values)}")
    s = _vector(scores, "scores", n)
    names = list(feature_names) if feature_names is not None else [f"feature {i}" for i in range(v.shape[1])]
    if len(names) != v.shape[1]:
        raise ValueError(f"feature_names has {len(names)} names for {v.shape[1]} features")
    event = _vector(labels, "labels", n) == 1 if labels is not None else None
    flagged = _vector(flags, "flags", n).astype(bool) if flags is not None else None

    is_epoch = bool(np.any(t >= EPOCH_MS_MIN))
    x = t.astype("datetime64[ms]") if is_epoch else t

    fig = _figure(12.0, 6.4)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for column, name in zip(v.T, names, strict=True):
        top.plot(x, column, linewidth=1.0, label=name)
    if event is not None:
        for ax in (top, bottom):
            _shade_events(ax, t, event, is_epoch, label="labelled event" if ax is top else None)
    top.set(ylabel="value")
    top.set_title(title)
    top.grid(True, alpha=0.3)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)

    bottom.plot(x, s, color="tab:blue", linewidth=1.0, label="probability")
    bottom.axhline(threshold, color=_FLAG_COLOR, linestyle="--", linewidth=1.0, label=f"threshold = {threshold:.3g}")
    if flagged is not None and flagged.any():
        bottom.plot(
            x[flagged],
            s[flagged],
            linestyle="none",
            marker="o",
            markersize=3.5,
            color=_FLAG_COLOR,
            label=f"flagged ({int(flagged.sum()):,})",
        )
    bottom.set(ylim=(-0.03, 1.03), ylabel="probability")
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    if is_epoch:
        locator = AutoDateLocator()
        bottom.xaxis.set_major_locator(locator)
        bottom.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        bottom.set_xlabel("time (UTC)")
    else:
        bottom.set_xlabel("step")
    return _save(fig, path)


# --- internals -------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: rendering never goes through pyplot
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=DPI)
    return out


def _shade_events(
    ax: Axes, t: NDArray[np.float64], event: NDArray[np.bool_], is_epoch: bool, label: str | None
) -> None:
    """Shade each run of labelled steps, padded by half a step each side and at least 0.5% of the axis wide.

    The minimum width keeps one-step events visible on a long series; it may overstate their duration.
    """
    half_step = abs(float(np.median(np.diff(t)))) / 2.0 if t.size > 1 else 0.5
    half_min = 0.0025 * float(np.ptp(t))
    padded = np.concatenate(([False], event, [False]))
    starts = np.flatnonzero(~padded[:-1] & padded[1:])
    stops = np.flatnonzero(padded[:-1] & ~padded[1:]) - 1  # index of each run's last step
    for start, stop in zip(starts, stops, strict=True):
        centre, half = (t[start] + t[stop]) / 2.0, (t[stop] - t[start]) / 2.0 + half_step
        edges = centre + np.array([-1.0, 1.0]) * max(half, half_min)
        lo, hi = edges.astype("datetime64[ms]") if is_epoch else edges
        ax.axvspan(lo, hi, color=_EVENT_COLOR, alpha=0.25, linewidth=0, label=label)
        label = None  # one legend entry for all spans


def _vector(values: ArrayLike, name: str, length: int | None = None) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty one-dimensional array, got shape {array.shape}")
    if length is not None and array.size != length:
        raise ValueError(f"{name} has {array.size} entries but times has {length}")
    return array
