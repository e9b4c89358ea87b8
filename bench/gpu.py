"""Model-only windows/s on the GPU: the scoring component against a bare ``torch.nn.LSTM`` of the same shape.

Run: `.venv/bin/python bench/gpu.py` on a machine with CUDA. For batches of 1k, 16k and 64k windows (F=4,
T=64, the default architecture, random weights) in fp32 and fp16 it prints windows/s of

  scorer  ``Scorer.score`` as the daemon runs it (``model.device=auto``, ``model.precision``): host array
          in, pinned staging, normalisation, LSTM, heads, calibration, numpy out;
  lstm    a bare ``nn.LSTM`` of the same shape on a tensor already on the GPU (the ceiling for the encoder);

and their ratio (how much the rest of the scoring path costs). Each figure is the median of 3 timed
passes after a warm-up. Figures go to stdout and bench/out/gpu.json. Without a GPU it says so, runs one
small CPU pass of each so that the code paths stay exercised, and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from harness import random_checkpoint
from torch import nn

from detector.model.checkpoint import Checkpoint
from detector.model.features import input_channels
from detector.scoring import Scorer

OUT = Path(__file__).parent / "out"
F, T = 4, 64


def checkpoint() -> Checkpoint:
    return random_checkpoint(F, T, version="bench")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, n: int, device: torch.device, repeats: int = 3, min_seconds: float = 0.5) -> float:
    """Median windows/s of ``fn`` (which scores ``n`` windows) over ``repeats`` passes of >= min_seconds."""
    fn()  # warm-up: kernels, cuDNN plans, allocator
    sync(device)
    rates = []
    for _ in range(repeats):
        done, started = 0, time.perf_counter()
        while True:
            fn()
            done += n
            sync(device)
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                break
        rates.append(done / elapsed)
    return statistics.median(rates)


def measure(batch: int, precision: str, device: torch.device, ckpt: Checkpoint) -> dict[str, float]:
    scorer = Scorer(ckpt, device=device.type, precision=precision)
    values = (np.random.default_rng(0).standard_normal((batch, T, F)) * 50 + 100).astype(np.float32)
    net = ckpt.network
    lstm = nn.LSTM(input_channels(F), net.hidden_size, net.num_layers, batch_first=True,
                   bidirectional=net.bidirectional).to(device).eval()  # fmt: skip
    x = torch.randn(batch, T, input_channels(F), device=device)
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision] if device.type == "cuda" else None

    @torch.inference_mode()
    def bare() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            lstm(x)

    scorer_rate = timed(lambda: scorer.score(values), batch, device)
    lstm_rate = timed(bare, batch, device)
    return {"scorer": scorer_rate, "lstm": lstm_rate, "scorer_over_lstm": scorer_rate / lstm_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1024,16384,65536")
    parser.add_argument("--precisions", default="fp32,fp16")
    args = parser.parse_args()
    ckpt = checkpoint()
    if torch.cuda.is_available():
        device = torch.device("cuda")
        batches = [int(b) for b in args.batches.split(",")]
        where = torch.cuda.get_device_name(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # a smoke pass: one thread is steady on a shared machine
        batches = [256]
        where = "CPU (no CUDA device: one small pass per precision; the GPU figures need a GPU)"
        print("bench/gpu.py: no CUDA device here; running a small CPU pass to exercise the code paths")
    precisions = args.precisions.split(",")
    print(f"device: {where}   torch {torch.__version__}   model: {ckpt.network.model_dump()}  F={F} T={T}")
    print(f"{'batch':>7} {'precision':>9} {'scorer w/s':>12} {'bare LSTM w/s':>14} {'ratio':>6}")
    results = []
    for batch in batches:
        for precision in precisions:
            m = measure(batch, precision, device, ckpt)
            results.append({"batch": batch, "precision": precision, **{k: round(v, 3) for k, v in m.items()}})
            print(f"{batch:>7} {precision:>9} {m['scorer']:>12,.0f} {m['lstm']:>14,.0f} {m['scorer_over_lstm']:>6.2f}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu.json").write_text(json.dumps({"device": where, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
