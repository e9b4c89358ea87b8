"""Recordings: JSON Lines files of input windows (optionally with ``_ts``), read streaming or whole.

Whole reads (:func:`load`) are for training, calibration and evaluation: every line must be a valid
window of one shape, or the read fails naming the line. Streaming reads (:func:`iter_lines`) are for
replay, which turns bad lines into dead letters instead. :func:`replacing` writes a file whole or not at
all (``record`` captures through it).
"""

from __future__ import annotations

import contextlib
import csv
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from detector.codec import Window, decode_json, encode_json
from detector.errors import DataError, WindowError


def _open(path: Path):
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a recording (.jsonl)") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw line without newline) for each non-blank line of the file."""
    path = Path(path)
    with _open(path) as f:
        try:
            for number, line in enumerate(f, start=1):
                line = line.rstrip(b"\r\n")
                if line.strip():
                    yield number, line
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror})") from None


@dataclass
class WindowSet:
    """All windows of a recording as arrays. ``labels`` (N, T) int8 when every window carries them."""

    values: np.ndarray  # (N, T, F) float32
    labels: np.ndarray | None  # (N, T) int8
    series_ids: list[str]
    window_ids: list[str | int]
    starts: list[int | None]
    step_ms: list[int | None]
    event_types: list[str | None]

    def __len__(self) -> int:
        return len(self.values)

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape[1], self.values.shape[2]

    @property
    def window_labels(self) -> np.ndarray | None:
        """A window's own label: 1 when any of its step labels is 1."""
        return None if self.labels is None else self.labels.max(axis=1)

    def segments(self) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Contiguous runs of each series (windows whose starts follow on exactly), as (values, labels)."""
        order = sorted(range(len(self)), key=lambda i: (self.series_ids[i], self.starts[i] or 0, i))
        t = self.values.shape[1]
        runs: list[list[int]] = []
        for i in order:
            prev = runs[-1][-1] if runs else None
            if (
                prev is not None
                and self.series_ids[prev] == self.series_ids[i]
                and self.starts[prev] is not None
                and self.step_ms[prev]
                and self.starts[i] == self.starts[prev] + t * self.step_ms[prev]
            ):
                runs[-1].append(i)
            else:
                runs.append([i])
        out = []
        for run in runs:
            vals = self.values[run].reshape(-1, self.values.shape[2])
            labs = None if self.labels is None else self.labels[run].reshape(-1)
            out.append((vals, labs))
        return out


def load(path: str | Path, shape: tuple[int, int] | None = None, need_labels: bool = False) -> WindowSet:
    """Read a whole recording; :class:`DataError` naming the file and line on the first bad window."""
    path = Path(path)
    windows: list[Window] = []
    for number, line in iter_lines(path):
        try:
            w = decode_json(line, shape)
        except WindowError as err:
            raise DataError(f"{path}:{number}: {err.reason}: {err.detail}") from None
        if shape is None:
            shape = w.values.shape
        windows.append(w)
    if not windows:
        raise DataError(f"{path}: holds no windows")
    unlabelled = sum(w.labels is None for w in windows)
    if need_labels and unlabelled:
        raise DataError(f"{path}: {unlabelled} windows carry no labels; this command needs labels")
    return from_windows(windows, path.name)


def from_windows(windows: list[Window], name: str) -> WindowSet:
    """Stack validated windows of one shape; a missing window_id becomes ``{name}/{index}``."""
    labelled = all(w.labels is not None for w in windows)
    return WindowSet(
        values=np.stack([w.values for w in windows]),
        labels=np.stack([w.labels for w in windows]) if labelled else None,  # type: ignore[misc]
        series_ids=[w.series_id for w in windows],
        window_ids=[w.window_id if w.window_id is not None else f"{name}/{i}" for i, w in enumerate(windows)],
        starts=[w.start for w in windows],
        step_ms=[w.step_ms for w in windows],
        event_types=[w.event_type for w in windows],
    )


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[IO[bytes]]:
    """A file for the new content of ``path``, which takes ``path``'s place (flushed, fsynced, renamed) when
    the block ends normally; when the block raises, it is removed and ``path`` is left as it was.

    Until then it is ``.{name}.{random}.tmp`` beside ``path`` (so the rename is atomic), created with the
    permissions a plain ``open`` would give. DataError, before the block runs, when ``path`` is a folder
    or its folder cannot be written; DataError when the final flush or rename fails.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file to write")
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as err:
            raise DataError(f"{path}: cannot write ({err.strerror})") from None
    else:
        raise DataError(f"{path}: cannot write (no free temporary name beside it)")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as err:
                raise DataError(f"{path}: cannot write ({err.strerror})") from None
        try:
            os.replace(tmp, path)
        except OSError as err:
            raise DataError(f"{path}: cannot write ({err.strerror})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write(path: str | Path, lines: Iterator[dict] | list[dict]) -> int:
    """Write recording lines (dicts) as JSON Lines; return how many."""
    n = 0
    with Path(path).open("wb") as f:
        for obj in lines:
            f.write(encode_json(obj) + b"\n")
            n += 1
    return n


def from_csv(path: str | Path, series_id: str, length: int, label_column: str | None = "label") -> Iterator[dict]:
    """Cut a CSV series (timestamp column first, then value columns, optional label) into window dicts.

    Timestamps are epoch milliseconds; the step is taken from the first two rows. A trailing part shorter
    than ``length`` is dropped.
    """
    path = Path(path)
    with _open(path) as raw:
        rows = list(csv.reader(line.decode("utf-8") for line in raw))
    if len(rows) < 2:
        raise DataError(f"{path}: needs a header and at least one row")
    header, body = rows[0], rows[1:]
    lab_idx = header.index(label_column) if label_column and label_column in header else None
    val_idx = [i for i in range(1, len(header)) if i != lab_idx]
    try:
        ts = np.array([int(float(r[0])) for r in body])
        vals = np.array([[float(r[i]) for i in val_idx] for r in body])
        labs = np.array([int(float(r[lab_idx])) for r in body]) if lab_idx is not None else None
    except (ValueError, IndexError) as err:
        raise DataError(f"{path}: not a numeric CSV series ({err})") from None
    step = int(ts[1] - ts[0]) if len(ts) > 1 else 1000
    for w in range(len(body) // length):
        sl = slice(w * length, (w + 1) * length)
        line = {
            "series_id": series_id,
            "window_id": f"{series_id}/{w}",
            "start": int(ts[sl][0]),
            "step_ms": step,
            "values": vals[sl].tolist() if len(val_idx) > 1 else vals[sl, 0].tolist(),
        }
        if labs is not None:
            line["labels"] = labs[sl].tolist()
        yield line
