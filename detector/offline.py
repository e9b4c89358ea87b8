"""``replay --offline``: score a recording file into a JSONL file, streaming, with the serving Scorer.

Memory stays flat whatever the file size: lines are read, decoded and scored a batch at a time, with at
most ``PIPELINE_DEPTH`` batches in flight. The output is deterministic (byte-identical across runs, whatever
the number of threads): ``scored_at`` is the line's ``_ts`` when it has one, else the window's end (or
start), else 0, and ``latency_ms`` is 0, because an offline run has no broker clock. Lines that are not
valid windows are not scored and not lost: they go to a dead-letter JSONL file with their line number,
reason code and detail.

Speed: decoding (this thread) overlaps scoring and encoding (a pipeline thread); on the CPU the chunks of a
batch are scored side by side on ``threads`` threads, each running torch single-threaded (see
:meth:`detector.scoring.Scorer.logits`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from detector.codec import Window, decode_recording_line, encode_json
from detector.errors import DataError, WindowError
from detector.recordings import iter_lines
from detector.scoring import Scorer

PIPELINE_DEPTH = 3  # batches decoded ahead of the one being scored and written


@dataclass
class OfflineResult:
    scored: int = 0
    flagged: int = 0
    dead_letters: int = 0
    seconds: float = 0.0


@dataclass
class _Batch:
    windows: list[Window]
    ids: list[str | int]
    clocks: list[int]


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block, then put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def score_file(
    scorer: Scorer,
    src: Path,
    out: Path,
    dlq: Path,
    batch_size: int = 1024,
    on_progress: Callable[[int], None] = lambda _: None,
    threads: int | None = None,
) -> OfflineResult:
    """Score every window of ``src`` into ``out`` (one record per window, input order).

    ``threads``: CPU threads that score side by side (default: one per core); torch runs single-threaded
    in each for the duration of the call. Ignored on a GPU.
    """
    started = time.monotonic()
    result = OfflineResult()
    cpu = scorer.device.type == "cpu"
    workers = max(1, threads or os.cpu_count() or 1) if cpu else 1
    dlq_file: IO[bytes] | None = None

    def process(batch: _Batch) -> bytes:  # runs on the pipeline thread
        scores = scorer.score(np.stack([w.values for w in batch.windows]), pool)
        records = scorer.records(batch.windows, scores, batch.ids, batch.clocks, [0.0] * len(batch.windows))
        result.flagged += int(scores.flag.sum())
        return b"\n".join([encode_json(r) for r in records]) + b"\n"

    def dead_letter(number: int, line: bytes, err: WindowError) -> None:
        nonlocal dlq_file
        if dlq_file is None:
            dlq_file = dlq.open("wb")
        raw = line.decode("utf-8", errors="replace")
        dlq_file.write(encode_json({"line": number, "reason": err.reason, "detail": err.detail, "raw": raw}) + b"\n")
        result.dead_letters += 1

    threads_cm = _torch_threads(1) if cpu and workers > 1 else contextlib.nullcontext()
    try:
        with (
            threads_cm,
            ThreadPoolExecutor(workers, thread_name_prefix="score-chunk") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="score-batch") as pipeline,
            out.open("wb") as sink,
        ):
            in_flight: deque[tuple[Future[bytes], int]] = deque()

            def write_oldest() -> None:
                future, n = in_flight.popleft()
                sink.write(future.result())
                result.scored += n
                on_progress(n)

            for batch in _batches(src, scorer, batch_size, dead_letter):
                in_flight.append((pipeline.submit(process, batch), len(batch.windows)))
                if len(in_flight) >= PIPELINE_DEPTH:
                    write_oldest()
            while in_flight:
                write_oldest()
    except OSError as err:
        raise DataError(f"{out}: cannot write ({err.strerror})") from None
    finally:
        if dlq_file is not None:
            dlq_file.close()
    result.seconds = time.monotonic() - started
    return result


def _batches(
    src: Path, scorer: Scorer, batch_size: int, dead_letter: Callable[[int, bytes, WindowError], None]
) -> Iterator[_Batch]:
    """Valid windows of ``src`` in batches of ``batch_size`` (the last one shorter); bad lines to ``dead_letter``."""
    t = scorer.shape[0]
    stem = src.name
    batch = _Batch([], [], [])
    for number, line in iter_lines(src):
        try:
            window, ts = decode_recording_line(line, scorer.shape)
        except WindowError as err:
            dead_letter(number, line, err)
            continue
        batch.windows.append(window)
        batch.ids.append(window.window_id if window.window_id is not None else f"{stem}/{number}")
        if ts is None:
            end = None
            if window.start is not None:
                end = window.start + t * window.step_ms if window.step_ms else window.start
            ts = end or 0
        batch.clocks.append(ts)
        if len(batch.windows) >= batch_size:
            yield batch
            batch = _Batch([], [], [])
    if batch.windows:
        yield batch
