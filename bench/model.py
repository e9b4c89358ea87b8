"""Model-only throughput of the scoring component: batch 1 against the serving batch size.

Run: `make bench-model` (or `.venv/bin/python bench/model.py [--seconds S]`; `--seconds 0.3` is a quick smoke
run). Prints windows/s at batch 1 and at the default `batch.max_size`, their ratio; windows/s on batches of
1,024 windows scored in chunks of the scorer's CPU chunk (`detector.scoring.CPU_CHUNK`, 128) against one
forward pass over all 1,024, their ratio; and the peak RSS of this process. Each figure is the median of 3
runs. The model is the default architecture for F=4, T=64 with random weights (speed does not depend on
them). Every target in TARGETS is printed as `target NAME: VALUE OP LIMIT: met` (or NOT MET); figures and
targets go to bench/out/model.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from harness import random_checkpoint
from targets import Target, report

from detector.scoring import CPU_CHUNK, Scorer
from detector.settings import Settings

OUT = Path(__file__).parent / "out"
LARGE = 1024  # the forward pass CPU_CHUNK is measured against

# Every target this bench checks, by figure; where each is stated. "~1.5x" is checked with 10% slack: >= 1.35.
TARGETS = {
    "cpu_chunk_over_1024": Target(
        ">=", 1.35, "", "bench/RESULTS.md, Offline replay (~1.5x faster per window; why CPU_CHUNK is 128)"
    ),
}


def default_scorer(features: int, length: int, chunk: int | None = None) -> Scorer:
    return Scorer(random_checkpoint(features, length, version="bench"), device="cpu", chunk=chunk)


def rate(scorer: Scorer, values: np.ndarray, batch: int, seconds: float) -> float:
    """Windows/s scoring ``values`` in batches of ``batch`` for about ``seconds``."""
    scorer.score(values[:batch])  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for lo in range(0, len(values), batch):
            scorer.score(values[lo : lo + batch])
            done += len(values[lo : lo + batch])
            if time.perf_counter() - started >= seconds:
                break
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args()
    batch = Settings().batch.max_size
    scorer = default_scorer(args.features, args.length)
    whole = default_scorer(args.features, args.length, chunk=LARGE)  # one forward pass per LARGE windows
    rng = np.random.default_rng(0)
    n = 4 * max(batch, LARGE)
    values = (rng.standard_normal((n, args.length, args.features)) * 100 + 1000).astype(np.float32)
    one = statistics.median(rate(scorer, values, 1, args.seconds) for _ in range(3))
    many = statistics.median(rate(scorer, values, batch, args.seconds) for _ in range(3))
    chunked = statistics.median(rate(scorer, values, LARGE, args.seconds) for _ in range(3))
    unchunked = statistics.median(rate(whole, values, LARGE, args.seconds) for _ in range(3))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"model: {scorer.checkpoint.network.model_dump()}  F={args.features} T={args.length}  "
        f"torch threads={torch.get_num_threads()}"
    )
    print(f"{'batch':>8} {'windows/s':>12}")
    print(f"{1:>8} {one:>12,.0f}")
    print(f"{batch:>8} {many:>12,.0f}")
    print(f"batched / batch-1: {many / one:.1f}x   peak RSS: {rss_mb:.0f} MB")
    print(f"batches of {LARGE}: chunks of {CPU_CHUNK} {chunked:,.0f} windows/s, one pass {unchunked:,.0f} windows/s")
    figures = {
        "batch_1": round(one),
        f"batch_{batch}": round(many),
        "batched_over_batch_1": round(many / one, 2),
        f"chunk_{CPU_CHUNK}": round(chunked),
        f"chunk_{LARGE}": round(unchunked),
        "cpu_chunk_over_1024": round(chunked / unchunked, 2),
        "peak_rss_mb": round(rss_mb),
    }
    checked = report(TARGETS, figures)
    meta = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "seconds_per_run": args.seconds}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "model.json").write_text(json.dumps({**figures, "targets": checked, "meta": meta}, indent=2) + "\n")


if __name__ == "__main__":
    main()
