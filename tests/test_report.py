"""Evaluation plots write readable PNG files."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from detector.report import plot_precision_recall, plot_reliability, plot_timeline

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    """The file is a non-empty PNG that matplotlib reads back as a plausible RGBA image."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3
    assert image.shape[2] in (3, 4)
    assert image.shape[0] > 300
    assert image.shape[1] > 300
    assert image.std() > 0  # something was drawn


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    y = (rng.random(2000) < 0.1).astype(int)
    prob = 1 / (1 + np.exp(-np.where(y == 1, rng.normal(1, 1.5, y.size), rng.normal(-2.5, 1.5, y.size))))
    return y, prob


def test_reliability_writes_png(tmp_path: Path, scored) -> None:
    """plot_reliability writes a PNG at the path it returns, creating missing folders."""
    y, prob = scored
    out = plot_reliability(y, prob, tmp_path / "nested" / "reliability.png", bins=10, title="val")
    assert out == tmp_path / "nested" / "reliability.png"
    assert_png(out)


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_precision_recall_writes_png(tmp_path: Path, scored, threshold) -> None:
    """plot_precision_recall writes a PNG with or without an operating point."""
    y, prob = scored
    out = plot_precision_recall(y, prob, str(tmp_path / "pr.png"), threshold=threshold)
    assert_png(Path(out))


def test_precision_recall_without_positives(tmp_path: Path) -> None:
    """A PR plot of data with no events still renders rather than raising."""
    assert_png(plot_precision_recall([0, 0, 0], [0.1, 0.5, 0.9], tmp_path / "pr.png", threshold=0.5))


def test_timeline_epoch_ms_multi_feature(tmp_path: Path) -> None:
    """plot_timeline draws epoch-ms timestamps, several features, labelled events and flags."""
    n = 500
    rng = np.random.default_rng(1)
    times = 1_718_000_000_000 + np.arange(n) * 1000
    values = rng.normal(size=(n, 3))
    labels = np.zeros(n, dtype=int)
    labels[100:130] = 1
    labels[400] = 1
    scores = np.clip(rng.random(n) * 0.3 + labels * 0.6, 0, 1)
    out = plot_timeline(
        times,
        values,
        scores,
        0.5,
        tmp_path / "timeline.png",
        labels=labels,
        flags=scores >= 0.5,
        feature_names=["cpu", "memory", "latency"],
    )
    assert_png(out)


def test_timeline_indices_without_labels_or_flags(tmp_path: Path) -> None:
    """plot_timeline accepts step indices, a 1-D series and no labels or flags."""
    n = 200
    out = plot_timeline(np.arange(n), np.sin(np.arange(n) / 10), np.full(n, 0.2), 0.7, tmp_path / "t.png")
    assert_png(out)


def test_timeline_rejects_mismatched_inputs(tmp_path: Path) -> None:
    """Scores, values or feature names that do not match the times raise ValueError."""
    t = np.arange(10)
    with pytest.raises(ValueError, match="scores"):
        plot_timeline(t, np.zeros(10), np.zeros(9), 0.5, tmp_path / "a.png")
    with pytest.raises(ValueError, match="values"):
        plot_timeline(t, np.zeros((9, 2)), np.zeros(10), 0.5, tmp_path / "b.png")
    with pytest.raises(ValueError, match="feature_names"):
        plot_timeline(t, np.zeros((10, 2)), np.zeros(10), 0.5, tmp_path / "c.png", feature_names=["x"])
    assert not list(tmp_path.iterdir())


def test_plots_render_concurrently(tmp_path: Path, scored) -> None:
    """Plots drawn from several threads at once each produce a valid PNG."""
    y, prob = scored
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [
            pool.submit(plot_reliability, y, prob, tmp_path / f"r{i}.png")
            if i % 2
            else pool.submit(plot_precision_recall, y, prob, tmp_path / f"p{i}.png", 0.5)
            for i in range(8)
        ]
        paths = [f.result() for f in futures]
    for path in paths:
        assert_png(path)
