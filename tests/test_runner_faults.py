"""The runner under faults that must not lose, wedge or stop it: an exception or an undeliverable stop
followed by the source's close, records the broker refuses for good, records the client cannot parse,
delivery stalls, hostile input of any shape, and memory held by read-ahead."""

from __future__ import annotations

import threading
from typing import Any

import msgspec
import numpy as np
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.errors import WindowError
from detector.model import checkpoint
from detector.model.train import train
from detector.scoring import Scorer
from detector.serve.decode import decode_message
from detector.serve.dlq import DeadLetterLog, dead_letter
from detector.serve.fakes import MemorySink, MemorySource, headers_dict
from detector.serve.health import Health
from detector.serve.messages import Message, TopicPartition
from detector.serve.runner import Runner, RunnerConfig
from tests.conftest import tiny_config
from tests.test_serve_runner import config as runner_config
from tests.test_serve_runner import window

OUT, DLQ, ALERTS, TOPIC = "scores", "windows.dlq", "alerts", "windows"
TP0 = TopicPartition(TOPIC, 0)


@pytest.fixture(scope="module")
def scorer(small_data, tmp_path_factory) -> Scorer:
    path = tmp_path_factory.mktemp("models") / "faults.ckpt"
    checkpoint.save(train(small_data, tiny_config(seed=0)).checkpoint, path)
    return Scorer(checkpoint.load(path), "cpu")


def config(**changes: Any) -> RunnerConfig:
    """The runner tests' config, with batches of 4 unless a test says otherwise."""
    return runner_config(**{"max_batch": 4, **changes})


def fill(source: MemorySource, scorer: Scorer, n: int, partition: int = 0) -> list[str]:
    ids = []
    for i in range(n):
        w = window(scorer, i)
        source.append_json(w, partition=partition, key=w["series_id"].encode())
        ids.append(w["window_id"])
    return ids


def output_ids(sink: MemorySink) -> list[str]:
    return [r["window_id"] for r in sink.values(OUT)]


def acknowledged_offsets(sink: MemorySink) -> set[int]:
    """Input offsets (partition 0) whose window is in the output or whose message is in the DLQ."""
    done = {int(r["window_id"].rsplit("/", 1)[1]) for r in sink.values(OUT)}
    done |= {int(headers_dict(r)["source.offset"]) for r in sink.topic(DLQ)}
    return done


class FailingSink(MemorySink):
    """Raises out of the ``n``-th flush, as a bug in a client would."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def flush(self, timeout_s: float):  # type: ignore[no-untyped-def]
        if self.flushes + 1 == self.n:
            self.flushes += 1
            raise RuntimeError("client bug")
        return super().flush(timeout_s)


# -- commits never pass undelivered work ----------------------------------------------------------------


def test_after_an_exception_in_the_loop_close_commits_nothing_past_undelivered_work(scorer):
    """An exception while a batch is delivered, then the source's close (which revokes, as Kafka's does):
    the offset committed is where the undelivered batch starts, not past the batches read ahead."""
    source, sink = MemorySource(TOPIC, partitions=1), FailingSink(n=2)
    fill(source, scorer, 40)
    runner = Runner(source, sink, scorer, config())
    with pytest.raises(RuntimeError, match="client bug"):
        runner.run(idle_timeout_s=0.5)
    source.close()
    assert source.committed[TP0] == 4
    assert acknowledged_offsets(sink) == set(range(4))


def test_after_a_stop_with_undeliverable_output_close_commits_nothing_past_it(scorer):
    """A stop whose output cannot be delivered in stop_grace_s, then close: nothing unacknowledged is
    committed, neither by the runner nor by the revocation on close."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    fill(source, scorer, 12)
    sink.unreachable_flushes = 10**9
    runner = Runner(source, sink, scorer, config(stop_grace_s=0.05))
    threading.Timer(0.1, runner.request_stop).start()
    runner.run()
    source.close()
    assert sink.acked == []
    assert source.committed.get(TP0, 0) == 0


def test_close_commits_what_was_delivered_and_not_yet_committed(scorer):
    """A commit that failed is made on close by the revocation, at the end of what was delivered."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    fill(source, scorer, 8)
    source.fail_commits(10**9)
    Runner(source, sink, scorer, config()).run(idle_timeout_s=0.2)
    assert source.committed == {}
    source.fail_commits(0)
    source.close()
    assert source.committed[TP0] == 8


def test_a_restart_after_close_reads_every_undelivered_window_again(scorer):
    """After an exception and a close, a new runner delivers every window: nothing is skipped."""
    source = MemorySource(TOPIC, partitions=1)
    ids = fill(source, scorer, 30)
    first = FailingSink(n=3)
    with pytest.raises(RuntimeError):
        Runner(source, first, scorer, config()).run(idle_timeout_s=0.5)
    source.close()
    source.restart()
    second = MemorySink()
    Runner(source, second, scorer, config()).run(idle_timeout_s=0.2)
    assert set(output_ids(first)) | set(output_ids(second)) == set(ids)
    assert source.committed[TP0] == 30


# -- records refused for good ----------------------------------------------------------------------------


def test_an_output_refused_for_good_sends_its_input_to_the_dlq_and_the_partition_moves_on(scorer):
    """An output record the broker refuses for good (too large) puts its input message in the DLQ as
    output_refused with the broker's error; later windows of the partition are scored and committed."""
    source = MemorySource(TOPIC, partitions=1)
    source.append_json(window(scorer, 0), key=b"a")
    source.append_json(window(scorer, 1, series="s" * 200), key=b"b")
    for i in range(2, 6):
        source.append_json(window(scorer, i), key=b"a")
    sizes = MemorySink()
    Runner(_copy(source), sizes, scorer, config()).run(idle_timeout_s=0.1)
    size = {r.key: len(r.value or b"") for r in sizes.topic(OUT)}
    sink = _SizeByTopic({OUT: (size[b"s-1"] + size[b"s" * 200]) // 2})  # the long series' output is too large
    counts = Runner(source, sink, scorer, config()).run(idle_timeout_s=0.1)
    assert output_ids(sink) == ["s-1/0", "s-1/2", "s-1/3", "s-1/4", "s-1/5"]
    (dead,) = sink.topic(DLQ)
    h = headers_dict(dead)
    assert h["error.reason"] == b"output_refused"
    assert b"MessageSizeTooLarge" in h["error.detail"]
    assert (dead.key, h["source.offset"]) == (b"b", b"1")
    assert counts.dead_letters["output_refused"] == 1
    assert source.committed[TP0] == 6


class _SizeByTopic(MemorySink):
    """Refuses for good a record over its topic's size limit (the DLQ topic takes any size)."""

    def __init__(self, limits: dict[str, int]) -> None:
        super().__init__()
        self.limits = limits

    def _too_large(self, record):  # type: ignore[no-untyped-def]
        limit = self.limits.get(record.topic)
        return limit is not None and record.value is not None and len(record.value) > limit


def _copy(source: MemorySource) -> MemorySource:
    copy = MemorySource(source.topic, partitions=len(source.logs))
    for tp, log in source.logs.items():
        copy.logs[tp] = list(log)
    return copy


def test_a_topic_refused_for_good_does_not_wedge_the_partition(scorer):
    """Every output refused (topic not authorised): the windows go to the DLQ as output_refused, each once,
    and every offset is committed."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink(refused_topics={OUT})
    fill(source, scorer, 10)
    counts = Runner(source, sink, scorer, config()).run(idle_timeout_s=0.1)
    reasons = [headers_dict(r)["error.reason"] for r in sink.topic(DLQ)]
    assert reasons == [b"output_refused"] * 10
    assert sorted(int(headers_dict(r)["source.offset"]) for r in sink.topic(DLQ)) == list(range(10))
    assert counts.dead_letters["output_refused"] == 10
    assert source.committed[TP0] == 10


def test_an_alert_refused_for_good_sends_its_window_to_the_dlq(scorer):
    """An alert record refused for good puts the input window that caused it in the DLQ as output_refused."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink(refused_topics={ALERTS})
    fill(source, scorer, 12)
    from detector.alerting import AlertTracker

    class Always:
        """Flags every window: the third one raises an alert."""

        def __init__(self, inner: Scorer) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def score(self, values: np.ndarray, contexts: Any = None, pool: Any = None) -> Any:
            scores = self.inner.score(values, contexts)
            scores.flag[:] = True
            return scores

    runner = Runner(source, sink, Always(scorer), config(alert_topic=ALERTS), alerts=AlertTracker(3, 5))
    runner.run(idle_timeout_s=0.1)
    assert len(output_ids(sink)) == 12
    (dead,) = sink.topic(DLQ)
    assert headers_dict(dead)["error.reason"] == b"output_refused"
    assert headers_dict(dead)["source.offset"] == b"2"
    assert source.committed[TP0] == 12


def test_when_the_dlq_refuses_too_the_record_is_counted_as_dropped_and_the_loop_goes_on(scorer):
    """Output and DLQ both refused for good: each record is dropped and counted, never retried for ever."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink(refused_topics={OUT, DLQ})
    fill(source, scorer, 6)
    counts = Runner(source, sink, scorer, config()).run(idle_timeout_s=0.1)
    assert counts.output_dropped == 6
    assert source.committed[TP0] == 6


def test_readiness_is_lost_while_delivery_stalls_and_comes_back(scorer):
    """While output is not acknowledged, /readyz's health says why and the stall is reported in seconds;
    once delivered, both clear."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    fill(source, scorer, 4)
    health = Health()
    health.set_broker(True)
    health.set_group(True)
    health.set_model("v")
    seen: list[tuple[bool, str]] = []
    stalls: list[float] = []

    class Watch:
        def __getattr__(self, name: str) -> Any:
            return lambda *args: None

        def delivery_retry(self, unfinished: int, failures: int) -> None:
            seen.append(health.readiness())

        def delivery_stalled(self, seconds: float) -> None:
            stalls.append(seconds)
            seen.append(health.readiness())

    sink.unreachable_flushes = 5
    Runner(source, sink, scorer, config(), health=health, observer=Watch()).run(idle_timeout_s=0.1)
    assert any(not ready and "output delivery stalled" in line for ready, line in seen)
    assert max(stalls) > 0
    assert stalls[-1] == 0
    ready, line = health.readiness()
    assert ready, line


# -- records the client cannot parse ---------------------------------------------------------------------


def test_a_record_the_client_cannot_parse_is_skipped_counted_and_the_rest_scored(scorer):
    """An unreadable record is counted, logged with its partition and offset, and never stalls its partition."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    for i in range(3):
        source.append_json(window(scorer, i))
    source.append_unreadable()
    for i in range(4, 8):
        source.append_json(window(scorer, i))
    with structlog.testing.capture_logs() as logs:
        counts = Runner(source, sink, scorer, config()).run(idle_timeout_s=0.1)
    assert output_ids(sink) == [f"s-1/{i}" for i in (0, 1, 2, 4, 5, 6, 7)]
    assert counts.unreadable_records == 1
    (line,) = [e for e in logs if e["event"].startswith("record skipped")]
    assert (line["partition"], line["offset"]) == (0, 3)
    assert source.committed[TP0] == 8


# -- hostile input: every message is a window or a dead letter --------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def _deep_json(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(0, 10_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'{"series_id":"s","values":[', b"]}")]))
    middle = draw(st.sampled_from([b"", b"1", b"null", b"[1,2]"]))
    closed = draw(st.booleans())
    return opener * depth + middle + (closer * depth if closed else b"")


@st.composite
def _window_like(draw: st.DrawFn) -> bytes:
    obj: dict[str, Any] = {"series_id": draw(st.text(max_size=300)), "values": draw(_json_values)}
    for key in ("window_id", "start", "step_ms", "labels", "event_type"):
        if draw(st.booleans()):
            obj[key] = draw(_json_values)
    return msgspec.json.encode(obj)


_values = st.one_of(
    st.binary(max_size=300),
    _json_values.map(msgspec.json.encode),
    _deep_json(),
    _window_like(),
    st.none(),
)
_header_values = (
    st.none()
    | st.binary(max_size=40)
    | st.sampled_from([b"application/json", b"application/x-detector-f32", b"APPLICATION/JSON; charset=x", b"\xff"])
)
_headers = st.lists(
    st.tuples(st.sampled_from(["content-type", "Content-Type", "series_id", "window_id", "start", "step_ms", "x"])
              | st.text(max_size=10), _header_values),
    max_size=6,
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_values, headers=_headers)
def test_decoding_any_message_gives_a_window_or_a_dead_letter(value, headers):
    """Arbitrary bytes, JSON (nested up to 10,000 deep) and headers: decoding raises nothing but WindowError,
    and every failure makes a dead-letter record and a log line."""
    message = Message(TOPIC, 0, 7, b"k", value, tuple(headers), 0)
    failure: WindowError | None = None
    try:
        window = decode_message(message, (16, 2), 1_048_576)
    except WindowError as err:
        failure = err
    if failure is None:
        assert window.values.shape == (16, 2)
    else:
        record = dead_letter(message, failure, DLQ)
        assert headers_dict(record)["error.reason"] == failure.reason.encode()
        DeadLetterLog().log(message, failure)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages=st.lists(st.tuples(_values, _headers), min_size=1, max_size=12))
def test_the_runner_turns_any_stream_into_outputs_and_dead_letters(scorer, messages):
    """Any stream, good windows mixed in: the loop never raises, and every message is exactly one output
    record or one dead letter, with every offset committed."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    good = 0
    for i, (value, headers) in enumerate(messages):
        source.append(value, headers=headers, key=str(i).encode())
        if i % 3 == 0:
            source.append_json(window(scorer, i), key=b"good")
            good += 1
    Runner(source, sink, scorer, config()).run(idle_timeout_s=0.05)
    n = len(source.read(TP0))
    assert len(sink.topic(OUT)) + len(sink.topic(DLQ)) == n
    assert len(output_ids(sink)) >= good
    assert source.committed[TP0] == n


def test_a_deeply_nested_message_is_a_bad_json_dead_letter(scorer):
    """JSON nested 10,000 deep (which makes the JSON decoder raise RecursionError) is bad_json."""
    for value in (b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000):
        with pytest.raises(WindowError) as err:
            decode_message(Message(TOPIC, 0, 0, None, value), scorer.shape, 1_048_576)
        assert err.value.reason == "bad_json"


def test_a_decoder_fault_nobody_foresaw_is_a_decode_failed_dead_letter(scorer, monkeypatch):
    """Whatever a decoder raises on one message, that message is a dead letter, not the end of the loop."""
    import detector.serve.decode as decode

    def broken(*args: Any) -> Any:
        raise MemoryError("synthetic")

    monkeypatch.setattr(decode, "decode_json", broken)
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    fill(source, scorer, 3)
    Runner(source, sink, scorer, config()).run(idle_timeout_s=0.1)
    assert [headers_dict(r)["error.reason"] for r in sink.topic(DLQ)] == [b"decode_failed"] * 3
    assert b"MemoryError" in headers_dict(sink.topic(DLQ)[0])["error.detail"]


def test_a_window_id_longer_than_the_limit_is_a_dead_letter(scorer):
    """window_id is copied into every output and alert: over 256 characters it is refused as bad_field."""
    for value, headers in (
        (msgspec.json.encode(window(scorer, 0, window_id="w" * 257)), ()),
        (b"\0" * (4 * scorer.shape[0] * scorer.shape[1]),
         (("content-type", b"application/x-detector-f32"), ("series_id", b"s"), ("window_id", b"w" * 257))),
    ):  # fmt: skip
        with pytest.raises(WindowError) as err:
            decode_message(Message(TOPIC, 0, 0, None, value, headers), scorer.shape, 1_048_576)
        assert err.value.reason == "bad_field"


# -- logs and memory -------------------------------------------------------------------------------------


def test_dead_letters_are_logged_at_most_once_per_reason_per_period_with_a_count():
    """A flood of dead letters of one reason logs one line, then one line with the count left out."""
    now = [0.0]
    log = DeadLetterLog(every_s=10.0, clock=lambda: now[0])
    message = Message(TOPIC, 0, 0, None, b"x", (("series_id", b"s" * 1_000_000),))
    with structlog.testing.capture_logs() as logs:
        for _ in range(1000):
            log.log(message, WindowError("bad_json", "d" * 100_000))
        log.log(message, WindowError("bad_shape", "d"))
        now[0] = 11.0
        log.tick()
    lines = [(e["event"], e.get("reason")) for e in logs]
    assert lines == [("dead letter", "bad_json"), ("dead letter", "bad_shape"), ("dead letters not logged", "bad_json")]
    assert logs[-1]["count"] == 999
    assert len(logs[0]["detail"]) <= 200
    assert all(len(str(v)) < 1000 for e in logs for v in e.values())


def test_read_ahead_stops_polling_while_the_messages_held_reach_max_held_bytes(scorer):
    """With large messages held, the runner polls again only once they are handed on: what it holds is
    bounded by bytes as well as by count."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    fill(source, scorer, 40)
    size = len(source.read(TP0)[0].value or b"")
    runner = Runner(source, sink, scorer, config(read_ahead=8, max_held_bytes=6 * size))
    held_at_poll: list[int] = []
    poll = source.poll

    def watched(timeout_s: float, max_records: int) -> list[Message]:
        held_at_poll.append(runner._batch_bytes)
        return poll(timeout_s, max_records)

    source.poll = watched  # type: ignore[method-assign]
    runner.run(idle_timeout_s=0.1)
    assert len(output_ids(sink)) == 40
    assert max(held_at_poll) < 6 * size


def test_a_dead_letter_of_a_message_with_a_null_header_value_carries_an_empty_one():
    """Kafka allows null header values and the producer cannot send them: the dead letter has b"" instead."""
    message = Message(TOPIC, 0, 3, b"k", b"\xff", (("series_id", None), ("x", b"1")))
    record = dead_letter(message, WindowError("bad_encoding", "d"), DLQ)
    assert list(record.headers[:2]) == [("series_id", b""), ("x", b"1")]
    assert all(isinstance(value, bytes) for _, value in record.headers)
    assert record.fallback is not None
    assert all(isinstance(value, bytes) for _, value in record.fallback.headers)


def test_a_kept_partition_reads_again_the_messages_dropped_after_its_last_commit(scorer):
    """A partition kept through an eager rebalance, whose delivered work is all committed but which holds
    messages read ahead: they are dropped on revocation and read again from the last commit, never skipped."""
    source, sink = MemorySource(TOPIC, partitions=1), MemorySink()
    ids = fill(source, scorer, 12)
    source.rebalance(keep=[0], at_poll=3)  # after the first batch is delivered and committed
    runner = Runner(source, sink, scorer, config(max_batch=4, read_ahead=3, max_wait_s=60))
    counts = runner.run(idle_timeout_s=0.2)
    assert counts.dropped_on_revoke > 0
    assert set(output_ids(sink)) == set(ids)
    assert source.committed[TP0] == 12
