"""Scale check: `train --inject` on 30,000 unlabelled univariate windows, and `replay --offline` of 360,000.

Run: `make bench-scale` (or `.venv/bin/python bench/scale.py`). Through the real CLI, it
1. generates 50 series (F=1, T=64) whose values range from below 1 to above 100,000, 700 windows each,
   without events; the first 600 windows of each series form the unlabelled training recording (30,000);
2. times `detector train --inject` on it with default settings;
3. injects events into half of the 5,000 held-out windows (the last 100 of each series) and reports the
   model's window-level AUPRC there (chance = the positive share, 0.5);
4. writes a 360,000-window recording and times `detector replay --offline` on it, with its peak RSS.
Figures go to stdout and bench/out/scale.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from harness import RssSampler

from detector import recordings, synth
from detector.model import checkpoint
from detector.model.inject import inject_batch
from detector.model.metrics import binary_metrics
from detector.scoring import Scorer

OUT = Path(__file__).parent / "out"
DETECTOR = str(Path(sys.executable).with_name("detector"))


def timed(*args: str) -> tuple[float, float]:
    """Run the CLI; return (seconds, peak RSS of the child in MB).

    The peak is the child's own VmHWM, sampled: ``ru_maxrss`` from ``wait4`` would carry the high-water mark
    of this (larger) process, whose address space the child had until it exec'd.
    """
    started = time.monotonic()
    proc = subprocess.Popen([DETECTOR, *args])
    sampler = RssSampler(proc.pid)
    sampler.start()
    proc.wait()
    sampler.join(1)
    seconds = time.monotonic() - started
    if proc.returncode:
        raise SystemExit(f"detector {args[0]} failed with exit code {proc.returncode}")
    return seconds, sampler.peak_mb


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    params = synth.SynthParams(series=50, windows_per_series=700, features=1, event_rate=0.0)
    lines = list(synth.generate(7, params, labels=False))
    train_lines = [ln for ln in lines if int(ln["window_id"].rsplit("/", 1)[1]) < 600]
    held = [ln for ln in lines if int(ln["window_id"].rsplit("/", 1)[1]) >= 600]
    recordings.write(OUT / "scale-train.jsonl", train_lines)
    magnitudes = np.abs(np.concatenate([np.asarray(ln["values"]) for ln in train_lines]))
    print(
        f"training recording: {len(train_lines)} windows, values from {magnitudes.min():.3g} to {magnitudes.max():.3g}"
    )

    train_s, train_rss = timed(
        "train", "--data", str(OUT / "scale-train.jsonl"), "--out", str(OUT / "scale.ckpt"), "--inject"
    )
    ckpt = checkpoint.load(OUT / "scale.ckpt")
    values = np.stack([np.asarray(ln["values"], dtype=np.float32)[:, None] for ln in held])
    injected, masks, _ = inject_batch(values, np.random.default_rng(99), 0.5)
    scores = Scorer(ckpt).score(injected)
    y = masks.max(axis=1)
    m = binary_metrics(y, scores.probability, 0.5)
    print(
        f"train --inject: {train_s:.0f} s; held-out AUPRC {m['auprc']:.3f} (chance {y.mean():.2f}), "
        f"F1 at 0.5 {m['f1']:.3f}"
    )

    big = OUT / "scale-replay.jsonl"
    params = synth.SynthParams(series=50, windows_per_series=7200, features=1)
    n = recordings.write(big, synth.generate(8, params))
    size_mb = big.stat().st_size / 1e6
    replay_s, replay_rss = timed(
        "replay",
        str(big),
        "--offline",
        "--checkpoint",
        str(OUT / "scale.ckpt"),
        "--out",
        str(OUT / "scale-scores.jsonl"),
    )
    rate = n / replay_s
    print(
        f"replay --offline: {n} windows ({size_mb:.0f} MB) in {replay_s:.1f} s = {rate:,.0f} windows/s "
        f"(process start included); peak RSS {replay_rss:.0f} MB"
    )
    result = {
        "train_inject_seconds": round(train_s, 1),
        "train_peak_rss_mb": round(train_rss),
        "heldout_auprc": round(m["auprc"], 4),
        "heldout_positive_share": round(float(y.mean()), 3),
        "replay_windows": n,
        "replay_mb": round(size_mb),
        "replay_seconds": round(replay_s, 1),
        "replay_windows_per_s": round(rate),
        "replay_peak_rss_mb": round(replay_rss),
    }
    (OUT / "scale.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
