"""Recordings: JSON Lines files of input windows (optionally with ``_ts``), read streaming or whole.

Whole reads (:func:`load`): every line must be a valid window of one shape, or the read fails naming the
line. Streaming reads (:func:`iter_lines`) yield every non-blank line as it is, leaving each line's
validation to the reader. :func:`replacing` writes a file whole or not at all.
"""

from __future__ import annotations

import contextlib
import csv
import os
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from detector.codec import Window, decode_json, encode_json
from detector.errors import DataError, WindowError
from detector.windows import WindowSet, from_windows


def _open(path: Path):
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a recording (.jsonl)") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def iter_lines(path: str | Path) -> Generator[tuple[int, bytes], None, None]:
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


def load(path: str | Path, shape: tuple[int, int] | None = None, need_labels: bool = False) -> WindowSet:
    """Read a whole recording; :class:`DataError` naming the file and line on the first bad window."""
    path = Path(path)
    windows: list[Window] = []
    numbers: list[int] = []
    for number, line in iter_lines(path):
        try:
            w = decode_json(line, shape)
        except WindowError as err:
            raise DataError(f"{path}:{number}: {err.reason}: {err.detail}") from None
        if shape is None:
            shape = w.values.shape
        windows.append(w)
        numbers.append(number)
    if not windows:
        raise DataError(f"{path}: holds no windows")
    unlabelled = sum(w.labels is None for w in windows)
    if need_labels and unlabelled:
        raise DataError(f"{path}: {unlabelled} windows carry no labels; this command needs labels")
    return from_windows(windows, path.name, numbers)


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
