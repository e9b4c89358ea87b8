"""A checkpoint is checked once, the same way, at start-up and at hot reload: limits and thresholds from the
header before anything is allocated, then a probe; any malformed file is one CheckpointError line."""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import structlog
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from detector.cli import main
from detector.errors import CheckpointError, CheckpointRejected
from detector.model import checkpoint
from detector.model.checkpoint import Checkpoint
from detector.model.context import LEGACY_SUMMARY_ROWS, SUMMARY_ROWS, UNKNOWN_RANGE, History
from detector.model.features import (
    LEGACY_NORMALISATION,
    LEVELS_NORMALISATION,
    NORMALISATION,
    distance_channels,
    input_channels,
    prepare,
    robust_channels,
)
from detector.model.train import train
from detector.serve.metrics import PrometheusObserver
from detector.serve.model_check import validated_scorer
from detector.serve.reload import CheckpointWatcher, ReloadOutcome
from detector.settings import ModelSettings
from tests.conftest import tiny_config

WARN = ModelSettings(device="cpu", uncalibrated="warn")  # the models here come straight from training
REFUSE = ModelSettings(device="cpu")

Meta = dict[str, Any]
State = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def good(small_data) -> bytes:
    """A small trained checkpoint with window and step heads, as file bytes."""
    ckpt = train(small_data, tiny_config(seed=0)).checkpoint
    assert ckpt.step is not None
    return checkpoint.to_bytes(ckpt)


@pytest.fixture(scope="module")
def narrow(small_data) -> bytes:
    """A small trained checkpoint of a narrow model (today's normalisation, every history summary)."""
    ckpt = train(small_data, tiny_config(seed=0, narrow_max_features=2)).checkpoint
    assert ckpt.stats.kind == NORMALISATION
    return checkpoint.to_bytes(ckpt)


def _parts(data: bytes) -> tuple[Meta, State]:
    (header_len,) = struct.unpack("<Q", data[:8])
    meta = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["detector"])
    return meta, load_tensors(data)


def rewrite(
    data: bytes, meta_edit: Callable[[Meta], None] | None = None, state_edit: Callable[[State], None] | None = None
) -> bytes:
    """The checkpoint with its metadata and/or tensors edited, written as safetensors again."""
    meta, state = _parts(data)
    if meta_edit is not None:
        meta_edit(meta)
    if state_edit is not None:
        state_edit(state)
    return save_tensors(state, metadata={"detector": json.dumps(meta)})


def _set(*path_and_value: Any) -> Callable[[Meta], None]:
    *path, value = path_and_value

    def edit(meta: Meta) -> None:
        target = meta
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _nan_weights(state: State) -> None:
    for name in state:
        if not name.startswith(checkpoint.HISTORY):
            state[name] = torch.full_like(state[name], float("nan"))


def _narrow_hidden_weights(state: State) -> None:
    state["lstm.weight_hh_l0"] = state["lstm.weight_hh_l0"][:, :-1].contiguous()


def _deep_metadata(data: bytes) -> bytes:
    _, state = _parts(data)
    return save_tensors(state, metadata={"detector": "[" * 100_000 + "]" * 100_000})


def _deep_header(data: bytes) -> bytes:
    header = b'{"__metadata__":{"detector":"{}"},"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return struct.pack("<Q", len(header)) + header


def _huge_header(data: bytes) -> bytes:
    (header_len,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + header_len] + b" " * (checkpoint.MAX_HEADER_BYTES + 1)
    return struct.pack("<Q", len(header)) + header + data[8 + header_len :]


UNKNOWN_NORMALISATION = _set("normalisation", "kind", "robust-v9")
LIST_NORMALISATION = _set("normalisation", "kind", ["x"] * 999)
HUGE_ARCHITECTURE = _set("architecture", {"hidden_size": 4096, "num_layers": 8, "bidirectional": True})

# name -> (how to make the bad file from a good one, the stage that refuses it, words its reason holds)
BAD: dict[str, tuple[Callable[[bytes], bytes], str, str]] = {
    "nan-weights": (lambda d: rewrite(d, state_edit=_nan_weights), "probe", "non-finite"),
    "nan-threshold": (lambda d: rewrite(d, _set("heads", "window", "threshold", math.nan)), "load", "threshold"),
    "inf-step-threshold": (lambda d: rewrite(d, _set("heads", "step", "threshold", math.inf)), "load", "threshold"),
    "negative-threshold": (lambda d: rewrite(d, _set("heads", "window", "threshold", -0.1)), "load", "threshold"),
    "step-threshold-above-1": (lambda d: rewrite(d, _set("heads", "step", "threshold", 1.5)), "load", "threshold"),
    "huge-architecture": (lambda d: rewrite(d, HUGE_ARCHITECTURE), "load", "parameters"),
    "shape-mismatch": (lambda d: rewrite(d, state_edit=_narrow_hidden_weights), "load", "lstm.weight_hh_l0"),
    "deep-metadata": (_deep_metadata, "load", "nested too deeply"),
    "deep-header": (_deep_header, "load", "nested too deeply"),
    "huge-header": (_huge_header, "load", "header of"),
    "truncated": (lambda d: d[: len(d) * 2 // 3], "load", "corrupt detector checkpoint"),
    "unknown-normalisation": (lambda d: rewrite(d, UNKNOWN_NORMALISATION), "load", "normalisation"),
    "normalisation-not-a-name": (lambda d: rewrite(d, LIST_NORMALISATION), "load", "normalisation"),
}


def test_a_good_checkpoint_passes_the_check(good):
    """The check returns a scorer for a sound file, with its threshold as stored."""
    scorer = validated_scorer(good, "good.ckpt", WARN, expected_shape=(16, 2))
    assert scorer.shape == (16, 2)
    assert scorer.version == checkpoint.content_version(good)


@pytest.mark.parametrize(
    ("head", "threshold"),
    [
        *[("window", t) for t in (math.nan, math.inf, -math.inf, -0.1, 1.5, "0.5")],
        *[("step", t) for t in (math.nan, math.inf, -1e-9, 2.0)],
    ],
)
def test_a_threshold_that_is_not_a_probability_is_refused(good, head, threshold):
    """A window or step head threshold that is non-finite, negative, above 1 or not a number fails the load."""
    data = rewrite(good, _set("heads", head, "threshold", threshold))
    with pytest.raises(CheckpointError, match=f"{head} head threshold") as err:
        checkpoint.from_bytes(data, "t.ckpt")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("threshold", [0.0, 1.0, checkpoint.THRESHOLD_MAX])
def test_thresholds_from_0_to_the_flag_nothing_value_load(good, threshold):
    """0, 1 and the just-above-1 value a threshold rule gives to flag nothing are all accepted, on both heads."""
    data = rewrite(good, lambda m: [_set("heads", h, "threshold", threshold)(m) for h in ("window", "step")])
    ckpt = checkpoint.from_bytes(data)
    assert ckpt.window.threshold == ckpt.step.threshold == threshold


@pytest.fixture
def no_real_network(monkeypatch) -> None:
    """Fail the test if a network is built anywhere but on the meta device (where nothing is allocated)."""
    real = checkpoint.DetectorNet

    class MetaOnly(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if torch.get_default_device().type != "meta":
                raise AssertionError("a network was built with real storage")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "DetectorNet", MetaOnly)


def test_a_huge_architecture_is_refused_before_anything_is_allocated(good, no_real_network):
    """Metadata claiming 8 layers of 4096 units (~3 billion parameters, ~12 GB) in a small file is refused
    from the header, naming the parameter limit, with no network built."""
    data = rewrite(good, HUGE_ARCHITECTURE)
    assert len(data) < 100_000
    with pytest.raises(CheckpointError, match="parameters, the limit is 25,000,000"):
        checkpoint.from_bytes(data, "huge.ckpt")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (_narrow_hidden_weights, "'lstm.weight_hh_l0' of shape [32, 7], the architecture needs [32, 8]"),
        (lambda s: s.pop("step_head.bias"), "lack 'step_head.bias'"),
        (lambda s: s.update(extra=torch.zeros(3)), "hold 'extra'"),
    ],
    ids=["wrong-shape", "missing", "extra"],
)
def test_weights_that_do_not_fit_the_architecture_are_refused_before_a_network_is_built(
    good, no_real_network, edit, words
):
    """The header's tensor names and shapes are compared with the architecture's before any network exists."""
    with pytest.raises(CheckpointError, match="corrupt detector checkpoint") as err:
        checkpoint.from_bytes(rewrite(good, state_edit=edit), "w.ckpt")
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (_set("window_length", checkpoint.MAX_WINDOW_LENGTH + 1), "window_length 4097"),
        (_set("window_length", 1e400), "window_length inf"),
        (_set("window_length", "16"), "window_length '16'"),
        (_set("features", [f"f{i}" for i in range(checkpoint.MAX_FEATURES + 1)]), "feature count 257"),
        (_set("features", []), "feature count 0"),
        (_set("normalisation", "std", [0.0] * input_channels(2)), "std holds a value <= 0"),
        (_set("normalisation", "mean", [math.nan] * input_channels(2)), "mean holds a value that is not a finite"),
        (_set("heads", "window", {"calibration": [], "threshold": 0.5, "rule": "0.5"}), "window head"),
        (_set("heads", []), "corrupt"),
    ],
)
def test_metadata_out_of_bounds_or_of_the_wrong_type_is_one_checkpoint_error(good, no_real_network, edit, words):
    """Window length, feature count, normalisation and heads are bounded and typed, checked from the header."""
    with pytest.raises(CheckpointError) as err:
        checkpoint.from_bytes(rewrite(good, edit), "m.ckpt")
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_windows_beyond_the_value_limit_are_refused(good, no_real_network):
    """window_length x features above MAX_WINDOW_VALUES is refused even when each is within its own limit."""
    n = checkpoint.MAX_WINDOW_VALUES // checkpoint.MAX_WINDOW_LENGTH + 1
    edit = _set("features", [f"f{i}" for i in range(n)])
    data = rewrite(good, lambda m: (edit(m), _set("window_length", checkpoint.MAX_WINDOW_LENGTH)(m)))
    with pytest.raises(CheckpointError, match="the limit is 65,536 values"):
        checkpoint.from_bytes(data)


@pytest.mark.parametrize("kind", ["deep-metadata", "deep-header", "huge-header", "truncated"])
def test_malformed_files_are_one_checkpoint_error_line(good, kind):
    """Deeply nested JSON, an oversized header and a truncated file each raise one CheckpointError line."""
    make, _, words = BAD[kind]
    with pytest.raises(CheckpointError) as err:
        checkpoint.from_bytes(make(good), "bad.ckpt")
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def _guard_memory(kind: str, request: pytest.FixtureRequest) -> None:
    """For the huge architecture, a regression fails at once instead of allocating ~12 GB."""
    if kind == "huge-architecture":
        request.getfixturevalue("no_real_network")


@pytest.fixture
def cli_env(monkeypatch):
    """A clean DETECTOR_* environment; logging and the switch interval restored after the daemon ran."""
    for name in [n for n in os.environ if n.startswith("DETECTOR_")]:
        monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level, interval = root.handlers[:], root.level, sys.getswitchinterval()
    yield monkeypatch
    root.handlers, root.level = handlers, level
    sys.setswitchinterval(interval)
    structlog.reset_defaults()


@pytest.mark.parametrize("kind", list(BAD))
def test_serve_refuses_a_bad_checkpoint_with_exit_2_and_one_line_before_any_broker(
    good, kind, tmp_path, cli_env, capsys, request
):
    """`detector serve` with a bad checkpoint exits 2 with one `detector:` line naming the file, and never
    connects to a broker."""
    make, _, words = BAD[kind]
    _guard_memory(kind, request)
    path = tmp_path / "bad.ckpt"
    path.write_bytes(make(good))
    connects: list[object] = []
    cli_env.setattr("detector.serve.daemon.connect", lambda *a, **k: connects.append(a))
    cli_env.setenv("DETECTOR_MODEL__CHECKPOINT", str(path))
    cli_env.setenv("DETECTOR_MODEL__DEVICE", "cpu")
    cli_env.setenv("DETECTOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    cli_env.setenv("DETECTOR_HTTP__PORT", "0")
    cli_env.setattr(torch, "set_num_threads", lambda n: None)  # process-wide otherwise
    assert main(["serve"]) == 2
    assert connects == []
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("detector")]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"detector: {path}")
    assert words in lines[0]


@pytest.mark.parametrize("kind", list(BAD))
def test_reload_rejects_a_bad_checkpoint_and_the_old_model_stays(good, kind, tmp_path, request):
    """On reload the same file is rejected at the same stage, counted once as rejected, and never taken."""
    make, stage, words = BAD[kind]
    _guard_memory(kind, request)
    path = tmp_path / "model.ckpt"
    path.write_bytes(good)
    serving = checkpoint.content_version(good)
    metrics = PrometheusObserver()
    outcomes: list[ReloadOutcome] = []

    def on_result(outcome: ReloadOutcome) -> None:
        outcomes.append(outcome)
        metrics.reloaded(outcome.result)

    watcher = CheckpointWatcher(path, 0.05, (16, 2), REFUSE, on_result, serving_version=serving)
    path.write_bytes(make(good))
    outcome = watcher.poll_once()
    assert outcome is not None
    assert (outcome.accepted, outcome.stage) == (False, stage)
    assert words in (outcome.reason or "")
    assert outcomes == [outcome]
    assert metrics.registry.get_sample_value("detector_reloads_total", {"result": "rejected"}) == 1
    assert watcher.take() is None
    assert watcher.serving_version == serving


def test_a_checkpoint_of_another_shape_is_refused_only_where_a_shape_is_expected(good):
    """Without an expected shape (start-up) any bounded shape serves; on reload a different one is refused."""
    data = rewrite(good, lambda m: m.update(window_length=32))
    assert validated_scorer(data, "m.ckpt", WARN).shape == (32, 2)
    with pytest.raises(CheckpointRejected, match="32 steps x 2 features") as err:
        validated_scorer(data, "m.ckpt", REFUSE, expected_shape=(16, 2))
    assert err.value.stage == "shape"


def test_a_sound_file_loads_back_to_the_same_bytes(good):
    """A file within every limit loads, and writing it again gives the same bytes."""
    ckpt = checkpoint.from_bytes(good)
    assert isinstance(ckpt, Checkpoint)
    assert checkpoint.to_bytes(ckpt) == good


def test_an_architecture_without_the_distance_anchor_or_step_hold_loads_without_them(good):
    """Checkpoints written before train.network.distance_anchor and step_hold existed were trained without
    them: they load with a slope of 0 and no hold, not the settings' defaults, and score as they did."""

    def drop(meta: Meta) -> None:
        for key in ("distance_anchor", "anchor_floor", "narrow_max_features", "step_hold", "narrow_step_hold"):
            meta["architecture"].pop(key)

    old = checkpoint.from_bytes(rewrite(good, drop))
    assert (old.network.distance_anchor, old.network.step_hold, old.network.narrow_max_features) == (0.0, 1, 1)
    assert old.network.narrow_step_hold == 1
    assert old.network.anchor_floor is False
    assert (old.build().anchor, old.build().hold) == (0.0, 1)


def test_an_architecture_with_distance_anchor_max_features_reads_it_as_narrow_max_features(good):
    """Between the distance anchor and the step hold, checkpoints named the feature rule
    distance_anchor_max_features (and `train` stored slope 0 in wider models itself)."""

    def rename(meta: Meta) -> None:
        arch = meta["architecture"]
        arch.pop("step_hold")
        arch.pop("anchor_floor")
        arch["distance_anchor_max_features"] = arch.pop("narrow_max_features") + 2

    old = checkpoint.from_bytes(rewrite(good, rename))
    assert (old.network.narrow_max_features, old.network.step_hold, old.network.anchor_floor) == (3, 1, False)


def _written_as(data: bytes, kind: str) -> bytes:
    """``data`` as a checkpoint of normalisation ``kind`` is written (its history as that kind keeps it)."""
    ckpt = checkpoint.from_bytes(data)
    return checkpoint.to_bytes(replace(ckpt, stats=replace(ckpt.stats, kind=kind)))


@pytest.mark.parametrize("kind", [LEGACY_NORMALISATION, LEVELS_NORMALISATION])
def test_a_checkpoint_of_an_earlier_normalisation_loads_and_measures_distance_as_it_was_trained(narrow, kind):
    """Checkpoints from before the range (v3, as wide models are still trained) or the recent context (v2)
    hold 3 summaries per history block; they load, keep their normalisation and history layout when written
    again, and get each step's distance as they were trained: v2 from the long-run context alone, v3 from
    the nearer level with no range. Today's narrow models add how far a step goes beyond the series'
    range."""
    good = narrow
    old_bytes = _written_as(good, kind)
    _, tensors = _parts(old_bytes)
    assert tensors["history.blocks"].shape[2] == LEGACY_SUMMARY_ROWS
    old, new = checkpoint.from_bytes(old_bytes), checkpoint.from_bytes(good)
    assert (old.stats.kind, new.stats.kind) == (kind, NORMALISATION)
    again = checkpoint.to_bytes(old)
    assert checkpoint.from_bytes(again).stats.kind == kind
    assert _parts(again)[1]["history.blocks"].shape[2] == LEGACY_SUMMARY_ROWS
    blocks = old.history.blocks  # in memory: the range of an old block is unknown
    assert blocks.shape[2] == SUMMARY_ROWS
    torch.testing.assert_close(torch.from_numpy(blocks[:, :, :3]), torch.from_numpy(new.history.blocks[:, :, :3]))
    assert (blocks[:, :, 3] == UNKNOWN_RANGE).all()
    assert (blocks[:, :, 4] == -UNKNOWN_RANGE).all()
    # so that a series whose history holds such a block gets no range term, even from a v4 model, for any row
    window = np.full((1, 16, old.n_features), np.finfo(np.float32).max, dtype=np.float32)
    window[0, :8] = -np.finfo(np.float32).max
    held = History(1 << 30)
    held.seed(old.history)
    series = old.history.series[-1]
    context = torch.from_numpy(held.observe(series, window[0], None, None)[None])
    ranged = robust_channels(torch.from_numpy(window), context, NORMALISATION)[
        0, :, distance_channels(input_channels(old.n_features))
    ]
    levels = robust_channels(torch.from_numpy(window), context, LEVELS_NORMALISATION)[
        0, :, distance_channels(input_channels(old.n_features))
    ]
    torch.testing.assert_close(ranged, levels)
    f = old.n_features
    x = torch.zeros(1, 16, f, dtype=torch.float64)
    x[0, -1] = 10.0  # far from the long-run level (0), at the recent one (10), 8 beyond the range [-2, 2]
    parts = {"loc": 0.0, "scale": 1.0, "recent_loc": 10.0, "recent_scale": 1.0, "highest": 2.0, "lowest": -2.0}
    context = torch.tensor([[v for v in parts.values() for _ in range(f)] + [4.0] * f + [1.0]], dtype=torch.float64)
    distance = distance_channels(input_channels(f))
    expected = {
        LEGACY_NORMALISATION: math.asinh(10.0),
        LEVELS_NORMALISATION: 0.0,
        NORMALISATION: math.asinh(8.0 / 4.0),
    }
    for name, want in expected.items():
        got = robust_channels(x, context, name)[0, -1, distance]
        torch.testing.assert_close(got, torch.full((f,), want, dtype=torch.float32))
    old_inputs = prepare(x, context, old.stats)  # made the way the checkpoint's statistics were measured
    torch.testing.assert_close(old_inputs, old.stats.apply(robust_channels(x, context, kind)))
    assert not torch.equal(old_inputs, old.stats.apply(robust_channels(x, context, NORMALISATION)))


def test_narrow_models_are_trained_to_measure_the_range_and_wide_ones_are_not(good, narrow):
    """The normalisation follows the model's width: a narrow model's distance counts how far a step goes
    beyond its series' range (v4, every history summary kept), a wide one's does not (v3, three kept)."""
    for data, kind, rows in ((narrow, NORMALISATION, SUMMARY_ROWS), (good, LEVELS_NORMALISATION, LEGACY_SUMMARY_ROWS)):
        assert checkpoint.from_bytes(data).stats.kind == kind
        assert _parts(data)[1]["history.blocks"].shape[2] == rows


def test_a_history_laid_out_for_another_normalisation_is_refused(narrow):
    """A file whose history blocks hold another number of summaries than its normalisation keeps is corrupt
    (one line), whichever way round."""
    wide = _written_as(narrow, LEVELS_NORMALISATION)
    for data, kind in ((narrow, LEVELS_NORMALISATION), (wide, NORMALISATION)):
        relabelled = rewrite(data, _set("normalisation", "kind", kind))
        with pytest.raises(CheckpointError, match=r"history tensor history\.blocks is not F64 of shape"):
            checkpoint.from_bytes(relabelled)


def test_inputs_are_made_only_under_a_known_normalisation_and_context_width():
    """Code that makes inputs itself gets a ValueError for a normalisation or a context width it does not
    know, never inputs made some other way."""
    x = torch.zeros(2, 16, 3, dtype=torch.float64)
    context = torch.ones(2, 22, dtype=torch.float64)  # 7 x 3 + 1
    assert robust_channels(x, context, NORMALISATION).shape == (2, 16, input_channels(3))
    with pytest.raises(ValueError, match="normalisation"):
        robust_channels(x, context, "window-robust-diff-history-v9")
    with pytest.raises(ValueError, match="width 7 for 3 features"):
        robust_channels(x, context[:, :7], NORMALISATION)
