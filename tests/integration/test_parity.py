"""`serve` on Kafka and `replay --offline` on the file give every window the same score: one loop, one
scorer, one record. Only the clocks differ by design (scored_at and latency_ms are event time offline)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from detector.broker import EmbeddedBroker
from detector.cli import main
from tests.integration.conftest import F, T
from tests.integration.kafka_helpers import TopicReader, Topics, read_to_end

CLOCKS = {"scored_at", "latency_ms"}
SCORES = {"probability", "step_probabilities"}


def test_serve_and_replay_offline_score_the_same_stream_identically(
    broker: EmbeddedBroker, topics: Topics, start_daemon, model_checkpoint: Path, tmp_path: Path
):
    """A generated recording (6 series x 40 windows) published with `detector replay` and served, and the
    same file scored by `replay --offline`: exactly one record per window on each path, the same records,
    field for field, but the clocks."""
    rec = tmp_path / "stream.jsonl"
    assert main(["generate", "--out", str(rec), "--seed", "21", "--series", "6", "--windows", "40",
                 "--features", str(F), "--length", str(T)]) == 0  # fmt: skip
    lines = rec.read_text().splitlines()
    assert main(["replay", str(rec), "--topic", topics.input, "--bootstrap-servers", broker.bootstrap_servers]) == 0

    daemon = start_daemon()
    reader = TopicReader(broker.bootstrap_servers, topics.output)
    reader.read_count(len(lines), timeout_s=180)
    assert daemon.terminate(timeout_s=15) == 0
    served = read_to_end(reader, broker.bootstrap_servers, topics.output, timeout_s=30)

    out = tmp_path / "scores.jsonl"
    assert main(["replay", str(rec), "--offline", "--checkpoint", str(model_checkpoint), "--out", str(out)]) == 0
    offline = [json.loads(line) for line in out.read_text().splitlines()]

    def by_id(records: list[dict], keep: Callable[[str], bool]) -> dict[str, dict]:
        return {r["window_id"]: {k: v for k, v in r.items() if keep(k)} for r in records}

    def exact(key: str) -> bool:
        return key not in CLOCKS | SCORES

    assert len(served) == len(offline) == len(lines)
    online = [r.json() for r in served]
    assert by_id(online, exact) == by_id(offline, exact)
    # Scores do not depend on the batch a window is scored in, to within 1e-5 (serve and replay batch apart).
    a, b = by_id(online, SCORES.__contains__), by_id(offline, SCORES.__contains__)
    for key in a:
        np.testing.assert_allclose(a[key]["probability"], b[key]["probability"], atol=1e-5)
        np.testing.assert_allclose(a[key]["step_probabilities"], b[key]["step_probabilities"], atol=1e-5)
