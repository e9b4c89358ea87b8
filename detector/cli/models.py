"""``detector generate|train|calibrate|evaluate|inspect``: data and models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from detector.cli.common import CONTEXT, cli, config_option, read_settings, say
from detector.errors import ConfigError, DataError


@cli.command(context_settings=CONTEXT)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Recording to write (.jsonl).")
@click.option("--seed", type=int, default=0, show_default=True, help="Generator seed; different seeds share no series.")
@click.option("--series", type=click.IntRange(1), default=12, show_default=True, help="Number of series.")
@click.option("--windows", type=click.IntRange(1), default=60, show_default=True, help="Windows per series.")
@click.option("--features", type=click.IntRange(1), default=4, show_default=True, help="Features per step (F).")
@click.option("--length", type=click.IntRange(8), default=64, show_default=True, help="Steps per window (T).")
@click.option(
    "--event-rate",
    type=click.FloatRange(0, 1),
    default=0.15,
    show_default=True,
    help="Target share of windows holding an event.",
)
@click.option("--no-labels", is_flag=True, help="Leave labels out (an unlabelled recording, for --inject).")
@click.option(
    "--from-csv",
    type=click.Path(path_type=Path),
    default=None,
    help="Cut a CSV series (timestamp ms, value columns, optional 'label') into windows instead.",
)
@click.option("--series-id", default="csv", show_default=True, help="series_id for --from-csv.")
def generate(
    out: Path,
    seed: int,
    series: int,
    windows: int,
    features: int,
    length: int,
    event_rate: float,
    no_labels: bool,
    from_csv: Path | None,
    series_id: str,
) -> None:
    """Write a recording: generated telemetry with labelled events, or a CSV series cut into windows."""
    from detector import recordings, synth

    if from_csv is not None:
        lines = list(recordings.from_csv(from_csv, series_id, length))
    else:
        params = synth.SynthParams(
            series=series, windows_per_series=windows, features=features, length=length, event_rate=event_rate
        )
        lines = list(synth.generate(seed, params, labels=not no_labels))
    n = _write_recording(out, lines)
    say(f"wrote {n} windows to {out}")


def _write_recording(out: Path, lines: list[dict]) -> int:
    from detector import recordings

    try:
        return recordings.write(out, lines)
    except OSError as err:
        raise DataError(f"{out}: cannot write ({err.strerror})") from None


@cli.command(context_settings=CONTEXT)
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Recording to learn from (.jsonl).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint to write.")
@click.option("--inject", is_flag=True, help="Ignore labels: learn from synthetic events injected into the data.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Most epochs (default from settings: 40).")
@click.option("--seed", type=int, default=None, help="Random seed (default from settings: 0).")
@config_option
def train(data: Path, out: Path, inject: bool, epochs: int | None, seed: int | None, config: Path | None) -> None:
    """Fit a model on a recording (labelled, or with --inject) and write an uncalibrated checkpoint."""
    from tqdm import tqdm

    from detector import recordings
    from detector.model import checkpoint
    from detector.model.train import train as fit

    overrides = {k: v for k, v in {"epochs": epochs, "seed": seed}.items() if v is not None}
    settings = read_settings(config, train=overrides) if overrides else read_settings(config)
    windows = recordings.load(data)
    say(
        f"training on {len(windows)} windows of shape {windows.shape} from {data}"
        f"{' with injected events' if inject else ''}"
    )
    total = settings.train.epochs * settings.train.steps_per_epoch
    with tqdm(total=total, desc="train", unit="batch", disable=not sys.stdout.isatty(), leave=False) as bar:
        result = fit(windows, settings.train, inject=inject, on_batch=lambda: bar.update(1))
    version = checkpoint.save(result.checkpoint, out)
    s = result.summary
    v = s["validation"]
    say(
        f"validation ({s['validation_windows']} windows, {s['validation_positives']} with events, threshold 0.5): "
        f"precision {v['precision']:.3f}  recall {v['recall']:.3f}  F1 {v['f1']:.3f}  AUPRC {v['auprc']:.3f}"
    )
    say(
        f"{s['epochs']} epochs (best {s['best_epoch']}) in {s['seconds']:.0f} s; "
        f"wrote {out} (model_version {version}); calibrate it next"
    )


@cli.command(context_settings=CONTEXT)
@click.option(
    "--checkpoint",
    "ckpt_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Checkpoint to calibrate.",
)
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Held-out labelled recording.")
@click.option(
    "--method",
    type=click.Choice(["platt", "isotonic", "temperature"]),
    required=True,
    help="Calibrator to fit.",
)
@click.option(
    "--threshold",
    "rule",
    default="max-f1",
    show_default=True,
    help="Threshold rule: a number (0.5), max-f1, precision:P or far:R (false-alarm rate).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Calibrated checkpoint to write.")
@config_option
def calibrate(ckpt_path: Path, data: Path, method: str, rule: str, out: Path, config: Path | None) -> None:
    """Fit a calibrator and a threshold rule on held-out labelled data into a new checkpoint."""
    from detector import calibrate as calibration
    from detector import recordings
    from detector.model import checkpoint
    from detector.model.thresholds import parse_rule
    from detector.serve.model_check import build_scorer

    try:
        parse_rule(rule)
    except ValueError as err:
        raise ConfigError(f"--threshold: {err}") from None
    ckpt = checkpoint.load(ckpt_path)
    windows = recordings.load(data, shape=(ckpt.window_length, ckpt.n_features), need_labels=True)
    try:
        calibrated = calibration.calibrate(build_scorer(ckpt, read_settings(config).model), windows, method, rule)
    except ValueError as err:
        raise DataError(f"{data}: {err}") from None
    version = checkpoint.save(calibrated, out)
    say(f"{method} calibration on {len(windows)} windows; threshold {rule} = {calibrated.window.threshold:.4f}")
    say(f"wrote {out} (model_version {version})")


@cli.command(context_settings=CONTEXT)
@click.option("--checkpoint", "ckpt_path", type=click.Path(path_type=Path), required=True, help="Checkpoint to judge.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Labelled recording.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for metrics.json and plots.")
@config_option
def evaluate(ckpt_path: Path, data: Path, out: Path, config: Path | None) -> None:
    """Write metrics.json (precision, recall, F1, AUPRC, ECE, Brier) and PNG plots into a folder."""
    from detector import evaluation, recordings
    from detector.model import checkpoint
    from detector.serve.model_check import build_scorer

    ckpt = checkpoint.load(ckpt_path)
    windows = recordings.load(data, shape=(ckpt.window_length, ckpt.n_features), need_labels=True)
    try:
        metrics = evaluation.evaluate(build_scorer(ckpt, read_settings(config).model), windows, out)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    except OSError as err:
        raise DataError(f"{out}: cannot write ({err.strerror})") from None
    for level in ("window", "step"):
        if level in metrics:
            m = metrics[level]
            say(
                f"{level:6s} precision {m['precision']:.3f}  recall {m['recall']:.3f}  F1 {m['f1']:.3f}  "
                f"AUPRC {m['auprc']:.3f}  ECE {m['ece']:.3f}  Brier {m['brier']:.3f}"
            )
    say(f"wrote {out / 'metrics.json'} and plots: {', '.join(metrics['plots'].values())}")


@cli.command(context_settings=CONTEXT)
@click.argument("ckpt_path", metavar="CHECKPOINT", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (stable keys, see the README) instead.")
def inspect(ckpt_path: Path, as_json: bool) -> None:
    """Show what a checkpoint holds: model_version, format, window shape (T steps x F features, with their
    names), network, calibration and threshold of each head, training summary, file size.

    Is this model calibrated, which threshold does it flag at, which windows does it take? `detector
    inspect model.ckpt` answers before you serve it. The file is fully validated, as `serve` does, and
    never unpickled: a missing, truncated, corrupt or foreign file is one line on stderr and exit 2.
    """
    from detector.checkpoint_info import describe, render
    from detector.tools.clients import printable, printable_json

    info = describe(ckpt_path)
    if as_json:
        say(printable_json(json.dumps(info)))
        return
    for line in render(info):
        say(printable(line))
