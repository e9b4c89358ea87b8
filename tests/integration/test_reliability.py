"""What only a real consumer group and real signals show, against the embedded broker over TCP: members joining
and leaving mid-stream, SIGTERM (once, then twice) with a backlog, a stop while output cannot be delivered,
and hostile input under repeated SIGKILLs. Every test checks that no window is lost and that no offset is
committed past a window that was not delivered."""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Producer

from detector.broker import EmbeddedBroker
from detector.codec import encode_f32
from detector.model import checkpoint
from tests.integration.conftest import F, T
from tests.integration.kafka_helpers import (
    PARTITIONS,
    Daemon,
    Record,
    RefusingPath,
    TopicReader,
    Topics,
    committed_offsets,
    create_topics,
    end_offsets,
    produce_to,
    read_to_end,
    wait_for_entry,
)
from tests.sample_windows import encode, window

JOIN_S = 90  # bounds a group join (~3 s here; ~6 s more while a SIGKILLed member's session runs out)
DRAIN_S = 180  # bounds reading what a daemon delivers
STOP_GRACE_S = 5.0  # the runner's stop_grace_s: how long a stop retries undeliverable output
# Undeliverable output at a stop: the grace, then the last flush (5 s) and closing the clients (3 s each).
STOP_BOUND_S = STOP_GRACE_S + 25

Produced = tuple[int | None, bytes | None, bytes | None, list[tuple[str, Any]]]  # (partition, key, value, headers)


# -- inputs whose window_id names the partition they were produced to ---------------------------------------


def partitioned(prefix: str, i: int, partition: int) -> Produced:
    """Window ``i`` of partition ``partition``: its window_id is ``{prefix}/p{partition}/{i}``."""
    w = window(f"{prefix}-{partition}-{i % 3}", i, T, F)
    w["window_id"] = f"{prefix}/p{partition}/{i}"
    value, headers = encode(w)
    return partition, w["series_id"].encode(), value, headers


def source_partition(window_id: str) -> int:
    return int(window_id.split("/")[1][1:])


def backlog(prefix: str, per_partition: int) -> tuple[list[Produced], set[str]]:
    records = [partitioned(prefix, i, p) for i in range(per_partition) for p in range(PARTITIONS)]
    return records, {msgspec.json.decode(value)["window_id"] for _, _, value, _ in records}


def window_ids(records: Iterable[Record]) -> set[str]:
    return {r.json()["window_id"] for r in records}


class Stream:
    """Produces ``records`` on a thread, ``per_tick`` of them every ``tick_s``, until they run out or
    :meth:`stop`; ``sent`` holds those the broker acknowledged."""

    def __init__(self, bootstrap: str, topic: str, records: Iterator[Produced], per_tick: int, tick_s: float) -> None:
        self.bootstrap, self.topic, self.records = bootstrap, topic, records
        self.per_tick, self.tick_s = per_tick, tick_s
        self.sent: list[Produced] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> list[Produced]:
        """Stop producing (after the tick under way); what was sent."""
        self._stop.set()
        return self.finish(timeout_s=60)

    def finish(self, timeout_s: float) -> list[Produced]:
        """Wait until every record is sent (or the stream is stopped); what was sent."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the stream did not end within {timeout_s} s"
        return self.sent

    def _run(self) -> None:
        # confluent-kafka, as it sends a header whose value is null (kafka-python refuses to)
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "acks": "all"})
        while not self._stop.is_set():
            tick = [r for _, r in zip(range(self.per_tick), self.records, strict=False)]
            if not tick:
                break
            for partition, key, value, headers in tick:
                where = {} if partition is None else {"partition": partition}
                producer.produce(self.topic, value=value, key=key, headers=headers, **where)
            assert producer.flush(30) == 0, "the stream's records were not acknowledged"
            self.sent.extend(tick)
            self._stop.wait(self.tick_s)  # pacing the input, not waiting for an outcome


# -- what was delivered, what was committed ------------------------------------------------------------------


def input_ids(bootstrap: str, topic: str) -> dict[int, list[str | None]]:
    """Per partition, the window_id at each offset of the input topic (None where a message has none)."""
    records = read_to_end(TopicReader(bootstrap, topic), bootstrap, topic, timeout_s=60)
    by_partition: dict[int, list[str | None]] = {p: [] for p in range(PARTITIONS)}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert r.offset == len(by_partition[r.partition])
        try:
            wid = r.json().get("window_id")
        except (ValueError, AttributeError):
            wid = None
        by_partition[r.partition].append(wid)
    return by_partition


def assert_commits_cover_only_delivered(bootstrap: str, topics: Topics, delivered: set[str]) -> dict[int, int | None]:
    """Every input offset below each committed offset has its window on the output topic: no commit has
    passed undelivered work. Returns the committed offsets."""
    inputs = input_ids(bootstrap, topics.input)
    committed = committed_offsets(bootstrap, topics.group, topics.input)
    for p, offset in committed.items():
        missing = [(o, wid) for o, wid in enumerate(inputs[p][: offset or 0]) if wid not in delivered]
        assert not missing, (
            f"partition {p} committed at {offset}, but {len(missing)} windows below it were never delivered "
            f"(first: offset {missing[0][0]}, {missing[0][1]}); committed: {committed}"
        )
    return committed


# -- which replica owned which partition when --------------------------------------------------------------


def epoch_ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def ownership(daemon: Daemon, topic: str) -> dict[int, list[tuple[float, float]]]:
    """Per input partition, the intervals (epoch ms) from each "partitions assigned" line of ``daemon`` to the
    "partitions revoked"/"partitions lost" line that ended it (open-ended while it still owned it)."""
    intervals: dict[int, list[tuple[float, float]]] = {p: [] for p in range(PARTITIONS)}
    since: dict[int, float] = {}
    for entry in daemon.logs():
        event = entry.get("event")
        if event not in ("partitions assigned", "partitions revoked", "partitions lost"):
            continue
        at = epoch_ms(entry["timestamp"])
        for name in entry["partitions"]:
            t, p = name.rsplit("/", 1)
            assert t == topic, entry
            if event == "partitions assigned":
                since[int(p)] = at
            elif int(p) in since:
                intervals[int(p)].append((since.pop(int(p)), at))
    for p, at in since.items():
        intervals[p].append((at, math.inf))
    return intervals


def produced_outside_ownership(records: list[Record], owned: dict[int, list[tuple[float, float]]]) -> list[str]:
    """Output records sent (their broker timestamp is the producer's send time, in whole ms) while their
    source partition was not assigned to the replica that sent them."""
    outside = []
    for r in records:
        wid = r.json()["window_id"]
        p = source_partition(wid)
        if not any(start - 1 <= r.timestamp <= end for start, end in owned[p]):
            outside.append(f"{wid} sent at {r.timestamp}; partition {p} owned during {owned[p]}")
    return outside


def replica_checkpoint(base: Path, tmp_path: Path, name: str) -> tuple[Path, str]:
    """The same model saved with another rule label, so that its model_version names the replica."""
    ck = checkpoint.load(base)
    path = tmp_path / f"replica-{name}.ckpt"
    labelled = ck.with_heads(dataclasses.replace(ck.window, rule=f"{ck.window.rule} {name}"), ck.step)
    return path, checkpoint.save(labelled, path)


def delivers_everything(
    start_daemon: Callable[..., Daemon], reader: TopicReader, expected: set[str], **extra: str
) -> None:
    """A daemon started (again) in the group delivers every window of ``expected`` and then stops with 0."""
    daemon = start_daemon(**extra)
    reader.read_until(lambda rs: expected <= window_ids(rs), DRAIN_S)
    missing = expected - window_ids(reader.records)
    assert not missing, f"{len(missing)} windows lost, e.g. {sorted(missing)[:5]}:\n{daemon.tail()}"
    assert daemon.terminate(timeout_s=STOP_BOUND_S) == 0, daemon.tail()


def stuck_daemon(
    refusing_broker: RefusingPath, topics: Topics, start_daemon: Callable[..., Daemon], prefix: str
) -> tuple[Daemon, set[str]]:
    """A daemon retrying output that the broker refuses, with a backlog of 75 windows a partition waiting
    (batches of 16); and the window_ids of that backlog."""
    bootstrap = refusing_broker.bootstrap_servers
    create_topics(bootstrap, [topics.input, topics.output, topics.dlq, topics.alerts])
    records, expected = backlog(prefix, per_partition=75)
    produce_to(bootstrap, topics.input, records)
    refusing_broker.refuse_produce("stuck-detector")
    stuck = start_daemon(bootstrap=bootstrap, DETECTOR_KAFKA__CLIENT_ID="stuck-detector", DETECTOR_BATCH__MAX_SIZE="16")
    stuck.wait_for_log("output not acknowledged yet; retrying", timeout_s=JOIN_S)
    return stuck, expected


# -- 1. a member joins and another leaves mid-stream --------------------------------------------------------


def test_members_joining_and_leaving_mid_stream_lose_nothing_and_produce_nothing_after_a_revocation(
    broker: EmbeddedBroker, topics: Topics, start_daemon: Callable[..., Daemon], model_checkpoint: Path, tmp_path
):
    """Replica A serves a 4-partition stream; B joins mid-stream; A leaves on SIGTERM while windows still
    arrive: every window_id is on the output topic, and neither replica sent an output of a partition while
    that partition was not assigned to it (revoked, or never its own)."""
    bootstrap = broker.bootstrap_servers
    (ckpt_a, version_a), (ckpt_b, version_b) = (replica_checkpoint(model_checkpoint, tmp_path, n) for n in "ab")
    endless = (partitioned("mj", i, p) for i in range(100_000) for p in range(PARTITIONS))
    stream = Stream(bootstrap, topics.input, endless, per_tick=PARTITIONS, tick_s=0.2).start()
    reader = TopicReader(bootstrap, topics.output)

    def scored_by(version: str, records: list[Record]) -> list[Record]:
        return [r for r in records if r.json()["model_version"] == version]

    try:
        a = start_daemon(DETECTOR_MODEL__CHECKPOINT=str(ckpt_a))
        reader.read_until(lambda rs: len(scored_by(version_a, rs)) >= 20, JOIN_S)
        assert len(scored_by(version_a, reader.records)) >= 20, a.tail()

        b = start_daemon(DETECTOR_MODEL__CHECKPOINT=str(ckpt_b))
        reader.read_until(lambda rs: len(scored_by(version_b, rs)) >= 20, JOIN_S)
        assert len(scored_by(version_b, reader.records)) >= 20, b.tail()
        assert a.alive, a.tail()

        assert a.terminate(timeout_s=STOP_BOUND_S) == 0, a.tail()
        wait_for_entry(b, "an assignment of all 4 partitions",
                       lambda e: e.get("event") == "partitions assigned" and len(e["partitions"]) == PARTITIONS,
                       JOIN_S)  # fmt: skip
        so_far = len(scored_by(version_b, reader.records))
        reader.read_until(lambda rs: len(scored_by(version_b, rs)) >= so_far + 40, JOIN_S)
        assert stream.running, "the stream ended before the member left"
    finally:
        sent = stream.stop()

    expected = {msgspec.json.decode(value)["window_id"] for _, _, value, _ in sent}
    reader.read_until(lambda rs: expected <= window_ids(rs), DRAIN_S)
    missing = expected - window_ids(reader.records)
    assert not missing, f"{len(missing)} of {len(expected)} windows never delivered, e.g. {sorted(missing)[:5]}"
    assert b.terminate(timeout_s=STOP_BOUND_S) == 0, b.tail()
    records = read_to_end(reader, bootstrap, topics.output, timeout_s=60)

    assert {r.json()["model_version"] for r in records} == {version_a, version_b}
    for daemon, version in ((a, version_a), (b, version_b)):
        outside = produced_outside_ownership(scored_by(version, records), ownership(daemon, topics.input))
        assert not outside, f"{len(outside)} outputs of partitions the replica did not own: {outside[:5]}"
    committed = assert_commits_cover_only_delivered(bootstrap, topics, window_ids(records))
    assert committed == end_offsets(bootstrap, topics.input)


# -- 2. SIGTERM with a backlog, and a second signal during the stop ------------------------------------------


def test_sigterm_with_a_backlog_exits_zero_and_a_restart_delivers_the_rest(
    broker: EmbeddedBroker, topics: Topics, start_daemon: Callable[..., Daemon]
):
    """600 windows wait on the topic; SIGTERM once the first outputs appear: exit 0, no commit past an
    undelivered window; a daemon started again in the group delivers every window, and after it stops the
    committed offsets are exactly the end offsets."""
    bootstrap = broker.bootstrap_servers
    records, expected = backlog("bk", per_partition=150)
    produce_to(bootstrap, topics.input, records)
    reader = TopicReader(bootstrap, topics.output)

    first = start_daemon(DETECTOR_BATCH__MAX_SIZE="16")
    reader.read_until(lambda rs: len(rs) > 0, JOIN_S)
    assert reader.records, first.tail()
    assert first.terminate(timeout_s=STOP_BOUND_S) == 0, first.tail()
    delivered = window_ids(read_to_end(reader, bootstrap, topics.output, timeout_s=60))
    assert_commits_cover_only_delivered(bootstrap, topics, delivered)

    delivers_everything(start_daemon, reader, expected)
    assert window_ids(read_to_end(reader, bootstrap, topics.output, timeout_s=60)) == expected
    assert committed_offsets(bootstrap, topics.group, topics.input) == dict.fromkeys(range(PARTITIONS), 150)
    assert end_offsets(bootstrap, topics.input) == dict.fromkeys(range(PARTITIONS), 150)


def test_a_second_signal_during_the_stop_exits_at_once_and_a_restart_loses_nothing(
    refusing_broker: RefusingPath, topics: Topics, start_daemon: Callable[..., Daemon]
):
    """While a SIGTERM-ed daemon cannot deliver its output (the stop takes the grace), a SIGINT makes it exit
    with 130 (128 + SIGINT); nothing it did not deliver is committed, and a daemon started again in the group
    delivers every window."""
    bootstrap = refusing_broker.bootstrap_servers
    stuck, expected = stuck_daemon(refusing_broker, topics, start_daemon, "ss")
    stuck.process.send_signal(signal.SIGTERM)
    wait_for_entry(stuck, "the stop giving up on the undeliverable output",
                   lambda e: str(e.get("event", "")).startswith("stopping with output unacknowledged"),
                   STOP_BOUND_S)  # fmt: skip
    stuck.process.send_signal(signal.SIGINT)  # the first signal was handled: this one arrives during the stop
    assert stuck.wait(timeout_s=STOP_BOUND_S) == 128 + signal.SIGINT, stuck.tail()
    reader = TopicReader(bootstrap, topics.output)
    assert read_to_end(reader, bootstrap, topics.output, timeout_s=60) == []
    assert_commits_cover_only_delivered(bootstrap, topics, set())

    delivers_everything(start_daemon, reader, expected, bootstrap=bootstrap)
    assert committed_offsets(bootstrap, topics.group, topics.input) == end_offsets(bootstrap, topics.input)


# -- 3. a stop while output cannot be delivered ---------------------------------------------------------------


def test_a_stop_with_undeliverable_output_exits_zero_commits_nothing_and_a_restart_delivers_everything(
    refusing_broker: RefusingPath, topics: Topics, start_daemon: Callable[..., Daemon]
):
    """The broker refuses every Produce of this daemon (the embedded broker creates a missing output topic on
    first produce, so a missing topic cannot make output undeliverable). SIGTERM while it retries, with
    batches read ahead: it exits 0 within the stop grace plus a margin, delivered nothing and committed
    nothing; a daemon whose output works, in the same group, then delivers every window."""
    bootstrap = refusing_broker.bootstrap_servers
    stuck, expected = stuck_daemon(refusing_broker, topics, start_daemon, "ud")
    assert stuck.terminate(timeout_s=STOP_BOUND_S) == 0, stuck.tail()
    reader = TopicReader(bootstrap, topics.output)
    assert read_to_end(reader, bootstrap, topics.output, timeout_s=60) == []
    committed = assert_commits_cover_only_delivered(bootstrap, topics, set())
    assert all(offset in (None, 0) for offset in committed.values()), committed

    delivers_everything(start_daemon, reader, expected, bootstrap=bootstrap)
    assert committed_offsets(bootstrap, topics.group, topics.input) == dict.fromkeys(range(PARTITIONS), 75)


# -- 4. hostile input under SIGKILL -------------------------------------------------------------------------


MAX_BYTES = 32_768  # limits.max_message_bytes for the hostile stream


def hostile_messages() -> list[tuple[bytes, bytes | None, list[tuple[str, Any]], str | None]]:
    """(key, value, headers, the reason expected or None for any) of one bad message of each kind."""
    good = window("hostile", 0, T, F)

    def js(**changes: Any) -> bytes:
        obj = {**good, **changes}
        return msgspec.json.encode({k: v for k, v in obj.items() if v is not ...})

    f32_value, f32_headers = encode_f32(good)

    def f32_with(name: str, value: bytes | None) -> list[tuple[str, Any]]:
        return [(k, value if k == name else v) for k, v in f32_headers]

    rows = b",".join([b"[" + b",".join([b"1e400"] * F) + b"]"] * T)
    return [
        (b"not-json", b"this is not JSON at all", [], "bad_json"),
        (b"invalid-utf8", b'{"series_id": "\xff\xfe", "values": []}', [], "bad_encoding"),
        (b"deep-array", b"[" * 10_000 + b"]" * 10_000, [], None),
        (b"deep-object", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, [], None),
        (b"json-array", b"[1, 2, 3]", [], "not_object"),
        (b"no-series-id", js(series_id=...), [], "missing_series_id"),
        (b"wrong-shape", js(values=[[1.0] * F] * (T + 1)), [], "bad_shape"),
        (b"ragged", js(values=[[1.0] * F, [1.0] * (F + 1)]), [], "bad_values"),
        (b"strings", js(values=[["x"] * F] * T), [], "bad_values"),
        (b"nan-1e400", b'{"series_id": "s", "values": [' + rows + b"]}", [], "non_finite"),
        (b"huge-series-id", js(series_id="s" * 10_000), [], "missing_series_id"),
        (b"huge-window-id", js(window_id="w" * 100_000), [], "oversize"),
        (b"unknown-content-type", js(), [("content-type", b"application/avro")], "unknown_content_type"),
        (b"f32-bad-series-id", f32_value, f32_with("series_id", b"\xff\xfehost"), "bad_encoding"),
        (b"f32-null-series-id", f32_value, f32_with("series_id", None), "missing_series_id"),
        (b"null-content-type", f32_value, f32_with("content-type", None), None),
        (b"empty", b"", [], None),
        (b"tombstone", None, [], None),
        (b"over-the-limit", js(padding="x" * MAX_BYTES), [], "oversize"),
    ]


def test_hostile_input_under_repeated_sigkill_loses_no_window_and_dead_letters_every_bad_message(
    broker: EmbeddedBroker, topics: Topics, start_daemon: Callable[..., Daemon]
):
    """~300 good windows with bad messages of every kind mixed in, streamed while the daemon is SIGKILLed and
    restarted three times: every good window_id is on the output topic, every bad message (matched by its
    key) is in the DLQ with its error.reason, no good one is, and each run was alive until it was killed."""
    bootstrap = broker.bootstrap_servers
    bad = hostile_messages()
    good_ids: set[str] = set()
    records: list[Produced] = []
    for i in range(300):
        w = window(f"hostile-{i % 6}", i, T, F)
        value, headers = encode(w, binary=i % 4 == 3)
        records.append((None, f"good-{i}".encode(), value, headers))
        good_ids.add(w["window_id"])
        j, r = divmod(i - 5, 300 // len(bad))
        if r == 0 and 0 <= j < len(bad):
            records.append((None, bad[j][0], bad[j][1], bad[j][2]))
    assert sum(1 for _, key, _, _ in records if not key.startswith(b"good-")) == len(bad)

    stream = Stream(bootstrap, topics.input, iter(records), per_tick=6, tick_s=0.5).start()  # ~12 messages/s
    env = {"DETECTOR_LIMITS__MAX_MESSAGE_BYTES": str(MAX_BYTES), "DETECTOR_BATCH__MAX_SIZE": "32"}
    out, dlq = TopicReader(bootstrap, topics.output), TopicReader(bootstrap, topics.dlq)
    daemon = start_daemon(**env)
    kills: list[tuple[int, bool]] = []
    try:
        for _ in range(3):
            scored = len(window_ids(out.records))
            out.read_until(lambda rs, n=scored, d=daemon: len(window_ids(rs)) >= n + 15 or not d.alive, JOIN_S)
            assert daemon.alive, f"the daemon exited on its own ({daemon.process.returncode}):\n{daemon.tail()}"
            assert len(window_ids(out.records)) >= scored + 15, f"no progress before kill {len(kills) + 1}"
            daemon.process.kill()
            daemon.wait(timeout_s=30)
            kills.append((len(window_ids(out.records)), stream.running))
            daemon = start_daemon(**env)
        assert kills[0][1], f"the first kill came after the stream had ended: {kills}"
        assert len(stream.finish(timeout_s=120)) == len(records)
    finally:
        stream.stop()

    out.read_until(lambda rs: good_ids <= window_ids(rs) or not daemon.alive, DRAIN_S)
    bad_keys = {key for key, _, _, _ in bad}
    dlq.read_until(lambda rs: bad_keys <= {r.key for r in rs} or not daemon.alive, DRAIN_S)
    assert daemon.alive, f"the daemon exited on its own ({daemon.process.returncode}):\n{daemon.tail()}"
    missing = good_ids - window_ids(out.records)
    assert not missing, f"{len(missing)} good windows lost, e.g. {sorted(missing)[:5]} (kills: {kills})"
    absent = bad_keys - {r.key for r in dlq.records}
    assert not absent, f"bad messages never dead-lettered: {sorted(absent)}"
    assert {r.key for r in dlq.records} == bad_keys, "a good window was dead-lettered"
    for key, value, _, reason in bad:
        for letter in (r for r in dlq.records if r.key == key):
            assert letter.header("error.reason"), f"{key!r}: no error.reason"
            if reason is not None:
                assert letter.header("error.reason") == reason.encode(), (key, letter.header("error.reason"))
            assert letter.value in (value, b"", None), key
    assert daemon.terminate(timeout_s=STOP_BOUND_S) == 0, daemon.tail()
