"""KafkaSink's own decisions, over a stand-in for kafka-python's producer (no broker): which failures are
permanent, and when a producer that stopped working is replaced."""

from __future__ import annotations

import time

from kafka import errors as kerr
from kafka.future import Future

from detector.serve.kafka_io import KafkaSink
from detector.serve.messages import OutRecord


class StandInProducer:
    """Answers send() with futures settled by ``outcome``: "ok", "never", or an exception to fail with."""

    def __init__(self, outcome: object = "ok") -> None:
        self.outcome = outcome
        self.sent: list[tuple[str, bytes | None]] = []
        self.closed = False

    def send(self, topic, key=None, value=None, headers=None):
        if isinstance(self.outcome, kerr.MessageSizeTooLargeError):
            raise self.outcome
        self.sent.append((topic, value))
        future = Future()
        if self.outcome == "ok":
            future.success(None)
        elif isinstance(self.outcome, Exception):
            future.failure(self.outcome)
        return future

    def flush(self, timeout=None):
        return None

    def close(self, timeout=None):
        self.closed = True


def records(n: int) -> list[OutRecord]:
    return [OutRecord("scores", b"k", f"v{i}".encode()) for i in range(n)]


def test_acknowledged_records_complete_the_flush():
    """Records whose futures succeed make a complete flush and no failures."""
    sink = KafkaSink(StandInProducer, StandInProducer("ok"))
    for r in records(3):
        sink.send(r)
    result = sink.flush(1.0)
    assert result.complete


def test_size_refusals_are_permanent_and_other_errors_are_not():
    """MessageSizeTooLarge is reported permanent (the runner sends the fallback); a timeout is retriable."""
    sink = KafkaSink(StandInProducer, StandInProducer(kerr.MessageSizeTooLargeError("too big")))
    sink.send(records(1)[0])
    (failure,) = sink.flush(1.0).failures
    assert failure.permanent
    sink = KafkaSink(StandInProducer, StandInProducer(kerr.KafkaTimeoutError("expired")))
    sink.send(records(1)[0])
    (failure,) = sink.flush(1.0).failures
    assert not failure.permanent


def test_a_producer_failing_every_send_is_replaced_after_three_flushes():
    """When every record fails for REPLACE_AFTER flushes in a row, a new producer takes over."""
    broken = StandInProducer(kerr.KafkaError("InitProducerId failed"))
    made: list[StandInProducer] = []
    sink = KafkaSink(lambda: made.append(StandInProducer("ok")) or made[-1], broken)
    pending = records(2)
    for _ in range(KafkaSink.REPLACE_AFTER):
        for r in pending:
            sink.send(r)
        pending = [f.record for f in sink.flush(1.0).failures]
        assert len(pending) == 2
    assert broken.closed
    assert len(made) == 1
    for r in pending:
        sink.send(r)
    assert sink.flush(1.0).complete
    assert [value for _, value in made[0].sent] == [b"v0", b"v1"]


def test_a_stalled_producer_is_replaced_and_its_records_handed_back():
    """Records unacknowledged for STALL_S come back as failures, to be sent through a new producer."""
    stalled = StandInProducer("never")
    made: list[StandInProducer] = []
    sink = KafkaSink(lambda: made.append(StandInProducer("ok")) or made[-1], stalled)
    sink.STALL_S = 0.05
    for r in records(3):
        sink.send(r)
    assert sink.flush(0.01).unfinished == 3
    time.sleep(0.1)
    result = sink.flush(0.01)
    assert (result.unfinished, len(result.failures)) == (0, 3)
    assert stalled.closed
    assert len(made) == 1


def test_a_topic_the_client_may_not_write_to_is_a_permanent_refusal():
    """TopicAuthorizationFailed and InvalidTopic are permanent (the runner sends the input to the DLQ as
    output_refused); a producer fault that a new producer cures, such as OutOfOrderSequenceNumber, is not."""
    for error in (kerr.TopicAuthorizationFailedError("denied"), kerr.InvalidTopicError("bad name")):
        sink = KafkaSink(StandInProducer, StandInProducer(error))
        sink.send(records(1)[0])
        (failure,) = sink.flush(1.0).failures
        assert failure.permanent, error
    sink = KafkaSink(StandInProducer, StandInProducer(kerr.OutOfOrderSequenceNumberError("seq")))
    sink.send(records(1)[0])
    (failure,) = sink.flush(1.0).failures
    assert not failure.permanent


def test_a_record_the_client_rejects_before_sending_is_a_permanent_refusal():
    """kafka-python's own checks (a header value that is not bytes, a topic name it rejects) raise TypeError or
    ValueError from send: a permanent failure, never an exception out of the sink."""
    for error in (TypeError("All headers items must be (str, bytes) tuples"), ValueError("bad topic")):

        class Rejecting(StandInProducer):
            def send(self, topic, key=None, value=None, headers=None, error=error):
                raise error

        sink = KafkaSink(Rejecting, Rejecting())
        sink.send(records(1)[0])
        (failure,) = sink.flush(1.0).failures
        assert failure.permanent
        assert type(error).__name__ in failure.error
