"""replay --offline's loop: the output does not depend on the thread count or the batch size."""

from __future__ import annotations

import json

import numpy as np
import torch

from detector.model import checkpoint
from detector.offline import score_file
from detector.scoring import Scorer


def test_output_is_byte_identical_for_any_thread_count(small_recording, fit_tiny, tmp_path):
    """One, two or four scoring threads write the same bytes, and torch's thread count is put back."""
    path = tmp_path / "m.ckpt"
    checkpoint.save(fit_tiny(), path)
    scorer = Scorer(checkpoint.load(path))
    before = torch.get_num_threads()
    outs = []
    for threads in (1, 2, 4):
        out = tmp_path / f"t{threads}.jsonl"
        result = score_file(scorer, small_recording, out, tmp_path / "dlq.jsonl", batch_size=10, threads=threads)
        assert result.scored == len(small_recording.read_text().splitlines())
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    assert torch.get_num_threads() == before


def test_output_does_not_depend_on_the_batch_size(small_recording, fit_tiny, tmp_path):
    """Batches of 1, 7 and 1024 windows give the same records, probabilities within 1e-5."""
    scorer = Scorer(fit_tiny())
    runs = []
    for batch in (1, 7, 1024):
        out = tmp_path / f"b{batch}.jsonl"
        score_file(scorer, small_recording, out, tmp_path / "dlq.jsonl", batch_size=batch)
        runs.append([json.loads(line) for line in out.read_text().splitlines()])
    for other in runs[1:]:
        assert [r["window_id"] for r in other] == [r["window_id"] for r in runs[0]]
        np.testing.assert_allclose(
            [r["probability"] for r in other], [r["probability"] for r in runs[0]], atol=1e-5 + 1e-6
        )
        np.testing.assert_allclose(
            [r["step_probabilities"] for r in other], [r["step_probabilities"] for r in runs[0]], atol=1e-5 + 1e-6
        )
