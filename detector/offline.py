"""``replay --offline``: score a recording file into a JSONL file, streaming, with the serving Scorer.

Memory stays flat whatever the file size: lines are read, decoded and scored a batch at a time. The output
is deterministic (byte-identical across runs): ``scored_at`` is the line's ``_ts`` when it has one, else the
window's end (or start), else 0, and ``latency_ms`` is 0, because an offline run has no broker clock.
Lines that are not valid windows are not scored and not lost: they go to a dead-letter JSONL file with
their line number, reason code and detail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.codec import Window, encode_json, parse_json, window_from_obj
from detector.errors import DataError, WindowError
from detector.recordings import iter_lines
from detector.scoring import Scorer


@dataclass
class OfflineResult:
    scored: int = 0
    flagged: int = 0
    dead_letters: int = 0
    seconds: float = 0.0


def _decode(line: bytes, shape: tuple[int, int]) -> tuple[Window, int | None]:
    obj = parse_json(line)
    window = window_from_obj(obj, shape)
    ts = obj.get("_ts")
    return window, ts if isinstance(ts, int) and not isinstance(ts, bool) else None


def score_file(
    scorer: Scorer,
    src: Path,
    out: Path,
    dlq: Path,
    batch_size: int = 1024,
    on_progress: Callable[[int], None] = lambda _: None,
) -> OfflineResult:
    """Score every window of ``src`` into ``out`` (one record per window, input order)."""
    import time

    started = time.monotonic()
    result = OfflineResult()
    t = scorer.shape[0]
    stem = src.name
    dlq_file = None
    try:
        with out.open("wb") as sink:
            windows: list[Window] = []
            ids: list[str | int] = []
            clocks: list[int] = []

            def flush() -> None:
                values = np.stack([w.values for w in windows])
                scores = scorer.score(values)
                records = scorer.records(windows, scores, ids, clocks, [0.0] * len(windows))
                sink.write(b"".join(encode_json(r) + b"\n" for r in records))
                result.scored += len(records)
                result.flagged += int(scores.flag.sum())
                on_progress(len(records))
                windows.clear()
                ids.clear()
                clocks.clear()

            for number, line in iter_lines(src):
                try:
                    window, ts = _decode(line, scorer.shape)
                except WindowError as err:
                    if dlq_file is None:
                        dlq_file = dlq.open("wb")
                    raw = line.decode("utf-8", errors="replace")
                    dead = {"line": number, "reason": err.reason, "detail": err.detail, "raw": raw}
                    dlq_file.write(encode_json(dead) + b"\n")
                    result.dead_letters += 1
                    continue
                windows.append(window)
                ids.append(window.window_id if window.window_id is not None else f"{stem}/{number}")
                end = None
                if window.start is not None:
                    end = window.start + t * window.step_ms if window.step_ms else window.start
                clocks.append(ts if ts is not None else (end or 0))
                if len(windows) >= batch_size:
                    flush()
            if windows:
                flush()
    except OSError as err:
        raise DataError(f"{out}: cannot write ({err.strerror})") from None
    finally:
        if dlq_file is not None:
            dlq_file.close()
    result.seconds = time.monotonic() - started
    return result
