"""The one serving loop: poll -> micro-batch -> decode -> score -> produce -> flush -> commit.

Written against the :class:`~detector.serve.messages.Source` and :class:`~detector.serve.messages.Sink`
protocols, so Kafka, the in-memory fakes and the tests all run this same code; only the stop condition
differs (a stop request, a message count, an idle timeout).

What a caller may rely on:

- At-least-once. What may be committed is decided by a :class:`~detector.serve.checkpointing.CommitTracker`
  alone: a batch's offsets only after every output and dead-letter record of that batch has been
  acknowledged by the sink, and, when partitions go (a rebalance, or the source's close after the loop
  ended by a stop or an exception), never past a message that was consumed and not delivered. A crash at
  any moment leaves every uncommitted message to be consumed again (with the same ``window_id``).
- A batch closes when it holds ``max_batch`` messages or its first message has waited ``max_wait_s``.
  It is decoded and scored by one model: :meth:`Runner.use_scorer` swaps the model between batches.
- Pipelined: a batch is decoded on the calling thread and scored on a scoring thread; while it is scored,
  the previous batch is delivered and committed, and the next one polled and decoded. At most two batches
  are under way (one scoring, one delivering), always finished in order, so commits stay in offset order.
  While a batch is scored the loop polls in steps of at most ``SCORING_POLL_S``, and delivers the batch as
  soon as it is scored: the overlap adds at most that to a window's latency.
- Read-ahead: a poll takes up to ``read_ahead`` batches' worth of messages (and none while the messages
  held hold ``max_held_bytes`` or more), so that the client's buffer is
  emptied and its next fetch goes out at once, to arrive while the runner scores (kafka-python sends a
  partition's next fetch only when nothing of it is buffered). The messages read ahead wait in the runner,
  in order, for the batches after the one in hand; everything consumed is scored unless its partition
  is revoked.
- Nothing one message holds can end the loop: a message that fails to decode in any way becomes a
  dead-letter record with its reason; a record the client cannot parse is skipped, counted and logged.
  Dead letters are logged at most once per reason every ``dead_letter_log_s`` (with a count of the rest).
- A record the broker refuses for good (too large, topic not authorised) does not hold up its partition:
  a dead letter's fallback (without its value) is sent instead; an output or alert record's input message
  goes to the DLQ with reason ``output_refused`` and the broker's error; should that be refused too, it is
  sent without its value, and failing that it is counted (``output_dropped``) and logged. While output is
  not acknowledged (a broker fault, retried), the health says so (not ready) and the observer hears how
  long delivery has been stalled, as it does the consumer lag.
- Rebalance: the unscored messages of revoked partitions are dropped, and nothing of theirs is produced
  after the revocation (the outputs of a batch being scored are dropped too). The runner hands the
  source, per revoked partition, the offset where its unfinished work starts: the source commits it
  (only a commit that failed can be pending, as a batch is committed once delivered) and, for a
  partition this member keeps, reads again from there; a new owner reads from that commit.
- Faults of the broker (poll, produce, commit) are retried with backoff and logged; they never end the loop.
- A bounded source (a file) ends the loop once it is exhausted and everything read is delivered.
- Output records: a window without a ``window_id`` gets :func:`~detector.codec.default_window_id` of its
  message. ``scored_at`` is the wall clock and ``latency_ms`` the time since the message's timestamp; with
  ``event_time`` (a replay of a file, which has no broker clock) ``scored_at`` is the input's own time
  instead (the message's timestamp, else the window's end, else its start, else 0) and ``latency_ms`` 0,
  so the same input gives byte-identical output on every run.
- Around the loop (each optional): ``health`` hears a beat on every iteration and retry, whether the broker
  is reachable, whether the group is joined and which model serves; ``reloads`` (a checkpoint watcher's
  ``take``) is asked for a new scorer between batches; ``alerts`` turns each batch's scored windows into
  alert transitions, produced to ``alert_topic`` with the batch and acknowledged before its commit. Every
  ``status_every_s`` the observer hears the consumer lag of each assigned partition.
- :meth:`Runner.request_stop` only sets a flag (safe in a signal handler): the batch in hand is finished,
  delivered and committed, then :meth:`Runner.run` returns. If its output cannot be delivered within
  ``stop_grace_s`` the runner returns without committing it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import structlog

from detector.alerting import AlertTracker
from detector.codec import Window, default_window_id, encode_json
from detector.errors import WindowError
from detector.model.context import History
from detector.retry import Backoff
from detector.scoring import Scorer, Scores
from detector.serve.checkpointing import CommitTracker
from detector.serve.decode import decode_message, series_id_hint
from detector.serve.dlq import DeadLetterLog, dead_letter
from detector.serve.health import Health
from detector.serve.messages import (
    CommitError,
    Failure,
    Message,
    OutRecord,
    Sink,
    Source,
    SourceError,
    TopicPartition,
    UnreadableRecord,
)
from detector.serve.observer import Counters, CountingObserver, Observer, safe
from detector.settings import BatchSettings, LimitSettings, Settings

JSON_HEADERS = (("content-type", b"application/json"),)


SCORING_POLL_S = 0.002  # poll timeout while a batch is being scored: its delivery waits at most this long


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


_BATCH, _LIMITS = BatchSettings(), LimitSettings()  # the settings' defaults, the only ones


@dataclass(frozen=True)
class RunnerConfig:
    """The loop's parameters; :meth:`from_settings` gives the daemon's."""

    output_topic: str
    dlq_topic: str
    max_batch: int = _BATCH.max_size  # messages per micro-batch
    max_wait_s: float = _BATCH.max_wait_ms / 1000  # how long the first message of a batch may wait for more
    max_message_bytes: int = _LIMITS.max_message_bytes  # larger values are dead letters (`oversize`)
    idle_poll_s: float = 0.25  # poll timeout while no batch is open: how soon a stop request is seen
    flush_timeout_s: float = 5.0  # one wait for acknowledgements before the wait is logged and retried
    backoff_s: tuple[float, float] = (0.25, 5.0)  # first and longest pause between retries of a broker fault
    stop_grace_s: float = 5.0  # after a stop request: how long undelivered output is retried
    alert_topic: str = ""  # alert transitions go here (with an AlertTracker); empty = none
    status_every_s: float = 1.0  # how often lag, broker reachability and an idle model swap are looked at
    read_ahead: int = 4  # a poll may take this many batches' worth of messages (see the module docstring)
    max_held_bytes: int = 64 * 1024 * 1024  # no poll while the messages read ahead hold this many bytes
    dead_letter_log_s: float = 10.0  # at most one "dead letter" log line per reason this often
    event_time: bool = False  # scored_at from the input's own time, latency 0 (see the module docstring)
    history_bytes: int = _LIMITS.history_mib << 20  # memory for per-series history (model.context.History)

    @classmethod
    def from_settings(cls, settings: Settings) -> RunnerConfig:
        """The loop as the settings ask: topics, batching, size limit."""
        return cls(
            output_topic=settings.kafka.output_topic,
            dlq_topic=settings.kafka.dlq_topic,
            max_batch=settings.batch.max_size,
            max_wait_s=settings.batch.max_wait_ms / 1000,
            max_message_bytes=settings.limits.max_message_bytes,
            alert_topic=settings.kafka.alert_topic,
            history_bytes=settings.limits.history_mib << 20,
        )


@dataclass
class _InFlight:
    """A batch handed to the scoring thread, waiting to be delivered and committed."""

    batch: list[Message]
    scorer: Scorer
    windows: list[Window]
    sources: list[Message]  # the message of each window
    dead: list[tuple[Message, OutRecord]]
    scoring: Future[tuple[Scores, float]] | None  # None when no message of the batch decoded
    started: float
    revoked: set[TopicPartition] = field(default_factory=set)  # outputs of these are dropped, not produced

    @property
    def scored(self) -> bool:
        return self.scoring is None or self.scoring.done()


def _timed_score(
    scorer: Scorer, values: np.ndarray, contexts: np.ndarray, pool: Executor | None, clock: Callable[[], float]
) -> tuple[Scores, float]:
    started = clock()
    return scorer.score(values, contexts, pool), clock() - started


class Runner:
    """Scores messages from ``source`` into ``sink`` with ``scorer``; see the module docstring."""

    def __init__(
        self,
        source: Source,
        sink: Sink,
        scorer: Scorer,
        config: RunnerConfig,
        *,
        observer: Observer | None = None,
        health: Health | None = None,
        reloads: Callable[[], Scorer | None] | None = None,
        alerts: AlertTracker | None = None,
        score_pool: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        now_ms: Callable[[], int] = wall_ms,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source = source
        self.sink = sink
        self.scorer = scorer
        self.config = config
        self._counting = CountingObserver()
        self.observer = safe(self._counting, *([observer] if observer is not None else []))
        self.clock = clock
        self.now_ms = now_ms
        self._sleep_fn = sleep
        self.health = health
        self.reloads = reloads
        self.alerts = alerts if config.alert_topic else None
        self.score_pool = score_pool  # CPU threads that score a batch's chunks side by side (Scorer.logits)
        self.history = History(config.history_bytes)  # each series' recent rows, fed in decode order
        self._seed_history(scorer)
        self._status_at = float("-inf")
        self._status_failed = False
        self.log = structlog.get_logger("detector.serve")
        self._batch: list[Message] = []
        self._batch_bytes = 0  # the bytes of the values in _batch
        self._in_flight: _InFlight | None = None
        self._abandoned = False  # a batch's output was given up on (stopping): nothing after it may be committed
        self._scoring: ThreadPoolExecutor | None = None
        self._opened_at = 0.0
        self._stop_at: float | None = None
        self._next_scorer: Scorer | None = None
        self._uncommitted: dict[TopicPartition, int] = {}  # delivered, not yet committed (a commit failed)
        self._offsets = CommitTracker()
        self._dead_letter_log = DeadLetterLog(config.dead_letter_log_s, clock)
        self._commit_retry_at = 0.0
        self._poll_backoff = Backoff(*config.backoff_s)
        self._commit_backoff = Backoff(*config.backoff_s)

    @property
    def counts(self) -> Counters:
        return self._counting.counts

    @property
    def series_held(self) -> int:
        """Series whose history is held now (safe to read from any thread)."""
        return len(self.history)

    @property
    def stopping(self) -> bool:
        return self._stop_at is not None

    def request_stop(self) -> None:
        """Finish the batch in hand and return from :meth:`run`. Only sets a flag: safe in a signal handler."""
        if self._stop_at is None:
            self._stop_at = self.clock()

    def use_scorer(self, scorer: Scorer) -> None:
        """Score with ``scorer`` from the next batch on (a batch is never scored by two models)."""
        self._next_scorer = scorer

    # -- the loop ---------------------------------------------------------------------------------------

    def run(self, *, max_messages: int | None = None, idle_timeout_s: float | None = None) -> Counters:
        """Serve until a stop request, ``max_messages`` consumed, ``idle_timeout_s`` without input, or the
        end of a bounded source; what was consumed is delivered before it returns (unless stopping with
        output that cannot be delivered)."""
        self._scoring = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detector-score")
        self._abandoned = False
        try:
            return self._run(max_messages, idle_timeout_s)
        finally:
            self._scoring.shutdown(wait=True)
            self._scoring = None

    def _run(self, max_messages: int | None, idle_timeout_s: float | None) -> Counters:
        cfg = self.config
        self._serving(self.scorer)
        self.source.start(self)
        consumed = 0
        idle_since = self.clock()
        while not self.stopping and (max_messages is None or consumed < max_messages):
            self._beat()
            if self.clock() >= self._status_at:
                self._status()
            if self._in_flight is not None and self._in_flight.scored:
                self._finish()  # deliver it before polling again (polls are short while a batch is scored)
            room = cfg.max_batch * max(1, cfg.read_ahead) - len(self._batch)
            if self._batch_bytes >= cfg.max_held_bytes:
                room = 0
            if max_messages is not None:
                room = min(room, max_messages - consumed)
            messages = self._poll(room) if room > 0 else []
            now = self.clock()
            if messages:
                if not self._batch:
                    self._opened_at = now
                self._batch.extend(messages)
                self._batch_bytes += sum(len(m.value) for m in messages if m.value is not None)
                self._offsets.consumed(messages)
                consumed += len(messages)
                idle_since = now
                self.observer.consumed(len(messages))
            full = (
                len(self._batch) >= cfg.max_batch
                or self._batch_bytes >= cfg.max_held_bytes
                or (max_messages is not None and consumed >= max_messages)
            )
            if self._batch and (full or now - self._opened_at >= cfg.max_wait_s):
                self._advance()
            elif self._in_flight is not None and self._in_flight.scored:
                self._finish()
            elif not self._batch and self._uncommitted and now >= self._commit_retry_at:
                self._commit({})
            if idle_timeout_s is not None and now - idle_since >= idle_timeout_s:
                break
            if not messages and self.source.exhausted():
                break
        # What is under way and what was read ahead is scored and delivered too, unless delivery fails.
        while self._batch and not self._abandoned:
            self._advance()
        self._finish()
        if self._uncommitted:
            self._commit({})
        return self.counts

    def _poll(self, room: int) -> list[Message]:
        if len(self._batch) >= self.config.max_batch:
            timeout = 0.0  # a batch is ready: only take what the client holds already
        elif self._batch:
            timeout = max(0.0, self._opened_at + self.config.max_wait_s - self.clock())
        else:
            timeout = self.config.idle_poll_s
        if self._in_flight is not None:
            timeout = min(timeout, SCORING_POLL_S)  # come back soon to deliver the batch being scored
        try:
            messages = self.source.poll(timeout, room)
        except UnreadableRecord as err:  # the source has moved past it: nothing to wait for
            self.observer.unreadable_record()
            self.log.error("record skipped: the client cannot parse it", topic=err.tp.topic,
                           partition=err.tp.partition, offset=err.offset, error=err.error[:300])  # fmt: skip
            return []
        except SourceError as err:
            if self.health is not None:
                self.health.set_broker(False, str(err))
            delay = self._poll_backoff.next()
            self.log.warning("poll failed; retrying", error=str(err), retry_in_s=delay)
            self._sleep(delay)
            return []
        if self._poll_backoff.failures:
            self.log.info("polling again", after_failures=self._poll_backoff.failures)
            self._poll_backoff.reset()
        return messages

    def _advance(self) -> None:
        """Close the batch in hand (the first ``max_batch`` messages held): decode it and hand it to the
        scoring thread, then finish the batch before it (which was scored meanwhile)."""
        size = self.config.max_batch
        batch, self._batch = self._batch[:size], self._batch[size:]
        self._batch_bytes -= sum(len(m.value) for m in batch if m.value is not None)
        self._swap_if_due()
        job = self._start(batch, self.scorer)
        self._finish()
        self._in_flight = job

    def _finish(self) -> None:
        """Deliver the batch under way, then commit it: the only commit path. When stopping with its output
        unacknowledged nothing is committed, for it or after it (the batch will be consumed again)."""
        job, self._in_flight = self._in_flight, None
        if job is None or self._abandoned:  # after an abandoned batch, later ones are not delivered either
            return
        records = self._records(job)
        if not self._deliver(records):
            self._abandoned = True
            return
        delivered = [m for m in job.batch if m.tp not in job.revoked] if job.revoked else job.batch
        self._commit(self._offsets.delivered(delivered))
        self.observer.batch_done(len(job.batch), self.clock() - job.started)

    # -- decode and score -------------------------------------------------------------------------------

    def _start(self, batch: list[Message], scorer: Scorer) -> _InFlight:
        """Decode ``batch`` (bad messages become dead letters) and submit its windows for scoring."""
        cfg = self.config
        started = self.clock()
        windows: list[Window] = []
        sources: list[Message] = []
        dead: list[tuple[Message, OutRecord]] = []
        for message in batch:
            try:
                window = decode_message(message, scorer.shape, cfg.max_message_bytes)
            except WindowError as err:
                dead.append((message, dead_letter(message, err, cfg.dlq_topic)))
                self.observer.dead_letter(err.reason)
                hint = series_id_hint(message, cfg.max_message_bytes)
                self._dead_letter_log.log(message, err, series_id=hint)
                continue
            windows.append(window)
            sources.append(message)
        scoring = None
        if windows:
            assert self._scoring is not None, "batches are scored inside run()"
            values = np.stack([w.values for w in windows])
            # Each window's context comes from its series' rows before it, in decode order: the same for
            # every path and every batching of one stream.
            contexts = np.stack([self.history.observe(w.series_id, w.values, w.start, w.step_ms) for w in windows])
            scoring = self._scoring.submit(_timed_score, scorer, values, contexts, self.score_pool, self.clock)
        return _InFlight(batch, scorer, windows, sources, dead, scoring, started)

    def _records(self, job: _InFlight) -> list[OutRecord]:
        """The batch's output, alert and dead-letter records, less those of partitions revoked meanwhile."""
        cfg = self.config
        dead = [record for message, record in job.dead if message.tp not in job.revoked]
        if job.scoring is None:
            return dead
        scores, seconds = job.scoring.result()
        scorer, windows, sources = job.scorer, job.windows, job.sources
        if job.revoked:
            keep = np.array([m.tp not in job.revoked for m in sources])
            windows = [w for w, k in zip(windows, keep, strict=True) if k]
            sources = [m for m, k in zip(sources, keep, strict=True) if k]
            scores = _subset(scores, keep)
            if not windows:
                return dead
        pairs = list(zip(windows, sources, strict=True))
        if cfg.event_time:
            clocks = [m.timestamp if m.timestamp >= 0 else (w.end or 0) for w, m in pairs]
            latency = [0.0] * len(pairs)
        else:
            now = self.now_ms()
            clocks = [now] * len(pairs)
            latency = [float(now - m.timestamp) if m.timestamp >= 0 else 0.0 for m in sources]
        ids: list[str | int] = [
            w.window_id if w.window_id is not None else default_window_id(m.topic, m.partition, m.offset)
            for w, m in pairs
        ]
        outputs = scorer.records(windows, scores, ids, clocks, latency)
        flagged = int(scores.flag.sum())
        self.observer.scored(len(windows), flagged, seconds, latency)
        self.log.debug("batch scored", windows=len(windows), flagged=flagged, dead_letters=len(dead))
        produced = [
            OutRecord(cfg.output_topic, record["series_id"].encode(), encode_json(record), JSON_HEADERS, source=m)
            for record, m in zip(outputs, sources, strict=True)
        ]
        if self.alerts is not None:
            produced.extend(self._alert_records(outputs, sources))
        return produced + dead

    def _alert_records(self, outputs: list[dict], sources: list[Message]) -> list[OutRecord]:
        transitions = self.alerts.observe(outputs) if self.alerts is not None else []
        if not transitions:
            return []
        source_of = {(r["series_id"], r["window_id"]): m for r, m in zip(outputs, sources, strict=True)}
        raised = sum(1 for t in transitions if t["state"] == "raised")
        self.observer.alert_transitions(raised, len(transitions) - raised)
        for t in transitions:
            self.log.info(f"alert {t['state']}", series_id=t["series_id"], window_id=t["window_id"],
                          probability=round(t["probability"], 4), since=t["since"])  # fmt: skip
        topic = self.config.alert_topic
        records = []
        for t in transitions:
            source = source_of.get((t["series_id"], t["window_id"]))
            records.append(OutRecord(topic, t["series_id"].encode(), encode_json(t), JSON_HEADERS, source=source))
        return records

    # -- around the batches: model swaps, health, lag ----------------------------------------------------

    def _swap_if_due(self) -> None:
        """Between batches: take the scorer waiting to be swapped in (from use_scorer or the watcher)."""
        if self._next_scorer is None and self.reloads is not None:
            self._next_scorer = self.reloads()
        if self._next_scorer is not None:
            previous, self.scorer, self._next_scorer = self.scorer, self._next_scorer, None
            if self.scorer.version != previous.version:
                self.log.info("serving a new model", model_version=self.scorer.version, previous=previous.version)
                self._seed_history(self.scorer)
            self._serving(self.scorer)

    def _seed_history(self, scorer: Scorer) -> None:
        """Series the model's training recording holds, and that are not held yet, start from the history
        it left (see detector.model.context)."""
        state = scorer.checkpoint.history
        if state is not None and state.n_features == scorer.shape[1]:
            self.history.seed(state)

    def _serving(self, scorer: Scorer) -> None:
        self.observer.model_loaded(scorer.version)
        if self.health is not None:
            self.health.set_model(scorer.version)

    def _beat(self) -> None:
        if self.health is not None:
            self.health.beat()

    def _status(self) -> None:
        """Every ``status_every_s``: lag per partition, broker reachability, a model swap while idle."""
        self._status_at = self.clock() + self.config.status_every_s
        self._dead_letter_log.tick()
        self._report_source()
        if not self._batch:
            self._swap_if_due()

    def _report_source(self) -> None:
        """Lag per partition and broker reachability, as far as the client knows (cheap and local)."""
        try:
            lags, problem = self.source.lag(), self.source.problem()
        except Exception as err:  # a client's internals changed under us: report, never stop serving
            if not self._status_failed:
                self._status_failed = True
                self.log.error("cannot read lag and broker status from the client", error=repr(err))
        else:
            self.observer.set_consumer_lag(lags)
            if self.health is not None:
                self.health.set_broker(problem is None, problem or "")

    # -- deliver and commit -----------------------------------------------------------------------------

    def _deliver(self, records: list[OutRecord]) -> bool:
        """Send and wait until the sink acknowledges every record (or what replaces a record refused for
        good); False only when giving up on stop. While it waits, the health and the observer hear of it."""
        for record in records:
            self.sink.send(record)
        backoff = Backoff(*self.config.backoff_s)
        stalled_since: float | None = None
        while True:
            result = self.sink.flush(self.config.flush_timeout_s)
            if result.complete:
                if stalled_since is not None:
                    self.log.info("output delivered", after_retries=backoff.failures)
                    self._stalled(None)
                return True
            stalled_since = self.clock() if stalled_since is None else stalled_since
            self.observer.delivery_retry(result.unfinished, len(result.failures))
            waiting = [f for f in result.failures if not f.permanent]
            for failure in result.failures:
                if failure.permanent:
                    self._replace_refused(failure)
                else:
                    self.sink.send(failure.record)
            if result.unfinished == 0 and not waiting:
                continue  # only replacements in flight: flush them at once
            delay = backoff.next()
            errors = sorted({f.error for f in waiting})[:3]
            self.log.warning(
                "output not acknowledged yet; retrying",
                unfinished=result.unfinished,
                failed=len(waiting),
                errors=errors,
                retry_in_s=delay,
            )
            self._stalled(stalled_since, errors)
            if self._stop_at is not None and self.clock() - self._stop_at > self.config.stop_grace_s:
                self.log.error("stopping with output unacknowledged: its input is not committed and will be read again")
                self._stalled(None)
                return False
            self._sleep(delay, wake_on_stop=self._stop_at is None)

    def _replace_refused(self, failure: Failure) -> None:
        """Send what replaces a record the broker refused for good: its fallback, else its input message as
        an ``output_refused`` dead letter; with neither, it is counted and logged as dropped."""
        record = failure.record
        replacement = record.fallback
        if replacement is None and record.source is not None:
            error = WindowError("output_refused", f"{record.topic}: {failure.error}")
            replacement = dead_letter(record.source, error, self.config.dlq_topic)
            self.observer.dead_letter(error.reason)
            self._dead_letter_log.log(record.source, error)
        if replacement is None:
            self.observer.output_dropped(1)
            self.log.error("record refused for good and dropped", topic=record.topic, error=failure.error[:300],
                           key=(record.key or b"")[:80].decode("utf-8", errors="replace"))  # fmt: skip
            return
        self.log.warning("record refused for good; sending what replaces it", topic=record.topic,
                         replacement_topic=replacement.topic, error=failure.error[:300])  # fmt: skip
        self.sink.send(replacement)

    def _stalled(self, since: float | None, errors: list[str] | None = None) -> None:
        """Report a delivery stall that began at ``since`` (None: delivery is flowing again)."""
        seconds = 0.0 if since is None else self.clock() - since
        self.observer.delivery_stalled(seconds)
        if since is not None:
            self._report_source()  # the lag still moves while the loop waits here
        if self.health is not None:
            reason = f"output not acknowledged for {seconds:.0f} s ({'; '.join(errors or []) or 'no answer'})"
            self.health.set_delivery(since is None, "" if since is None else reason)

    def _commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit ``offsets`` together with any earlier commit that failed; failures are kept for a retry."""
        for tp, offset in offsets.items():
            self._uncommitted[tp] = max(self._uncommitted.get(tp, 0), offset)
        if not self._uncommitted:
            return
        try:
            self.source.commit(dict(self._uncommitted))
            self._offsets.committed(self._uncommitted)
        except CommitError as err:
            if not err.retriable:
                self.log.warning("commit refused: the group has rebalanced", error=str(err))
                self._uncommitted.clear()
                return
            delay = self._commit_backoff.next()
            self._commit_retry_at = self.clock() + delay
            self.log.warning("commit failed; retrying", error=str(err), retry_in_s=delay)
            return
        self._commit_backoff.reset()
        self.observer.committed(dict(self._uncommitted))
        self._uncommitted.clear()

    # -- rebalance (called by the source from inside poll) ----------------------------------------------

    def on_revoked(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """Drop the undelivered messages of these partitions; where each one's unfinished work starts (the
        offset to commit before they go: everything before it is delivered)."""
        revoked = set(partitions)
        resume = self._offsets.resume(revoked)
        self._forget(revoked, "partitions revoked")
        return resume

    def on_lost(self, partitions: Collection[TopicPartition]) -> None:
        self._forget(set(partitions), "partitions lost")
        if self.health is not None:
            self.health.set_group(False, "partitions lost (the member was evicted); rejoining")

    def _forget(self, partitions: set[TopicPartition], event: str) -> None:
        """Drop the unscored messages and pending commits of partitions that are no longer ours."""
        for tp in partitions:
            self._uncommitted.pop(tp, None)
        self._offsets.forget(partitions)
        keep = [m for m in self._batch if m.tp not in partitions]
        dropped = len(self._batch) - len(keep)
        self._batch = keep
        self._batch_bytes = sum(len(m.value) for m in keep if m.value is not None)
        if self._in_flight is not None:
            fresh = partitions - self._in_flight.revoked
            dropped += sum(1 for m in self._in_flight.batch if m.tp in fresh)
            self._in_flight.revoked |= partitions
        if dropped:
            self.observer.dropped_on_revoke(dropped)
        if partitions:
            self.log.info(event, partitions=_names(partitions), dropped_unscored=dropped)

    def on_assigned(self, partitions: Collection[TopicPartition]) -> None:
        self.log.info("partitions assigned", partitions=_names(partitions))
        if self.health is not None:
            self.health.set_group(True)  # joined, even with no partitions to read

    def _sleep(self, seconds: float, wake_on_stop: bool = True) -> None:
        """Sleep, waking early for a stop request (when ``wake_on_stop``)."""
        end = self.clock() + seconds
        while not (wake_on_stop and self.stopping) and (left := end - self.clock()) > 0:
            self._beat()  # waiting out a broker fault is still progress: a restart would not help
            self._sleep_fn(min(left, 0.1))


def _subset(scores: Scores, keep: np.ndarray) -> Scores:
    """The scores of the windows where ``keep`` is True."""
    changes = {f: getattr(scores, f)[keep] for f in Scores.__dataclass_fields__ if getattr(scores, f) is not None}
    return dataclasses.replace(scores, **changes)


def _names(partitions: Collection[TopicPartition]) -> list[str]:
    return [f"{tp.topic}/{tp.partition}" for tp in sorted(partitions)]
