"""The demo's model: a small checkpoint shipped with the package, and the recipe that made it.

The bundled file (``detector/assets/demo.ckpt``) is what ``detector demo`` serves unless it is told to train
(``--train``) or given a checkpoint. It is rebuilt, deterministically on the CPU, with

    python -m detector.demo.model            # writes detector/assets/demo.ckpt

Recipe: a one-layer bidirectional LSTM (hidden 32) with window and per-step heads, trained on a generated labelled
recording of F=4, T=64 windows (seed 101), calibrated with isotonic regression and a max-F1 threshold on
another (seed 102). The demo's own stream uses other seeds, so it never replays what the model learnt from.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch

from detector import recordings, synth
from detector.calibrate import calibrate
from detector.model import checkpoint
from detector.model.config import AugmentConfig, NetworkConfig, TrainConfig
from detector.model.train import train
from detector.scoring import Scorer

TRAIN_SEED, CALIBRATION_SEED = 101, 102
FEATURES, LENGTH = 4, 64
RECIPE = TrainConfig(
    network=NetworkConfig(hidden_size=32, num_layers=1),  # small and quick: the demo shows the daemon
    augment=AugmentConfig(inject_rate=0.5),  # the bundled file was built with it
    epochs=30,
    steps_per_epoch=60,
    batch_size=128,
    seed=0,
    max_minutes=0,  # the same result on a slow machine as on a fast one
)
CALIBRATION = ("isotonic", "max-f1")


def bundled_path() -> Path:
    """Where the bundled checkpoint lies (inside the installed package)."""
    return Path(str(resources.files("detector") / "assets" / "demo.ckpt"))


def build(out: Path, say: Callable[[str], None] = lambda _: None) -> str:
    """Train and calibrate the demo model into ``out``; its model_version. Deterministic on the CPU."""
    params = synth.SynthParams(features=FEATURES, length=LENGTH)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same floating-point sums, hence the same file, everywhere
    try:
        with tempfile.TemporaryDirectory(prefix="detector-demo-model-") as tmp:
            train_path, calib_path = Path(tmp) / "train.jsonl", Path(tmp) / "calibrate.jsonl"
            recordings.write(train_path, synth.generate(TRAIN_SEED, params))
            recordings.write(calib_path, synth.generate(CALIBRATION_SEED, params))
            say(f"training the demo model (LSTM hidden {RECIPE.network.hidden_size}, {RECIPE.epochs} epochs at most)")
            result = train(recordings.load(train_path), RECIPE)
            v = result.summary["validation"]
            say(f"validation F1 {v['f1']:.3f}, AUPRC {v['auprc']:.3f}; calibrating ({' '.join(CALIBRATION)})")
            held_out = recordings.load(calib_path, shape=(LENGTH, FEATURES), need_labels=True)
            calibrated = calibrate(Scorer(result.checkpoint), held_out, *CALIBRATION)
    finally:
        torch.set_num_threads(threads)
    return checkpoint.save(calibrated, out)


if __name__ == "__main__":  # pragma: no cover - the maintainers' way to refresh the bundled file
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "assets" / "demo.ckpt"
    version = build(target, say=print)
    print(f"wrote {target} ({target.stat().st_size:,} bytes, model_version {version})")
