"""Evaluating a checkpoint on a labelled recording (metrics and plots) through a :class:`Scorer`, with the
scores that serving gives (each window placed against its series' earlier windows in the recording's order;
:func:`detector.serve.model_check.build_scorer` builds one from the settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from detector.model.context import recording_contexts
from detector.model.metrics import binary_metrics
from detector.scoring import Scorer
from detector.windows import WindowSet


def evaluate(scorer: Scorer, data: WindowSet, out: Path) -> dict[str, Any]:
    """Write the PNG plots into ``out``, and nothing else; return the metrics."""
    from detector import report

    assert data.labels is not None
    ckpt = scorer.checkpoint
    scores = scorer.score(
        data.values,
        recording_contexts(data, scorer.checkpoint.history),
    )
    prob = scores.probability
    y = data.labels.max(axis=1)
    metrics: dict[str, Any] = {
        "model_version": ckpt.version,
        "calibration": ckpt.calibration_name,
        "threshold_rule": ckpt.window.rule,
        "window": binary_metrics(y, prob, ckpt.window.threshold),
    }
    step_prob = scores.step_probability
    if step_prob is not None and ckpt.step is not None:
        metrics["step"] = binary_metrics(
            ckpt.step_targets(data.labels).reshape(-1), step_prob.reshape(-1), ckpt.step.threshold
        )
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "reliability": report.plot_reliability(
            y, prob, out / "reliability.png", title=f"Reliability ({ckpt.calibration_name})"
        ),
        "precision_recall": report.plot_precision_recall(
            y, prob, out / "precision_recall.png", threshold=ckpt.window.threshold
        ),
    }
    # Timeline: the series with the most labelled windows, its windows in time order, stitched.
    ids = np.array(data.series_ids)
    series = max(sorted(set(data.series_ids)), key=lambda s: int(y[ids == s].sum()))
    idx = sorted(np.flatnonzero(ids == series), key=lambda i: (data.starts[i] or 0, i))
    t = data.shape[0]
    values = data.values[idx].reshape(-1, data.shape[1])
    labels = data.labels[idx].reshape(-1)
    held = ""
    if step_prob is not None and ckpt.step is not None:
        line, thr = step_prob[idx].reshape(-1), ckpt.step.threshold
        rows = ckpt.network.hold_for(ckpt.n_features)
        held = f" (each step holds the highest of its window's last {rows})" if rows > 1 else ""
    else:
        line, thr = np.repeat(prob[idx], t), ckpt.window.threshold
    first = data.starts[idx[0]]
    step_ms = data.step_ms[idx[0]]
    times = (first + np.arange(len(values)) * step_ms) if (first is not None and step_ms) else np.arange(len(values))
    plots["timeline"] = report.plot_timeline(
        times,
        values,
        line,
        thr,
        out / "timeline.png",
        labels=labels,
        flags=line >= thr,
        feature_names=list(ckpt.feature_names),
        title=f"Series {series}: values, labels and scores" + held,
    )
    metrics["plots"] = {k: str(Path(v).name) for k, v in plots.items()}
    return metrics
