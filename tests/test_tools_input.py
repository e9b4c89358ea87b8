"""Hostile input to the `record`, `replay` and `alerts` tools: bad lines and records are counted and
skipped whatever their decoding raises, what is printed is safe on a terminal, files are replaced whole."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import click
import pytest

from detector.codec import encode_json
from detector.errors import DataError, DetectorError
from detector.recordings import replacing
from detector.tools import alerts
from detector.tools.alerts import Alert, AlertFilter, NotAnAlert, human_line, json_line, parse
from detector.tools.clients import printable, printable_json
from detector.tools.record import RecordError, to_line
from detector.tools.replay import LineError, ReplayResult, to_record

DEEP = 5000  # nesting far past what msgspec decodes (it raises RecursionError, not a DecodeError)
NESTED_ARRAY = b"[" * DEEP + b"]" * DEEP
NESTED_IN_OBJECT = b'{"series_id": "s", "values": ' + NESTED_ARRAY + b"}"
HOSTILE = "a\x1b[2J\x1b]0;pwned\x07\rb\n\x7f\x9b\u202e\u2066c"  # CSI, OSC, CR, LF, DEL, C1 CSI, bidi
UNSAFE = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), 0x61C, 0x200E, 0x200F, 0x2028, 0x2029)] + [
    chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
]


def _clean(text: str) -> bool:
    return not any(ch in text for ch in UNSAFE)


@pytest.mark.parametrize("value", [NESTED_ARRAY, NESTED_IN_OBJECT])
def test_record_turns_json_nested_too_deep_into_a_skipped_record(value: bytes):
    """A record value nested deeper than the decoder goes is a RecordError (skipped), not a crash."""
    with pytest.raises(RecordError):
        to_line(value, [], 1, None)


@pytest.mark.parametrize("value", [NESTED_ARRAY, NESTED_IN_OBJECT, b'{"series_id": "s", "x": ' + NESTED_ARRAY + b"}"])
@pytest.mark.parametrize("codec", ["json", "f32"])
def test_replay_turns_json_nested_too_deep_into_a_bad_line(value: bytes, codec):
    """A recording line nested deeper than the decoder goes is a LineError (skipped), under either codec."""
    with pytest.raises(LineError):
        to_record(value, codec)


def test_replay_turns_any_decoding_failure_into_a_bad_line(monkeypatch: pytest.MonkeyPatch):
    """Whatever one line's decoding raises (short of an interrupt) is that line's LineError."""

    def explode(_: bytes) -> object:
        raise MemoryError("the decoder ran out of memory")

    monkeypatch.setattr("detector.tools.replay.parse_json_object", explode)
    with pytest.raises(LineError, match="MemoryError: the decoder ran out of memory"):
        to_record(b'{"series_id": "s", "values": [1], "_ts": 1, "_ts": 2}', "json")


def test_record_turns_any_decoding_failure_into_a_skipped_record(monkeypatch: pytest.MonkeyPatch):
    """Whatever one record's decoding raises (short of an interrupt) is that record's RecordError."""

    def explode(_: bytes) -> object:
        raise ValueError("odd")

    monkeypatch.setattr("detector.tools.record.parse_json_object", explode)
    with pytest.raises(RecordError, match="ValueError: odd"):
        to_line(b"{}", [], 1, None)


@pytest.mark.parametrize(
    "value",
    [
        NESTED_ARRAY,
        b'{"series_id": "s", "state": "raised", "x": ' + NESTED_ARRAY + b"}",
        b'{"series_id": "s", "state": "raised", "probability": 1' + b"0" * 400 + b"}",  # an int past float range
    ],
)
def test_alerts_parse_turns_any_decoding_failure_into_not_an_alert(value: bytes):
    """Deep nesting and numbers past float range make a malformed record (NotAnAlert), not a crash."""
    with pytest.raises(NotAnAlert):
        parse(value, 1)


def _alert(**fields: object) -> Alert:
    record = {"series_id": HOSTILE, "state": "raised", "window_id": HOSTILE, "probability": 0.9}
    record.update(fields)
    alert = parse(encode_json(record), 1_767_225_600_000)
    assert alert is not None
    return alert


def test_alert_lines_escape_control_characters_and_bidi_overrides():
    """Ids from a record reach the terminal with C0, DEL, C1 and bidi controls escaped, on one line."""
    alert = _alert(model_version="\x1b[31mxyz")
    line = human_line(alert)
    assert _clean(line)
    assert len(line.splitlines()) == 1
    assert "a\\x1b[2J\\x1b]0;pwned\\x07\\x0db\\x0a\\x7f\\x9b\\u202e\\u2066c" in line
    assert "window=a\\x1b[2J" in line
    assert "model=\\x1b[31mx" in line
    coloured = human_line(alert, colour=True)  # the only escape sequences are the colours asked for
    state = f"{'RAISED':<7}"
    assert coloured.replace(click.style(state, **alerts.COLOURS["RAISED"]), state) == line


def test_alert_json_lines_stay_valid_json_and_safe_on_a_terminal():
    """`--json` lines carry no raw control or bidi characters and parse back to the record as it came."""
    alert = _alert(note="\u2028\x85 \u061c")
    line = json_line(alert)
    assert _clean(line)
    assert json.loads(line) == alert.record
    assert json.loads(line)["series_id"] == HOSTILE


def test_alert_lines_cut_huge_ids():
    """A series id of a megabyte is shown cut, marked with `...`, not whole."""
    line = human_line(_alert(series_id="x" * 1_000_000, window_id=None))
    assert len(line) < 1000
    assert "x" * alerts.SHOWN_CHARS + "..." in line


@pytest.mark.parametrize("since", [10**18, -(10**18), 10**30])
def test_alert_with_a_time_no_calendar_holds_is_still_shown(since: int):
    """An alert whose own time is out of any calendar's range is shown with the raw milliseconds."""
    alert = parse(encode_json({"series_id": "s", "state": "cleared", "since": since}), -1)
    assert alert is not None
    assert human_line(alert).startswith(f"@{since}ms  CLEARED")


def test_alert_filter_remembers_a_bounded_number_of_raised_series(monkeypatch: pytest.MonkeyPatch):
    """Under a probability filter, only the latest REMEMBERED_RAISES raised series await their CLEARED."""
    monkeypatch.setattr(alerts, "REMEMBERED_RAISES", 3)
    keep = AlertFilter(min_probability=0.5)
    for sid in "abcd":
        assert keep(_alert(series_id=sid))
    cleared = [keep(_alert(series_id=sid, state="cleared")) for sid in "abcd"]
    assert cleared == [False, True, True, True]


def test_printable_escapes_only_what_a_terminal_acts_on():
    """Control and bidi characters become escapes; other text (accents, CJK, emoji, backslashes) is kept."""
    assert printable("host-1/cpu é 中 🚀 \\x") == "host-1/cpu é 中 🚀 \\x"
    assert printable("\x00\t\x1b\x7f\x85\u202e\u2029") == "\\x00\\x09\\x1b\\x7f\\x85\\u202e\\u2029"
    assert all(_clean(printable(ch)) for ch in UNSAFE)
    assert printable("\x1b" * 10, limit=3) == "\\x1b\\x1b\\x1b..."
    assert printable_json('{"a":"\x7f\u202e"}') == '{"a":"\\u007f\\u202e"}'


def test_replacing_puts_the_new_file_in_place_only_when_the_block_ends(tmp_path: Path):
    """The new content replaces the file at the end of the block; until then the old content is there."""
    out = tmp_path / "rec.jsonl"
    out.write_bytes(b"old\n")
    with replacing(out) as f:
        f.write(b"new\n")
        f.flush()
        assert out.read_bytes() == b"old\n"
    assert out.read_bytes() == b"new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.jsonl"]


@pytest.mark.parametrize("error", [DetectorError("the broker went away"), KeyboardInterrupt(), OSError(28, "full")])
def test_replacing_leaves_the_old_file_when_the_block_fails(tmp_path: Path, error: BaseException):
    """A block that raises leaves the old file as it was and no temporary file behind."""
    out = tmp_path / "rec.jsonl"
    out.write_bytes(b"old\n")

    def capture_that_fails() -> None:
        with replacing(out) as f:
            f.write(b"half a li")
            raise error

    with pytest.raises(type(error)):
        capture_that_fails()
    assert out.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.jsonl"]


def test_replacing_refuses_a_folder_before_the_block_runs(tmp_path: Path):
    """A folder as the target is a DataError up front, before anything is captured."""
    with pytest.raises(DataError, match="is a directory"), replacing(tmp_path):
        pytest.fail("the block ran")


def test_replacing_creates_files_with_the_usual_permissions(tmp_path: Path):
    """The replaced file gets the permissions a plain open would give (the umask's), not 0600."""
    with replacing(tmp_path / "a.jsonl") as f:
        f.write(b"x\n")
    (tmp_path / "b.jsonl").write_bytes(b"x\n")
    mode = stat.S_IMODE(os.stat(tmp_path / "a.jsonl").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "b.jsonl").st_mode)


def test_replay_result_counts_what_was_not_acknowledged_as_failed():
    """Sent-but-unacknowledged and refused records fail the replay and are named in its summary."""
    result = ReplayResult("t", published=5, bad_lines=1, refused=1, unacknowledged=35, stopped_at=42)
    assert result.failed == 36
    text = result.summary()
    assert text.startswith("published 5 windows to t in ")
    assert "1 not delivered" in text
    assert "35 sent but not acknowledged" in text
    assert "stopped at line 42" in text
    assert ReplayResult("t", published=5).failed == 0
