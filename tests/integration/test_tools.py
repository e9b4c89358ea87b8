"""`detector replay` (to a topic), `record` and `alerts` against the real embedded broker, run in-process."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from detector import recordings, synth
from detector.broker import EmbeddedBroker
from detector.cli import main
from detector.codec import F32_CONTENT_TYPE, encode_json
from detector.errors import DetectorError
from detector.settings import load_settings
from detector.tools import clients
from detector.tools import record as record_tool
from detector.tools import replay as replay_tool
from detector.tools.alerts import AlertFilter, human_line, parse
from detector.tools.clients import close_quietly, make_producer
from detector.tools.replay import Pacer, publish
from tests.integration.conftest import free_port
from tests.integration.kafka_helpers import TopicReader, cli_child, create_topics, produce

T, F = 16, 4
PARAMS = synth.SynthParams(series=3, windows_per_series=10, features=F, length=T)
NESTED = b"[" * 5000 + b"]" * 5000  # deeper than msgspec decodes: it raises RecursionError, not DecodeError


def _topic(name: str) -> str:
    return f"tools-{name}-{uuid.uuid4().hex[:6]}"


def _recording(path: Path, with_ts: bool = True) -> list[dict]:
    """30 generated windows; with ``_ts`` 10 ms apart on all but the first line."""
    lines = list(synth.generate(5, PARAMS))
    if with_ts:
        for i, line in enumerate(lines[1:], start=1):
            line["_ts"] = 1_767_225_600_000 + 10 * i
    recordings.write(path, lines)
    return lines


def _read(bootstrap: str, topic: str, n: int) -> list:
    reader = TopicReader(bootstrap, topic)
    try:
        return reader.read_count(n, timeout_s=30, settle_s=0.3)
    finally:
        reader.close()


def _temporary(out: Path) -> list[Path]:
    """The temporary files `record` writes beside ``out`` until the capture ends."""
    return list(out.parent.glob(f".{out.name}.*.tmp"))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_not_delivered(code: int, out: str, err: str, topic: str, published: int) -> None:
    """A replay that published ``published`` windows to ``topic`` and failed (exit 1) for one not delivered."""
    assert code == 1
    assert out.startswith(f"published {published} windows to {topic} in ")
    assert "1 not delivered" in out
    assert err.splitlines()[-1] == f"detector: {topic}: 1 window(s) not delivered"


def test_replay_publishes_each_line_keyed_by_series_id_without_ts(broker: EmbeddedBroker, tmp_path: Path, capsys):
    """Every good line lands once, keyed by series_id, as given less `_ts`; bad lines are named and skipped."""
    rec = tmp_path / "rec.jsonl"
    lines = _recording(rec)
    with rec.open("ab") as f:
        f.write(b"{not json\n[1, 2]\n" + b'{"series_id": "s", "values": ' + NESTED + b"}\n")
    topic = _topic("replay")
    create_topics(broker.bootstrap_servers, [topic])
    code, out, err = _run(capsys, "replay", str(rec), "--topic", topic, "--bootstrap-servers", broker.bootstrap_servers)
    assert code == 0, err
    assert out.startswith(f"published {len(lines)} windows to {topic} in ")
    assert "windows/s" in out
    assert "3 bad lines skipped" in out
    assert f"{rec}:31: bad_json" in err
    assert f"{rec}:32: not_object" in err
    assert f"{rec}:33: " in err
    assert "Traceback" not in err

    records = _read(broker.bootstrap_servers, topic, len(lines))
    assert len(records) == len(lines)
    want = sorted(json.dumps({k: v for k, v in line.items() if k != "_ts"}, sort_keys=True) for line in lines)
    assert sorted(json.dumps(r.json(), sort_keys=True) for r in records) == want
    assert all(r.key == r.json()["series_id"].encode() for r in records)
    assert all(r.headers == [] for r in records)
    first = encode_json(lines[0])  # the line without _ts goes out byte for byte
    assert first in [r.value for r in records]
    # one series, one key, one partition: its windows stay in recorded order
    for sid in {line["series_id"] for line in lines}:
        got = [r.json()["window_id"] for r in sorted(records, key=lambda r: r.offset) if r.key == sid.encode()]
        assert got == [line["window_id"] for line in lines if line["series_id"] == sid]


def test_a_record_the_producer_refuses_is_counted_and_fails_the_run(broker: EmbeddedBroker, tmp_path: Path, capsys):
    """A line over the producer's size limit is reported with its line number; the others go out; exit 1."""
    rec = tmp_path / "rec.jsonl"
    huge = {"series_id": "s", "values": [0.5] * 300_000}  # > 1 MB of JSON
    recordings.write(rec, [{"series_id": "s", "values": [1.0]}, huge, {"series_id": "s", "values": [2.0]}])
    topic = _topic("huge")
    code, out, err = _run(capsys, "replay", str(rec), "--topic", topic, "--bootstrap-servers", broker.bootstrap_servers)
    _assert_one_not_delivered(code, out, err, topic, published=2)
    assert f"{rec}:2: not sent: MessageSizeTooLargeError" in err


def test_replay_f32_then_record_restores_the_windows(broker: EmbeddedBroker, tmp_path: Path, capsys):
    """`--codec f32` publishes float32 bytes with the codec's headers; `record --features` reads them back."""
    rec = tmp_path / "rec.jsonl"
    lines = _recording(rec)
    topic = _topic("f32")
    create_topics(broker.bootstrap_servers, [topic])
    bs = ["--bootstrap-servers", broker.bootstrap_servers]
    code, _, err = _run(capsys, "replay", str(rec), "--topic", topic, "--codec", "f32", *bs)
    assert code == 0, err
    records = _read(broker.bootstrap_servers, topic, len(lines))
    by_id = {line["window_id"]: line for line in lines}
    assert len(records) == len(lines)
    for r in records:
        assert r.header("content-type") == F32_CONTENT_TYPE.encode()
        line = by_id[r.header("window_id").decode()]
        assert r.key == line["series_id"].encode() == r.header("series_id")
        assert r.header("start") == str(line["start"]).encode()
        assert r.value == np.asarray(line["values"], dtype="<f4").tobytes()

    out = tmp_path / "captured.jsonl"
    code, said, err = _run(capsys, "record", "--topic", topic, "--out", str(out), "--max", "30", "--features", "4", *bs)
    assert code == 0, err
    assert said.startswith(f"recorded 30 records from {topic} (4 partitions) to {out}")
    captured = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(captured) == 30
    for got in captured:
        line = by_id[got["window_id"]]
        assert got["series_id"] == line["series_id"]
        assert got["start"] == line["start"]
        assert got["step_ms"] == line["step_ms"]
        np.testing.assert_array_equal(np.asarray(got["values"], dtype=np.float32), np.float32(line["values"]))
        assert isinstance(got["_ts"], int)


def test_record_then_replay_gives_identical_values(broker: EmbeddedBroker, tmp_path: Path, capsys):
    """A topic captured with `record` (stopped by --idle-timeout) and replayed fills a second topic alike."""
    rec = tmp_path / "rec.jsonl"
    lines = _recording(rec, with_ts=False)
    first, second = _topic("first"), _topic("second")
    create_topics(broker.bootstrap_servers, [first, second])
    bs = ["--bootstrap-servers", broker.bootstrap_servers]
    assert _run(capsys, "replay", str(rec), "--topic", first, *bs)[0] == 0
    before = time.monotonic()
    out = tmp_path / "captured.jsonl"
    code, said, err = _run(capsys, "record", "--topic", first, "--out", str(out), "--idle-timeout", "1", *bs)
    assert code == 0, err
    assert "(idle)" in said
    assert time.monotonic() - before < 15
    captured = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(captured) == len(lines)
    assert all(isinstance(c["_ts"], int) and c["_ts"] > 1_700_000_000_000 for c in captured)

    code, said, err = _run(capsys, "replay", str(out), "--topic", second, "--speed", "1000", *bs)
    assert code == 0, err
    a = _read(broker.bootstrap_servers, first, len(lines))
    b = _read(broker.bootstrap_servers, second, len(lines))
    assert sorted((r.key, r.value) for r in a) == sorted((r.key, r.value) for r in b)
    assert sorted(r.json()["window_id"] for r in b) == sorted(line["window_id"] for line in lines)


def test_record_from_now_skips_what_was_there(broker: EmbeddedBroker, tmp_path: Path, capsys):
    """`record --from-now` captures only records produced after it started, and skips a non-JSON one."""
    topic = _topic("fromnow")
    create_topics(broker.bootstrap_servers, [topic])
    old = [(b"s", encode_json({"series_id": "s", "window_id": i, "values": [1.0]}), []) for i in range(5)]
    produce(broker.bootstrap_servers, topic, old)
    out = tmp_path / "new.jsonl"
    args = ["record", "--topic", topic, "--out", str(out), "--from-now", "--idle-timeout", "2"]
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(main([*args, "--bootstrap-servers", broker.bootstrap_servers]))
    )
    worker.start()
    deadline = time.monotonic() + 20
    while not _temporary(out) and time.monotonic() < deadline:  # the file is opened once positions are fixed
        time.sleep(0.05)
    new = [(b"s", encode_json({"series_id": "s", "window_id": f"new{i}", "values": [2.0]}), []) for i in range(3)]
    produce(broker.bootstrap_servers, topic, [*new, (b"s", b"garbage", [])])
    worker.join(30)
    assert result == [0]
    captured = [json.loads(x) for x in out.read_text().splitlines()]
    assert [c["window_id"] for c in captured] == ["new0", "new1", "new2"]
    assert "bad_json" in capsys.readouterr().err


def test_record_skips_and_counts_records_nested_too_deep(broker: EmbeddedBroker, tmp_path: Path, capsys):
    """Values nested deeper than the decoder goes are named, counted and skipped; the records around them
    are captured, and the new recording replaces the old one whole."""
    topic = _topic("nested")
    create_topics(broker.bootstrap_servers, [topic], partitions=1)
    good = [encode_json({"series_id": "s", "window_id": i, "values": [1.0]}) for i in range(4)]
    values = [good[0], NESTED, good[1], b'{"series_id": "s", "values": ' + NESTED + b"}", good[2], good[3]]
    produce(broker.bootstrap_servers, topic, [(b"s", v, []) for v in values])
    out = tmp_path / "captured.jsonl"
    out.write_text("an old recording\n")
    bs = ["--bootstrap-servers", broker.bootstrap_servers]
    code, said, err = _run(capsys, "record", "--topic", topic, "--out", str(out), "--max", "4", *bs)
    assert code == 0, err
    assert "recorded 4 records" in said
    assert "(max); 2 records skipped" in said
    assert f"{topic}/0@1: " in err
    assert f"{topic}/0@3: " in err
    assert "Traceback" not in err
    assert [json.loads(x)["window_id"] for x in out.read_text().splitlines()] == [0, 1, 2, 3]
    assert not _temporary(out)


def test_record_that_fails_leaves_the_old_recording(
    broker: EmbeddedBroker, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
):
    """A capture that fails midway leaves `--out` as it was, and no temporary file: exit 1, one line."""
    topic = _topic("fails")
    create_topics(broker.bootstrap_servers, [topic])

    def capture_that_fails(consumer: object, out, result: object, **_: object) -> None:
        out.write(b'{"series_id": "s", "val')
        raise DetectorError(f"record {topic}: KafkaError: the broker went away")

    monkeypatch.setattr(record_tool, "capture", capture_that_fails)
    out = tmp_path / "captured.jsonl"
    out.write_text("an old recording\n")
    code, _, err = _run(
        capsys, "record", "--topic", topic, "--out", str(out), "--bootstrap-servers", broker.bootstrap_servers
    )
    assert code == 1
    assert err.strip() == f"detector: record {topic}: KafkaError: the broker went away"
    assert out.read_text() == "an old recording\n"
    assert not _temporary(out)


def test_record_stopped_by_sigint_writes_whole_lines_and_exits_0(broker: EmbeddedBroker, tmp_path: Path):
    """SIGINT ends a capture between records: the recording takes `--out`'s place, exit 0."""
    topic = _topic("sigint")
    create_topics(broker.bootstrap_servers, [topic])
    produce(
        broker.bootstrap_servers,
        topic,
        [(b"s", encode_json({"series_id": "s", "window_id": i, "values": [1.0]}), []) for i in range(5)],
    )
    out = tmp_path / "captured.jsonl"
    out.write_text("an old recording\n")
    argv = ["record", "--topic", topic, "--out", str(out), "--idle-timeout", "0"]
    env = {**os.environ, "DETECTOR_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers}
    with cli_child(*argv, env=env) as child:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:  # all five are in the temporary file
            if sum(len(p.read_bytes().splitlines()) for p in _temporary(out)) == 5:
                break
            time.sleep(0.05)
        assert out.read_text() == "an old recording\n"
        child.send_signal(signal.SIGINT)
        said, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert b"recorded 5 records" in said
    assert b"(signal)" in said
    assert [json.loads(x)["window_id"] for x in out.read_text().splitlines()] == [0, 1, 2, 3, 4]
    assert not _temporary(out)


# kafka-python 3.0's close() raises at its own flush while records are pending, so the producer is
# closed again, and fails again, when it is garbage-collected
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_replay_counts_exactly_what_a_broker_that_went_away_acknowledged(tmp_path: Path):
    """A broker gone mid-replay: `published` is exactly what it acknowledged, every other record sent is
    counted as refused or sent but not acknowledged, and the replay fails."""
    rec = tmp_path / "rec.jsonl"
    total, before = 20, 8
    recordings.write(rec, [{"series_id": f"s{i % 3}", "window_id": i, "values": [float(i)]} for i in range(total)])
    topic = _topic("gone")
    with EmbeddedBroker("127.0.0.1", free_port(), output=tmp_path / "broker.log") as own:
        create_topics(own.bootstrap_servers, [topic])
        producer = make_producer(
            load_settings(environ={"DETECTOR_KAFKA__BOOTSTRAP_SERVERS": own.bootstrap_servers}), "t"
        )
        sent = 0

        def after_send(_: int) -> None:  # after the `before`-th send: all acknowledged, then the broker goes
            nonlocal sent
            sent += 1
            if sent == before:
                producer.flush(30)
                own.stop()

        warnings: list[str] = []
        try:
            result = publish(rec, topic, producer, on_progress=after_send, flush_timeout_s=2, warn=warnings.append)
        finally:
            close_quietly(producer, timeout_s=0)
    assert result.published == before
    assert result.refused + result.unacknowledged == total - before
    assert result.failed == total - before
    assert not result.interrupted
    assert result.summary().startswith(f"published {before} windows to {topic} in ")
    if result.unacknowledged:
        assert f"{result.unacknowledged} sent but not acknowledged" in result.summary()
        assert "some records were not acknowledged within 2 s" in warnings


def test_replay_that_cannot_send_says_what_it_published_and_fails(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
):
    """A producer that cannot take a record (the broker went away before any topic metadata came) stops
    the replay at that line: the summary still counts what was published, and the exit is 1."""
    rec = tmp_path / "rec.jsonl"
    recordings.write(rec, [{"series_id": "s", "values": [float(i)]} for i in range(5)])
    topic = _topic("nosend")
    monkeypatch.setattr(clients, "MAX_BLOCK_MS", 1000)
    with EmbeddedBroker("127.0.0.1", free_port(), output=tmp_path / "broker.log") as own:

        def producer_then_no_broker(settings: object, client_id: str) -> object:
            producer = clients.make_producer(settings, client_id)  # type: ignore[arg-type]
            own.stop()
            return producer

        monkeypatch.setattr(replay_tool, "make_producer", producer_then_no_broker)
        code, out, err = _run(
            capsys, "replay", str(rec), "--topic", topic, "--bootstrap-servers", own.bootstrap_servers
        )
    _assert_one_not_delivered(code, out, err, topic, published=0)
    assert "stopped at line 1, the rest was not sent" in out
    assert f"replay to {topic} stopped at line 1: the producer gave up waiting" in err


def test_rate_and_speed_pace_the_replay(broker: EmbeddedBroker, tmp_path: Path, capsys):
    """100 windows at --rate 200 take at least 0.4 s; --speed 2 over 1 s of `_ts` takes at least 0.4 s."""
    rec = tmp_path / "rec.jsonl"
    recordings.write(rec, [{"series_id": "s", "values": [float(i)], "_ts": 1000 + 10 * i} for i in range(100)])
    topic = _topic("pace")
    create_topics(broker.bootstrap_servers, [topic])
    bs = ["--bootstrap-servers", broker.bootstrap_servers]
    for flag, value in (("--rate", "200"), ("--speed", "2")):
        start = time.monotonic()
        code, out, err = _run(capsys, "replay", str(rec), "--topic", topic, flag, value, *bs)
        assert code == 0, err
        seconds = float(out.split(" in ")[1].split(" s ")[0])
        assert 0.4 <= seconds <= time.monotonic() - start + 0.005  # printed to 2 decimals: 0.4995 reads 0.50
        assert seconds < 5


V1, V2 = "0123456789abcdef", "fedcba9876543210"
ALERTS = [
    {"series_id": "a", "state": "raised", "window_id": "a/3", "probability": 0.97, "since": 1, "model_version": V1},
    {"series_id": "b", "state": "raised", "window_id": "b/1", "probability": 0.6, "since": 2, "model_version": V1},
    {"series_id": "a", "state": "cleared", "window_id": "a/9", "probability": 0.1, "since": 3, "model_version": V1},
    {"series_id": "b", "state": "cleared", "window_id": "b/7", "probability": 0.05, "since": 4, "model_version": V1},
    {"series_id": "c", "window_id": 12, "probability": 0.91, "flag": True, "threshold": 0.5, "model_version": V2},
    {"series_id": "c", "window_id": 13, "probability": 0.2, "flag": False, "threshold": 0.5, "model_version": V2},
]


@pytest.fixture
def alert_topic(broker: EmbeddedBroker) -> str:
    """A one-partition topic holding ALERTS in order, with one malformed record in between."""
    topic = _topic("alerts")
    create_topics(broker.bootstrap_servers, [topic], partitions=1)
    values = [encode_json(a) for a in ALERTS]
    values.insert(2, b'{"hello": "world"}')
    values.append(NESTED)
    produce(broker.bootstrap_servers, topic, [(b"k", v, []) for v in values])
    return topic


def test_alerts_prints_one_line_per_alert(broker: EmbeddedBroker, alert_topic: str, capsys, monkeypatch):
    """Default topic from kafka.alert_topic; --json prints the records, the human form one line each."""
    monkeypatch.setenv("DETECTOR_KAFKA__ALERT_TOPIC", alert_topic)
    base = ["alerts", "--from-beginning", "--idle-timeout", "1", "--bootstrap-servers", broker.bootstrap_servers]
    code, out, err = _run(capsys, *base, "--json")
    assert code == 0, err
    shown = [a for a in ALERTS if a.get("flag", True)]
    assert [json.loads(x) for x in out.splitlines()] == shown
    assert f"skipped a malformed record at {alert_topic}/0@2" in err
    assert f"skipped a malformed record at {alert_topic}/0@7" in err
    assert "5 alerts shown" in err
    assert "2 malformed records skipped" in err

    code, out, err = _run(capsys, *base)
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    states = [(r[1], r[2]) for r in rows]
    assert states == [("RAISED", "a"), ("RAISED", "b"), ("CLEARED", "a"), ("CLEARED", "b"), ("FLAGGED", "c")]
    assert rows[0][3:] == ["p=0.970", "window=a/3", "model=01234567"]
    assert rows[4][3:] == ["p=0.910", "window=12", "model=fedcba98"]
    assert all(r[0].endswith("Z") and r[0][:2] == "20" for r in rows)
    assert "\x1b[" not in out  # no colour off a terminal

    code, out, err = _run(capsys, *base[:1], *base[2:])  # from now on: what is there already is not shown
    assert code == 0, err
    assert out == ""
    assert "0 alerts shown" in err


def test_alerts_filters_by_series_and_min_probability(broker: EmbeddedBroker, alert_topic: str, capsys):
    """--series keeps one series; --min-probability drops weak alerts and the clearing of a raise not shown."""
    base = [
        "alerts",
        "--topic",
        alert_topic,
        "--from-beginning",
        "--json",
        "--bootstrap-servers",
        broker.bootstrap_servers,
    ]
    code, out, err = _run(capsys, *base, "--idle-timeout", "1", "--series", "a")
    assert code == 0, err
    assert [(a["series_id"], a["state"]) for a in map(json.loads, out.splitlines())] == [
        ("a", "raised"),
        ("a", "cleared"),
    ]
    code, out, err = _run(capsys, *base, "--max", "3", "--min-probability", "0.9")
    assert code == 0, err
    shown = [(a["series_id"], a["window_id"]) for a in map(json.loads, out.splitlines())]
    assert shown == [("a", "a/3"), ("a", "a/9"), ("c", 12)]


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["replay", "{rec}", "--topic", "t", "--speed", "2", "--rate", "10"], "mutually exclusive"),
        (["replay", "{tmp}/missing.jsonl", "--topic", "t"], "no such file"),
        (["replay", "{rec}", "--topic", "t", "--rate", "-5"], "--rate"),
        (["replay", "{rec}", "--topic", "t", "--speed", "0"], "--speed"),
        (["replay", "{rec}"], "--topic"),
        (["replay", "{rec}", "--offline", "--topic", "t", "--out", "x"], "not with --offline"),
        (["replay", "{rec}", "--topic", "t", "--codec", "avro"], "--codec"),
        (["record", "--out", "{tmp}/x.jsonl"], "--topic"),
        (["record", "--topic", "t", "--out", "x", "--max", "0"], "--max"),
        (["alerts", "--min-probability", "1.5"], "--min-probability"),
        (["alerts", "--topic", "t", "--idle-timeout", "-1"], "--idle-timeout"),
    ],
)
def test_bad_arguments_give_one_line_and_a_nonzero_exit(argv, expect, tmp_path: Path, capsys):
    """Bad arguments and missing files: one line on stderr naming the problem, exit 2, no traceback."""
    rec = tmp_path / "rec.jsonl"
    rec.write_text('{"series_id": "s", "values": [1]}\n')
    code, _, err = _run(capsys, *[a.format(rec=rec, tmp=tmp_path) for a in argv])
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert expect in err
    assert "Traceback" not in err


def test_unreachable_broker_is_one_line(tmp_path: Path, capsys):
    """No broker at the address: one line naming it and exit 1, after the client's bootstrap timeout."""
    rec = tmp_path / "rec.jsonl"
    rec.write_text('{"series_id": "s", "values": [1]}\n')
    address = f"127.0.0.1:{free_port()}"
    code, _, err = _run(capsys, "replay", str(rec), "--topic", "t", "--bootstrap-servers", address)
    assert code == 1
    assert err.strip() == err.strip().splitlines()[0]
    assert f"cannot reach Kafka at {address}" in err


@pytest.mark.parametrize("command", ["replay", "record", "alerts"])
def test_every_tool_answers_help(command: str, capsys):
    """`--help` documents each command and exits 0."""
    code, out, _ = _run(capsys, command, "--help")
    assert code == 0
    assert f"Usage: detector {command}" in out
    assert "--bootstrap-servers" in out


def test_pacer_schedules_by_rate_or_scaled_ts():
    """--rate spaces records evenly; --speed divides `_ts` deltas; no pacing sends at once."""
    rate = Pacer(rate=4)
    assert [rate.due(None) for _ in range(3)] == [0.0, 0.25, 0.5]
    speed = Pacer(speed=2)
    assert [speed.due(ts) for ts in (1000, 2000, None, 1500, 5000)] == [0.0, 0.5, 0.0, 0.25, 2.0]
    assert Pacer().due(10_000) == 0.0
    with pytest.raises(ValueError, match="exclusive"):
        Pacer(speed=1, rate=1)


def test_alert_filter_and_line_are_pure():
    """A CLEARED passes a probability filter only after its RAISED did; unflagged scores are not alerts."""
    raised = parse(encode_json(ALERTS[0]), 1_767_225_600_000)
    cleared = parse(encode_json(ALERTS[2]), 1_767_225_601_000)
    assert raised is not None
    assert cleared is not None
    assert parse(encode_json(ALERTS[5]), 0) is None
    keep = AlertFilter(min_probability=0.99)
    assert not keep(raised)
    assert not keep(cleared)
    keep = AlertFilter(min_probability=0.9, series=["a*"])
    assert keep(raised)
    assert keep(cleared)
    assert human_line(raised).startswith("2026-01-01T00:00:00.000Z  RAISED   a  p=0.970")
    assert "\x1b[31" in human_line(raised, colour=True)
