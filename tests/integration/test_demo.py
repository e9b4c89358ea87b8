"""`detector demo` end to end, as a user runs it: a subprocess on the real embedded broker and daemon."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detector.broker import accepts_connections
from detector.cli import main

BROKER = re.compile(r"broker on 127\.0\.0\.1:(\d+)")
SERVE_PID = re.compile(r"detector serve starting \(pid (\d+)")


def _demo(out: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETECTOR_")}
    env["DETECTOR_KAFKA__BOOTSTRAP_SERVERS"] = "127.0.0.1:1"  # ignored by the demo: it runs its own broker
    return subprocess.Popen(
        [sys.executable, "-m", "detector.cli", "demo", "--out", str(out), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead; it only waits to be reaped by whoever adopted it
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _processes_with(text: str) -> list[int]:
    """Pids whose command line holds ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in entry.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _assert_nothing_left(output: str) -> None:
    broker_port = int(BROKER.search(output).group(1))  # type: ignore[union-attr]
    serve_pid = int(SERVE_PID.search(output).group(1))  # type: ignore[union-attr]
    assert not _pid_alive(serve_pid), "detector serve survived the demo"
    assert not accepts_connections("127.0.0.1", broker_port), "the broker's port is still open"
    assert not _processes_with(f"127.0.0.1:{broker_port}"), "a broker process survived the demo"


def test_demo_runs_end_to_end_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """The demo finishes by itself with exit 0, shows alerts as they arrive and a summary with real
    figures, writes its artifacts, and leaves no daemon, broker or open port behind."""
    out = tmp_path / "demo"
    started = time.monotonic()
    demo = _demo(out, "--duration", "40", "--windows", "800")
    output, _ = demo.communicate(timeout=150)
    took = time.monotonic() - started
    assert demo.returncode == 0, output
    assert took < 40 + 60, f"the demo took {took:.0f} s for --duration 40:\n{output}"
    assert re.search(r"\sRAISED\s+s3-\d+\s+p=[01]\.\d{3}\s+window=s3-\d+/\d+", output), output
    scored = int(re.search(r"windows scored\s+([\d,]+)", output).group(1).replace(",", ""))  # type: ignore[union-attr]
    raised = int(re.search(r"alerts raised\s+(\d+)", output).group(1))  # type: ignore[union-attr]
    assert scored == 800, output
    assert raised >= 1, output
    assert re.search(r"end to end\s+[\d.]+ windows/s", output), output
    assert re.search(r"latency p50 / p99\s+[\d.]+ ms / [\d.]+ ms", output), output
    assert "Traceback" not in output
    assert "detector serve exited 0; broker stopped; nothing left running" in output
    for name in ("model.ckpt", "stream.jsonl", "alerts.jsonl", "metrics.txt", "summary.json", "serve.log"):
        assert (out / name).is_file(), name
    assert (out / "alerts.jsonl").read_text().count("\n") >= raised
    _assert_nothing_left(output)


def test_demo_interrupted_shuts_everything_down(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) while the recording plays: the daemon and the broker are stopped, exit 130."""
    demo = _demo(tmp_path / "demo", "--duration", "60", "--windows", "600")
    lines: list[str] = []
    assert demo.stdout is not None
    for line in demo.stdout:
        lines.append(line)
        if "alerts as they arrive" in line:
            break
    time.sleep(3)
    demo.send_signal(signal.SIGINT)
    rest, _ = demo.communicate(timeout=60)
    output = "".join(lines) + rest
    assert demo.returncode == 130, output
    assert "nothing left running" in output, output
    assert "Traceback" not in output
    _assert_nothing_left(output)


def test_demo_help_documents_it(capsys: pytest.CaptureFixture[str]) -> None:
    """--help names what the demo does and its options."""
    assert main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    for word in ("--duration", "--out", "--port", "--http-port", "--train", "--checkpoint", "summary"):
        assert word in text


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--duration", "1"],
        ["demo", "--duration", "soon"],
        ["demo", "--windows", "0"],
        ["demo", "--port", "70000"],
        ["demo", "--train", "--checkpoint", "m.ckpt"],
        ["demo", "--nope"],
    ],
)
def test_demo_bad_arguments_exit_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A bad option gives one line pointing at --help and exit 2, before anything starts."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("detector demo:")
    assert "see --help" in err[0]


def test_demo_with_a_missing_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --checkpoint that does not exist: one line naming it, exit 2, and no broker started."""
    assert main(["demo", "--checkpoint", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o")]) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.strip().splitlines() if line.startswith("detector")]
    assert len(err) == 1, captured.err
    assert "nope.ckpt" in err[0]
    assert "broker on" not in captured.out
