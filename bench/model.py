"""Model-only throughput of the scoring component: batch 1 against the serving batch size.

Run: `make bench-model` (or `.venv/bin/python bench/model.py`). Prints windows/s at batch 1 and at the
default `batch.max_size`, their ratio, and the peak RSS of this process. Each figure is the median of 3 runs.
The model is the default architecture for F=4, T=64 with random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch
from harness import random_checkpoint

from detector.scoring import Scorer
from detector.settings import Settings


def default_scorer(features: int, length: int) -> Scorer:
    return Scorer(random_checkpoint(features, length, version="bench"), device="cpu")


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
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((4 * batch, args.length, args.features)) * 100 + 1000).astype(np.float32)
    one = statistics.median(rate(scorer, values, 1, args.seconds) for _ in range(3))
    many = statistics.median(rate(scorer, values, batch, args.seconds) for _ in range(3))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"model: {scorer.checkpoint.network.model_dump()}  F={args.features} T={args.length}  "
        f"torch threads={torch.get_num_threads()}"
    )
    print(f"{'batch':>8} {'windows/s':>12}")
    print(f"{1:>8} {one:>12,.0f}")
    print(f"{batch:>8} {many:>12,.0f}")
    print(f"batched / batch-1: {many / one:.1f}x   peak RSS: {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
