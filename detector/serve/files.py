"""A recording file as a :class:`~detector.serve.messages.Source`, and JSON Lines files as a
:class:`~detector.serve.messages.Sink`: the serving loop run over files, without Kafka (``replay --offline``).

What a caller may rely on:

- :class:`FileSource` reads a recording as a topic of one partition named after the file: one message per
  non-blank line, in file order; its offset is the line number (1-based), its value the line's bytes (a
  ``_ts`` member included: the window decoder ignores it), its timestamp the line's ``_ts`` when that is an
  integer (epoch ms), else -1. It has no broker: commits are kept in memory (:attr:`FileSource.committed`),
  there is no lag and no problem to report, and :meth:`FileSource.exhausted` is true once the last line
  has been handed out. The file is read streaming: memory does not grow with its size.
- :class:`FileSink` writes the value of each record for ``output_topic`` as one line of ``out``, in the
  order sent, and each dead letter for ``dlq_topic`` as one JSON line of ``dlq`` (created at the first
  one): ``{"line": N, "reason": code, "detail": text, "raw": the line}``. Every record is acknowledged at
  once; a write that fails raises :class:`~detector.errors.DataError` naming the file.
- :func:`score_file` is ``replay --offline``: the :class:`~detector.serve.runner.Runner` over these two,
  in event time, so the output is byte-identical on every run and for any batch size or thread count
  (scores do not depend on the batch: :mod:`detector.scoring`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import msgspec

from detector.codec import encode_json, header
from detector.errors import DataError
from detector.recordings import iter_lines
from detector.scoring import Scorer, chunk_pool
from detector.serve.messages import FlushResult, Message, OutRecord, PartitionListener, TopicPartition
from detector.serve.observer import Counters, CountingObserver
from detector.serve.runner import Runner, RunnerConfig

OUTPUT_TOPIC = "scores"
DLQ_TOPIC = "dead-letters"


class _Ts(msgspec.Struct):
    ts: object = msgspec.field(default=None, name="_ts")


_ts_decoder = msgspec.json.Decoder(_Ts)


def line_timestamp(line: bytes) -> int:
    """The line's ``_ts`` (epoch ms) when it is an integer, else -1. Never raises."""
    if b'"_ts"' not in line:
        return -1
    try:
        ts = _ts_decoder.decode(line).ts
    except (msgspec.DecodeError, RecursionError):
        return -1
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else -1


class FileSource:
    """The lines of one recording as messages of one partition; see the module docstring."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        self.tp = TopicPartition(self.path.name, 0)
        self.committed: dict[TopicPartition, int] = {}
        self._lines = iter_lines(self.path)
        self._done = False

    def start(self, listener: PartitionListener) -> None:
        listener.on_assigned([self.tp])

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        """The next ``max_records`` lines at most, without waiting: a file has them or is at its end."""
        topic, partition = self.tp
        out = [
            Message(topic, partition, number, None, line, (), line_timestamp(line))
            for number, line in itertools.islice(self._lines, max_records)
        ]
        if len(out) < max_records:
            self._done = True
        return out

    def exhausted(self) -> bool:
        return self._done

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.committed.update(offsets)

    def close(self) -> None:
        self._lines.close()
        self._done = True

    def lag(self) -> Mapping[TopicPartition, int]:
        return {}

    def problem(self) -> str | None:
        return None


class FileSink:
    """Output records to ``out`` and dead letters to ``dlq``, as JSON lines; see the module docstring."""

    def __init__(self, out: str | Path, dlq: str | Path, *, output_topic: str, dlq_topic: str) -> None:
        self.out_path, self.dlq_path = Path(out), Path(dlq)
        self.output_topic, self.dlq_topic = output_topic, dlq_topic
        self._out = self._open(self.out_path)
        self._dlq: IO[bytes] | None = None

    @staticmethod
    def _open(path: Path) -> IO[bytes]:
        try:
            return path.open("wb")
        except OSError as err:
            raise DataError(f"{path}: cannot write ({err.strerror})") from None

    def send(self, record: OutRecord) -> None:
        if record.topic == self.output_topic:
            self._write(self._out, self.out_path, (record.value or b"") + b"\n")
        elif record.topic == self.dlq_topic:
            if self._dlq is None:
                self._dlq = self._open(self.dlq_path)
            self._write(self._dlq, self.dlq_path, _dead_letter_line(record))
        else:
            raise ValueError(f"no file for records of topic {record.topic!r}")

    @staticmethod
    def _write(file: IO[bytes], path: Path, data: bytes) -> None:
        try:
            file.write(data)
        except OSError as err:
            raise DataError(f"{path}: cannot write ({err.strerror})") from None

    def flush(self, timeout_s: float) -> FlushResult:
        return FlushResult()

    def close(self) -> None:
        for file, path in ((self._out, self.out_path), (self._dlq, self.dlq_path)):
            if file is not None and not file.closed:
                try:
                    file.close()
                except OSError as err:
                    raise DataError(f"{path}: cannot write ({err.strerror})") from None


def _dead_letter_line(record: OutRecord) -> bytes:
    def text(name: str) -> str:
        return (header(record.headers, name) or b"").decode("utf-8", errors="replace")

    offset = text("source.offset")
    line = {
        "line": int(offset) if offset.isdigit() else None,
        "reason": text("error.reason"),
        "detail": text("error.detail"),
        "raw": (record.value or b"").decode("utf-8", errors="replace"),
    }
    return encode_json(line) + b"\n"


class _Progress(CountingObserver):
    def __init__(self, on_scored: Callable[[int], None]) -> None:
        super().__init__()
        self.on_scored = on_scored

    def scored(self, windows: int, flagged: int, seconds: float, latencies_ms: Sequence[float]) -> None:
        self.on_scored(windows)


def score_file(
    scorer: Scorer,
    src: str | Path,
    out: str | Path,
    dlq: str | Path,
    *,
    threads: int = 1,
    batch_size: int = 1024,
    max_message_bytes: int = RunnerConfig.max_message_bytes,
    on_scored: Callable[[int], None] = lambda _: None,
) -> Counters:
    """Score every line of the recording ``src`` into ``out`` (one output record per valid window, in file
    order), lines that are not valid windows into ``dlq`` (created only for the first one); the counts.

    ``threads``: CPU threads that score a batch's chunks side by side (:func:`detector.scoring.chunk_pool`).
    ``on_scored`` hears how many windows each batch scored, as it goes."""
    source = FileSource(src)
    sink = FileSink(out, dlq, output_topic=OUTPUT_TOPIC, dlq_topic=DLQ_TOPIC)
    config = RunnerConfig(
        OUTPUT_TOPIC, DLQ_TOPIC, max_batch=batch_size, max_message_bytes=max_message_bytes, event_time=True
    )
    try:
        with chunk_pool(scorer, threads) as pool:
            runner = Runner(source, sink, scorer, config, observer=_Progress(on_scored), score_pool=pool)
            return runner.run()
    finally:
        source.close()
        sink.close()
