"""Detection quality on real labelled telemetry: the product, through its CLI, against simple baselines.

Run: `make bench-quality DATA=DIR` (or `.venv/bin/python bench/quality.py --data DIR [--quick]`); DIR holds the
public datasets described in bench/quality_data.py (the bench says how to get them when they are missing).
Per dataset (JumpStarter Dataset2 and Dataset3, Microsoft cloud-monitoring):

1. The training period of every series, cut into consecutive windows of T = 64 rows without labels, is one
   recording; `detector train --inject` (the README's way without labels; default settings) fits one model.
   Consecutive windows rather than overlapping ones: `train` re-cuts windows at every offset from the
   contiguous runs a recording holds, and overlapping windows would break those runs apart. No scaling:
   the model normalises each window itself.
2. Every test row with T rows behind it (the earlier ones from the training period) is the last row of one
   window; `detector replay --offline` scores them. A row's score is its window's last step probability
   (the window probability when the output has no steps); its flag is the output's `flag`.
3. The same rows get the baseline scores (rolling robust z, whole-history and windowed Gaussians, windowed
   robust z, per-series PCA reconstruction error, per-series isolation forest) and chance; the target is
   measured against the best of them. For reference only (not target baselines), each baseline is also
   shown held as the model holds its step probabilities (a row takes the highest score of the rows up to
   it: `train.network.step_hold` (64) in a wide model, `narrow_step_hold` (2) in a narrow one by default;
   `detector inspect` shows the model's).
4. Metrics per row, pooled over the dataset's series: AUPRC and best F1 for every method; for the product,
   precision, recall and F1 at its `flag`, event recall, median time to detect and false alarms per
   series-day; point-adjusted F1 beside the plain figures. Tables on stdout, figures in
   bench/out/quality.json, checkpoints in bench/out/quality/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import quality_data as qd
import torch
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, precision_recall_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from targets import Target, report

from detector import recordings
from detector.model import checkpoint
from detector.model.network import hold

T = 64  # rows per window: the product's usual window
CHUNK_WINDOWS = 40_000  # most test windows per `replay --offline` run (about 550 MB of JSON with 19 metrics)
OUT = Path(__file__).parent / "out"
DETECTOR = str(Path(sys.executable).with_name("detector"))
EPS = 1e-9
# The product's per-row AUPRC over the best baseline's of the same run, per dataset with a target.
TARGETS = {
    "dataset2": Target(">=", 1.25, "x", "bench/RESULTS.md, Real data"),
    "microsoft": Target(">=", 1.25, "x", "bench/RESULTS.md, Real data"),
}


# --- the product, through its CLI -------------------------------------------------------------------


def _window(s: qd.Series, first: int) -> dict:
    """The unlabelled input window of rows ``first .. first + T - 1`` of ``s``."""
    rows = s.values[first : first + T]
    return {
        "series_id": s.name,
        "window_id": f"{s.name}/{first + T - 1}",
        "start": s.start_ms + first * s.step_ms,
        "step_ms": s.step_ms,
        "values": rows[:, 0].tolist() if rows.shape[1] == 1 else rows.tolist(),
    }


def training_windows(ds: qd.Dataset) -> Iterator[dict]:
    """Consecutive windows covering each series' training rows (a shorter tail is left out)."""
    for s in ds.series:
        for first in range(0, s.test_start - T + 1, T):
            yield _window(s, first)


def train_model(ds: qd.Dataset, ckpt: Path, work: Path, epochs: int | None, minutes: float | None) -> dict:
    """Fit the product on ``ds``'s training rows with `detector train --inject`; its report lines and time.

    ``epochs`` and ``minutes`` (train.max_minutes) replace the settings' defaults when given.
    """
    rec = work / "train.jsonl"
    n = recordings.write(rec, training_windows(ds))
    extra = ["--epochs", str(epochs)] if epochs else []
    env = {**os.environ, "DETECTOR_TRAIN__MAX_MINUTES": str(minutes)} if minutes is not None else None
    started = time.monotonic()
    done = subprocess.run(
        [DETECTOR, "train", "--inject", "--data", str(rec), "--out", str(ckpt), *extra],
        capture_output=True,
        text=True,
        env=env,
    )
    rec.unlink()
    if done.returncode:
        raise SystemExit(f"detector train failed ({done.returncode}): {done.stderr.strip()}")
    lines = done.stdout.strip().splitlines()
    for line in lines:
        print(f"  train: {line}", flush=True)
    return {"windows": n, "seconds": round(time.monotonic() - started, 1), "report": lines}


class _Scored(msgspec.Struct):
    window_id: str
    probability: float
    flag: bool
    step_probabilities: list[float] | None = None
    step_flags: list[int] | None = None


@dataclass
class ProductScores:
    """Per scored row of one series (rows ``first_scored(T)`` on), in order."""

    score: np.ndarray  # last step probability (window probability without a step head)
    window_probability: np.ndarray
    flag: np.ndarray  # the output's `flag` (window level)
    step_flag: np.ndarray | None  # the window's last step flag


def _replay(chunk: list[qd.Series], ckpt: Path, work: Path) -> Iterator[_Scored]:
    """Write the scored rows' windows of ``chunk`` to a recording, score it with `replay --offline`, and
    yield the output records in input order (the files are removed afterwards)."""
    rec, out, dlq = work / "test.jsonl", work / "scores.jsonl", work / "scores.dlq.jsonl"
    windows = (_window(s, i - T + 1) for s in chunk for i in range(s.first_scored(T), len(s.values)))
    recordings.write(rec, windows)
    done = subprocess.run(
        [DETECTOR, "replay", str(rec), "--offline", "--checkpoint", str(ckpt), "--out", str(out), "--dlq", str(dlq)],
        capture_output=True,
        text=True,
    )
    rec.unlink()
    if done.returncode or dlq.exists():
        raise SystemExit(f"detector replay --offline failed ({done.returncode}): {done.stderr.strip()}")
    print(f"  replay: {done.stdout.strip()}", flush=True)
    decoder = msgspec.json.Decoder(_Scored)
    with out.open("rb") as f:
        for line in f:
            yield decoder.decode(line)
    out.unlink()


def _scored_rows(s: qd.Series) -> int:
    return len(s.values) - s.first_scored(T)


def score_product(ds: qd.Dataset, ckpt: Path, work: Path) -> dict[str, ProductScores]:
    """Scores of every scored row, per series name. One `replay --offline` run scores whole series, at
    most CHUNK_WINDOWS windows (or one series, when it alone holds more)."""
    chunks: list[list[qd.Series]] = [[]]
    for s in ds.series:
        if chunks[-1] and sum(map(_scored_rows, chunks[-1])) + _scored_rows(s) > CHUNK_WINDOWS:
            chunks.append([])
        chunks[-1].append(s)
    result = {}
    for chunk in chunks:
        records = _replay(chunk, ckpt, work)
        for s in chunk:
            rows = [next(records) for _ in range(_scored_rows(s))]
            if rows[-1].window_id != f"{s.name}/{len(s.values) - 1}":
                raise SystemExit(f"replay output out of step with its input at {rows[-1].window_id}")
            steps = rows[0].step_probabilities is not None
            result[s.name] = ProductScores(
                score=np.array([r.step_probabilities[-1] if steps else r.probability for r in rows]),  # type: ignore[index]
                window_probability=np.array([r.probability for r in rows]),
                flag=np.array([r.flag for r in rows]),
                step_flag=np.array([r.step_flags[-1] for r in rows], bool) if steps else None,  # type: ignore[index]
            )
        for _ in records:  # drain: removes the output file
            pass
    return result


# --- baselines: one score per scored row, higher = more anomalous --------------------------------------


def _floor(scale: np.ndarray, level: np.ndarray) -> np.ndarray:
    """A scale that is never 0: a constant feature that moves gets a very large, finite z."""
    return np.maximum(scale, EPS * (1.0 + np.abs(level)))


def rolling_robust_z(s: qd.Series) -> np.ndarray:
    """max over features of |x - median| / (1.4826 MAD), median and MAD of the previous T rows; where the
    MAD is 0 (more than half the rows equal), 1.2533 x the mean absolute deviation stands in."""
    first, x = s.first_scored(T), s.values
    past = sliding_window_view(x[first - T : len(x) - 1], T, axis=0)  # (rows, F, T): the T rows before each
    med = np.median(past, axis=2)
    dev = np.abs(past - med[..., None])
    mad = 1.4826 * np.median(dev, axis=2)
    scale = np.where(mad > 0, mad, 1.2533 * dev.mean(axis=2))
    return (np.abs(x[first:] - med) / _floor(scale, med)).max(axis=1)


def history_gaussian(s: qd.Series) -> np.ndarray:
    """max over features of |x - mean| / std, mean and std of all the series' earlier rows (training
    included)."""
    first = s.first_scored(T)
    x = s.values - s.values[: s.test_start].mean(axis=0)  # centred: running sums of squares stay exact enough
    n = np.arange(1, len(x) + 1)[:, None]
    mean = np.cumsum(x, axis=0) / n
    var = np.cumsum(x * x, axis=0) / n - mean**2
    before = slice(first - 1, len(x) - 1)  # statistics of rows 0 .. i-1 for row i
    std = np.sqrt(np.maximum(var[before], 0.0))
    return (np.abs(x[first:] - mean[before]) / _floor(std, s.values[before])).max(axis=1)


def windowed_gaussian(s: qd.Series, rows: int = 6400) -> np.ndarray:
    """max over features of |x - mean| / std, mean and std of the ``rows`` rows before (fewer at first)."""
    first, x = s.first_scored(T), s.values - s.values[: s.test_start].mean(axis=0)
    zero = np.zeros((1, x.shape[1]))
    s1, s2 = np.concatenate([zero, np.cumsum(x, axis=0)]), np.concatenate([zero, np.cumsum(x * x, axis=0)])
    i = np.arange(first, len(x))
    lo = np.maximum(0, i - rows)
    n = (i - lo)[:, None]
    mean = (s1[i] - s1[lo]) / n
    std = np.sqrt(np.maximum((s2[i] - s2[lo]) / n - mean**2, 0.0))
    return (np.abs(x[first:] - mean) / _floor(std, mean + s.values[: s.test_start].mean(axis=0))).max(axis=1)


def windowed_robust_z(s: qd.Series, rows: int = 2000) -> np.ndarray:
    """max over features of |x - median| / (1.4826 MAD) over the ``rows`` rows before (fewer at first);
    1.2533 x the mean absolute deviation where the MAD is 0."""
    first, x = s.first_scored(T), s.values
    out = np.empty((len(x) - first, x.shape[1]))
    for i in range(first, len(x)):
        past = x[max(0, i - rows) : i]
        med = np.median(past, axis=0)
        dev = np.abs(past - med)
        mad = 1.4826 * np.median(dev, axis=0)
        scale = np.where(mad > 0, mad, 1.2533 * dev.mean(axis=0))
        out[i - first] = np.abs(x[i] - med) / _floor(scale, med)
    return out.max(axis=1)


def pca_error(s: qd.Series) -> np.ndarray | None:
    """Squared reconstruction error of the standardised row, by a PCA keeping 95% of the training rows'
    variance (fitted per series on its training rows); None for a univariate series."""
    if s.values.shape[1] < 2:
        return None
    model = make_pipeline(StandardScaler(), PCA(n_components=0.95, svd_solver="full"))
    model.fit(s.values[: s.test_start])
    scaler, pca = model[0], model[1]
    z = scaler.transform(s.values[s.first_scored(T) :])
    return ((z - pca.inverse_transform(pca.transform(z))) ** 2).sum(axis=1)


def isolation_forest(s: qd.Series) -> np.ndarray:
    """Negated isolation-forest score of the row (100 trees, fitted per series on its training rows)."""
    forest = IsolationForest(random_state=0).fit(s.values[: s.test_start])
    return -forest.score_samples(s.values[s.first_scored(T) :])


def running_max(scores: np.ndarray, rows: int) -> np.ndarray:
    """Each row's score becomes the largest over it and the ``rows - 1`` scored rows before it: a baseline
    held as the model's steps are (the product's own hold, NetworkConfig.hold_for)."""
    return hold(torch.from_numpy(np.asarray(scores, dtype=np.float64))[None], rows)[0].numpy()


BASELINES: dict[str, Callable[[qd.Series], np.ndarray | None]] = {
    "rolling robust z": rolling_robust_z,
    "whole-history Gaussian": history_gaussian,
    "windowed Gaussian (6,400 rows)": windowed_gaussian,
    "windowed robust z (2,000 rows)": windowed_robust_z,
    "PCA reconstruction": pca_error,
    "isolation forest": isolation_forest,
}


# --- metrics ------------------------------------------------------------------------------------------


def events(labels: np.ndarray) -> list[tuple[int, int]]:
    """Labelled contiguous runs of one series as half-open (start, end) row ranges."""
    edges = np.diff(np.concatenate([[0], labels.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def point_adjusted(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Scores where each event's rows all take the event's highest score: at any threshold, an event is
    then wholly detected as soon as any of its rows is (point adjustment)."""
    adjusted = scores.astype(np.float64).copy()
    for a, b in events(labels):
        adjusted[a:b] = scores[a:b].max()
    return adjusted


def _best_f1(y: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(y, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, EPS)
    return float(f1.max())


def _f1(y: np.ndarray, flags: np.ndarray) -> tuple[float, float, float]:
    tp = float((y & flags).sum())
    precision = tp / max(int(flags.sum()), 1)
    recall = tp / max(int(y.sum()), 1)
    return precision, recall, 2 * precision * recall / max(precision + recall, EPS)


def ranking(labels: list[np.ndarray], scores: list[np.ndarray]) -> dict[str, float]:
    """AUPRC, best F1 over thresholds and best point-adjusted F1, pooled over series (one array each)."""
    y = np.concatenate(labels)
    s = np.concatenate(scores)
    adjusted = np.concatenate([point_adjusted(sc, lab) for sc, lab in zip(scores, labels, strict=True)])
    return {
        "auprc": float(average_precision_score(y, s)),
        "best_f1": _best_f1(y, s),
        "pa_best_f1": _best_f1(y, adjusted),
    }


def at_flags(labels: list[np.ndarray], flags: list[np.ndarray], rows_per_day: list[float]) -> dict[str, float]:
    """Row precision/recall/F1 of 0/1 flags pooled over series; point-adjusted F1; event recall (an event is
    detected when any of its rows is flagged), median rows from an event's start to its first flag (detected
    events), and false alarms (runs of flagged rows outside events) per series-day."""
    y, f = np.concatenate(labels).astype(bool), np.concatenate(flags).astype(bool)
    precision, recall, f1 = _f1(y, f)
    adjusted = np.concatenate([point_adjusted(fl, lab) for fl, lab in zip(flags, labels, strict=True)]) > 0
    delays, n_events, alarms, days = [], 0, 0, 0.0
    for lab, fl, per_day in zip(labels, flags, rows_per_day, strict=True):
        for a, b in events(lab):
            n_events += 1
            hit = np.flatnonzero(fl[a:b])
            if len(hit):
                delays.append(int(hit[0]))
        alarms += len(events(fl.astype(bool) & (lab == 0)))
        days += len(lab) / per_day
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "pa_f1": _f1(y, adjusted)[2],
        "events": n_events,
        "events_detected": len(delays),
        "event_recall": len(delays) / max(n_events, 1),
        "median_rows_to_detect": float(np.median(delays)) if delays else float("nan"),
        "false_alarms_per_series_day": alarms / days,
    }


# --- one dataset, the report ---------------------------------------------------------------------------


def evaluate(ds: qd.Dataset, product: dict[str, ProductScores], hold_rows: int) -> dict[str, dict[str, float]]:
    """Every method's metrics on the scored rows of ``ds`` (see the module docstring), by method name;
    baselines also held over ``hold_rows`` rows when that is more than 1."""
    labels = [s.labels[s.first_scored(T) :] for s in ds.series]
    per_day = [s.rows_per_day for s in ds.series]
    ours = [product[s.name] for s in ds.series]
    methods = {
        "detector": {**ranking(labels, [p.score for p in ours]), **at_flags(labels, [p.flag for p in ours], per_day)},
        "detector, window probability": ranking(labels, [p.window_probability for p in ours]),
    }
    if all(p.step_flag is not None for p in ours):
        methods["detector, last step_flag"] = at_flags(labels, [p.step_flag for p in ours], per_day)  # type: ignore[misc]
    held = {}
    for name, baseline in BASELINES.items():
        scores = [baseline(s) for s in ds.series]
        if all(sc is not None for sc in scores):
            methods[name] = ranking(labels, scores)  # type: ignore[arg-type]
            if hold_rows > 1:
                held_scores = [running_max(sc, hold_rows) for sc in scores]  # type: ignore[arg-type]
                held[f"{name}, held {hold_rows} rows"] = ranking(labels, held_scores)
    methods.update(held)
    share = float(np.concatenate(labels).mean())
    flag_all = 2 * share / (1 + share)  # F1 of flagging every row, point-adjusted or not
    methods["chance"] = {"auprc": share, "best_f1": flag_all, "pa_best_f1": flag_all}
    return methods


COLUMNS = [  # (heading, key, format)
    ("AUPRC", "auprc", "{:.3f}"),
    ("best F1", "best_f1", "{:.3f}"),
    ("(PA)", "pa_best_f1", "{:.3f}"),
    ("P@flag", "precision", "{:.3f}"),
    ("R@flag", "recall", "{:.3f}"),
    ("F1@flag", "f1", "{:.3f}"),
    ("(PA)", "pa_f1", "{:.3f}"),
    ("ev.recall", "event_recall", "{:.3f}"),
    ("TTD rows", "median_rows_to_detect", "{:.0f}"),
    ("FA/s-day", "false_alarms_per_series_day", "{:.2f}"),
]


def table(methods: dict[str, dict[str, float]]) -> str:
    """Methods as rows, metrics as columns; '-' where a method has no such figure."""
    width = max(len(m) for m in methods) + 2
    lines = ["method".ljust(width) + "".join(h.rjust(10) for h, _, _ in COLUMNS)]
    for name, m in methods.items():
        cells = [fmt.format(m[key]) if key in m else "-" for _, key, fmt in COLUMNS]
        lines.append(name.ljust(width) + "".join(c.rjust(10) for c in cells))
    return "\n".join(lines)


def ratio(methods: dict[str, dict[str, float]]) -> tuple[float, str]:
    """Product AUPRC over the best baseline's, and that baseline's name."""
    best = max((n for n in BASELINES if n in methods), key=lambda n: methods[n]["auprc"])
    return methods["detector"]["auprc"] / methods[best]["auprc"], best


def run_dataset(ds: qd.Dataset, work: Path, args: argparse.Namespace) -> dict:
    """Train (or reuse), score, evaluate and print one dataset; its figures for quality.json."""
    labels = np.concatenate([s.labels[s.first_scored(T) :] for s in ds.series])
    n_events = sum(len(events(s.labels[s.first_scored(T) :])) for s in ds.series)
    print(
        f"\n== {ds.name}: {len(ds.series)} series, {len(labels):,} scored rows, {n_events} events, "
        f"anomaly share {labels.mean():.3f}",
        flush=True,
    )
    for note in ds.notes:
        print(f"  data: {note}")
    slug = ds.name.split()[-1].lower()
    ckpt = OUT / "quality" / f"{slug}.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    if args.reuse and ckpt.exists():
        training: dict = {"reused": str(ckpt)}
    else:
        training = train_model(ds, ckpt, work, args.epochs, args.train_minutes)
    model = checkpoint.load(ckpt)
    started = time.monotonic()
    product = score_product(ds, ckpt, work)
    scoring_s = time.monotonic() - started
    started = time.monotonic()
    methods = evaluate(ds, product, model.network.hold_for(model.n_features))
    baselines_s = time.monotonic() - started
    factor, best = ratio(methods)
    print(f"\n{ds.name}\n{table(methods)}")
    print(f"product AUPRC / best baseline ({best}) AUPRC = {factor:.2f}x")
    spent = f"train {training.get('seconds', 0):.0f} s, score {scoring_s:.0f} s, baselines {baselines_s:.0f} s"
    print(f"({spent})")
    return {
        "series": len(ds.series),
        "scored_rows": len(labels),
        "events": n_events,
        "anomaly_share": float(labels.mean()),
        "notes": ds.notes,
        "training": training,
        "scoring_seconds": round(scoring_s, 1),
        "methods": methods,
        "auprc_over_best_baseline": factor,
        "best_baseline": best,
    }


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="", help="Folder holding JumpStarter/ and cloud-monitoring-dataset/.")
    parser.add_argument("--quick", action="store_true", help="5 services / 10 series per dataset (development).")
    parser.add_argument(
        "--only", choices=["dataset2", "dataset3", "microsoft"], action="append", help="Only this dataset (repeatable)."
    )
    parser.add_argument("--epochs", type=int, default=None, help="Passed to `detector train` (development only).")
    parser.add_argument(
        "--train-minutes",
        type=float,
        default=None,
        help="train.max_minutes for `detector train`, 0 = no cap (diagnosis; default: the settings' 4).",
    )
    parser.add_argument("--reuse", action="store_true", help="Reuse bench/out/quality/*.ckpt when present.")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not args.data or qd.missing(data):
        print(
            f"missing: {', '.join(map(str, qd.missing(data))) if args.data else '--data DIR'}\n{qd.HOW_TO_GET}",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    readers = {
        "dataset2": lambda: qd.read_jumpstarter(data, "Dataset2", 5 if args.quick else None),
        "dataset3": lambda: qd.read_jumpstarter(data, "Dataset3", 5 if args.quick else None),
        "microsoft": lambda: qd.read_microsoft(data, 10 if args.quick else None),
    }
    results = {}
    with tempfile.TemporaryDirectory(prefix="detector-quality-") as work:
        for key in args.only or readers:
            results[key] = run_dataset(readers[key](), Path(work), args)
    seconds = time.monotonic() - started
    summary: dict = {
        "command": " ".join(sys.argv),
        "train_overrides": {"epochs": args.epochs, "max_minutes": args.train_minutes},
        "window": T,
        "quick": args.quick,
        "machine": machine(),
        "seconds": round(seconds),
        "datasets": results,
    }
    factors = {key: r["auprc_over_best_baseline"] for key, r in results.items()}
    missing = {key: "not run (--only)" for key in TARGETS if key not in results}
    print()
    summary["targets"] = report({k: TARGETS[k] for k in TARGETS}, factors, missing, prefix="quality ")
    (OUT / "quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{machine()}; {seconds / 60:.1f} min in all -> {OUT / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
