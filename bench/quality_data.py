"""Real labelled telemetry for bench/quality.py: the datasets, read into plain arrays.

Two public (MIT) sources, kept outside the repository under one folder ``DIR``:

- ``DIR/JumpStarter/dataset/Dataset{2,3}``: 30 services each, ``train/serviceN.csv`` (5,760 rows),
  ``test/serviceN.csv`` (7,200 rows) and ``test_label/serviceN.csv`` (one 0/1 per test row). No header, no
  timestamp, 19 metrics per row, no missing values; the rows are 5 minutes apart.
- ``DIR/cloud-monitoring-dataset/data/<group>/<name>.csv`` (``TimeStamp,Value,Label``): 60 univariate
  series, rows 1 minute or 1 hour apart. No split: the first 30% of each series trains, the rest tests.
  What the files hold and what is done about it (see :func:`read_microsoft_series`):
  * some files quote every field, some none, some only the timestamp; timestamps are ISO 8601 with a ``Z``
    or bare ``YYYY-MM-DD HH:MM:SS`` (read as UTC);
  * the application-crash-rate files repeat rows (same timestamp, same value and label, up to three times):
    only the first is kept;
  * three of those files have empty values (5, 11 and 26 rows): carried forward from the last value;
  * some hourly series skip an hour now and then (a 2-hour step): kept as they are, rows in order;
  * one series (app1-09) has 52 training rows, fewer than a window: it trains nothing, and its first test
    rows, which have no full window behind them, are not scored (:attr:`Series.first_scored`).

Every reader returns :class:`Series` whose rows are the training period followed by the test period.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

JUMPSTARTER = "JumpStarter"
MICROSOFT = "cloud-monitoring-dataset"
JUMPSTARTER_STEP_MS = 5 * 60 * 1000
JUMPSTARTER_START_MS = 1_600_000_000_000  # the files carry no clock: rows are placed 5 minutes apart from here
MICROSOFT_TRAIN_SHARE = 0.3

HOW_TO_GET = """\
The quality bench reads two public labelled datasets (MIT licence) from one folder DIR outside the repository:
    git clone https://github.com/NetManAIOps/JumpStarter DIR/JumpStarter
    git clone https://github.com/microsoft/cloud-monitoring-dataset DIR/cloud-monitoring-dataset
then: make bench-quality DATA=DIR   (or: .venv/bin/python bench/quality.py --data DIR)"""


@dataclass
class Series:
    """One series: training rows then test rows, one clock, labels for the test rows.

    ``values`` (n, F) float64, all finite; ``labels`` (n,) int8, 0 throughout the training rows (they
    carry no labels and are never scored). Row ``i`` is at ``start_ms + i * step_ms`` on the clock given
    to the model (the real clock where the source has one and the rows are regular).
    """

    name: str
    values: np.ndarray
    labels: np.ndarray
    test_start: int
    step_ms: int
    start_ms: int

    def first_scored(self, window: int) -> int:
        """The first row that is scored: the first test row with ``window`` rows before it (a full
        window for the product and the rolling baseline alike)."""
        return max(self.test_start, window)

    @property
    def rows_per_day(self) -> float:
        return 86_400_000 / self.step_ms


@dataclass
class Dataset:
    name: str
    series: list[Series]
    notes: list[str]  # what was found in the files and done about it, for the report


def missing(data_dir: Path) -> list[Path]:
    """The folders the bench needs that are not under ``data_dir``."""
    need = [
        data_dir / JUMPSTARTER / "dataset" / "Dataset2",
        data_dir / JUMPSTARTER / "dataset" / "Dataset3",
        data_dir / MICROSOFT / "data",
    ]
    return [p for p in need if not p.is_dir()]


def read_jumpstarter(data_dir: Path, dataset: str, limit: int | None = None) -> Dataset:
    """JumpStarter ``dataset`` (e.g. ``Dataset2``): its services in numeric order, the first ``limit``."""
    root = data_dir / JUMPSTARTER / "dataset" / dataset
    names = sorted((p.stem for p in (root / "train").glob("service*.csv")), key=lambda s: int(s[len("service") :]))
    series = []
    for name in names[:limit]:
        train = np.loadtxt(root / "train" / f"{name}.csv", delimiter=",", ndmin=2)
        test = np.loadtxt(root / "test" / f"{name}.csv", delimiter=",", ndmin=2)
        labels = np.loadtxt(root / "test_label" / f"{name}.csv", delimiter=",", ndmin=1).astype(np.int8)
        if len(labels) != len(test) or train.shape[1] != test.shape[1]:
            raise ValueError(f"{root}/{name}: train {train.shape}, test {test.shape}, labels {labels.shape}")
        if not (np.isfinite(train).all() and np.isfinite(test).all()):
            raise ValueError(f"{root}/{name}: values that are not finite numbers")
        series.append(
            Series(
                name=f"{dataset}/{name}",
                values=np.concatenate([train, test]),
                labels=np.concatenate([np.zeros(len(train), np.int8), labels]),
                test_start=len(train),
                step_ms=JUMPSTARTER_STEP_MS,
                start_ms=JUMPSTARTER_START_MS,
            )
        )
    notes = [f"{len(series)} services x {series[0].values.shape[1]} metrics; no header, no clock, no gaps"]
    return Dataset(f"JumpStarter {dataset}", series, notes)


def _parse_time(text: str) -> int:
    """Epoch ms of an ISO 8601 timestamp; one without a zone is UTC."""
    stamp = dt.datetime.fromisoformat(text.strip())
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return int(stamp.timestamp() * 1000)


def read_microsoft_series(path: Path) -> tuple[Series, dict[str, int]]:
    """One cloud-monitoring series, and counts of what was repaired: ``duplicates`` (rows dropped for
    repeating an earlier timestamp), ``filled`` (empty values carried forward, or back at the start),
    ``gaps`` (steps longer than the usual one, kept)."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    times, values, labels, seen = [], [], [], set()
    for stamp, value, label in rows:
        ms = _parse_time(stamp)
        if ms in seen:
            continue
        seen.add(ms)
        times.append(ms)
        values.append(float(value) if value.strip() else np.nan)
        labels.append(int(float(label)))
    vals = np.array(values)
    empty = np.isnan(vals)
    if empty.any():
        idx = np.where(empty, 0, np.arange(len(vals)))
        np.maximum.accumulate(idx, out=idx)
        vals = vals[idx]  # carried forward; empties before the first value stay NaN ...
        vals[np.isnan(vals)] = vals[~np.isnan(vals)][0]  # ... and take the first value
    steps = np.diff(times)
    step = int(np.median(steps))
    series = Series(
        name=f"{path.parent.name}/{path.stem}",
        values=vals[:, None],
        labels=np.array(labels, np.int8),
        test_start=int(len(vals) * MICROSOFT_TRAIN_SHARE),
        step_ms=step,
        start_ms=times[0],
    )
    series.labels[: series.test_start] = 0
    repairs = {"duplicates": len(rows) - len(times), "filled": int(empty.sum()), "gaps": int((steps > step).sum())}
    return series, repairs


def read_microsoft(data_dir: Path, limit: int | None = None) -> Dataset:
    """The cloud-monitoring series in path order; with ``limit``, that many spread evenly over the groups."""
    paths = sorted((data_dir / MICROSOFT / "data").glob("*/*.csv"))
    if limit is not None and limit < len(paths):
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    series, totals = [], {"duplicates": 0, "filled": 0, "gaps": 0}
    touched = dict.fromkeys(totals, 0)
    for path in paths:
        s, repairs = read_microsoft_series(path)
        series.append(s)
        for key, n in repairs.items():
            totals[key] += n
            touched[key] += n > 0
    notes = [
        f"{len(series)} univariate series, first {MICROSOFT_TRAIN_SHARE:.0%} of each trains",
        f"{totals['duplicates']} repeated rows dropped ({touched['duplicates']} files), "
        f"{totals['filled']} empty values carried forward ({touched['filled']} files), "
        f"{totals['gaps']} skipped steps kept ({touched['gaps']} files)",
    ]
    return Dataset("Microsoft cloud-monitoring", series, notes)
