"""`detector inspect`: a checkpoint's metadata for people and, with --json, for scripts; any file that is not a
sound checkpoint is one line on stderr and exit 2, and nothing in it is ever unpickled."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_tensors

from detector.cli import main
from detector.demo.model import bundled_path
from detector.model import checkpoint
from detector.model.features import LEGACY_NORMALISATION, LEVELS_NORMALISATION
from detector.model.train import train
from tests.conftest import tiny_config

DEMO = bundled_path()
KEYS = {
    "path",
    "file_bytes",
    "model_version",
    "format",
    "format_version",
    "normalisation",
    "window_length",
    "n_features",
    "features",
    "architecture",
    "step_scoring",
    "parameters",
    "heads",
    "calibrated",
    "training",
    "history_series",
}


def inspect(capsys, *args: object) -> tuple[int, str, str]:
    code = main(["inspect", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def raw_model(small_data, tmp_path_factory) -> Path:
    """A tiny checkpoint as `detector train` writes it: uncalibrated."""
    path = tmp_path_factory.mktemp("inspect") / "raw.ckpt"
    checkpoint.save(train(small_data, tiny_config(seed=0)).checkpoint, path)
    return path


def test_the_bundled_demo_model_is_shown_for_a_person(capsys):
    """The text names the version, format, shape with feature names, network, each head's calibration,
    threshold and rule, the training summary and the file size."""
    code, out, err = inspect(capsys, DEMO)
    ckpt = checkpoint.load(DEMO)
    assert (code, err) == (0, "")
    assert ckpt.version in out
    assert f"detector-checkpoint version {checkpoint.FORMAT_VERSION}, inputs {LEGACY_NORMALISATION}" in out
    assert "T=64 steps x F=4 features: f0, f1, f2, f3" in out
    assert "bidirectional LSTM layer of 32 units, attention pooling" in out
    assert f"window head     calibration isotonic, threshold {ckpt.window.threshold:.4f} (rule max-f1)" in out
    assert ckpt.step is not None
    assert f"step head       calibration isotonic, threshold {ckpt.step.threshold:.4f} (rule max-f1)" in out
    assert f"({DEMO.stat().st_size:,} bytes)" in out
    assert "epochs 30" in out
    assert f"history         {len(ckpt.history):,} series start warm" in out
    assert f"f1 {ckpt.training['validation']['f1']:.4g}" in out
    assert "uncalibrated" not in out


def test_json_is_one_object_with_the_documented_keys(capsys):
    """--json prints exactly one JSON object whose keys are the documented set and whose values are the
    checkpoint's own."""
    code, out, err = inspect(capsys, DEMO, "--json")
    assert (code, err) == (0, "")
    assert len(out.strip().splitlines()) == 1
    info = json.loads(out)
    assert set(info) == KEYS
    ckpt = checkpoint.load(DEMO)
    assert info["model_version"] == ckpt.version
    assert (info["format"], info["format_version"]) == (checkpoint.FORMAT, checkpoint.FORMAT_VERSION)
    assert (info["window_length"], info["n_features"], info["features"]) == (64, 4, ["f0", "f1", "f2", "f3"])
    assert info["architecture"] == ckpt.network.model_dump(mode="json")
    assert info["parameters"] == sum(t.numel() for t in ckpt.state.values())
    assert info["step_scoring"] == {"distance_anchor": 0.0, "anchor_floor": False, "step_hold": 1}  # stored before
    assert info["normalisation"] == LEGACY_NORMALISATION  # trained before the recent context
    assert info["heads"]["window"] == {"calibration": "isotonic", "threshold": ckpt.window.threshold, "rule": "max-f1"}
    assert set(info["heads"]["step"]) == {"calibration", "threshold", "rule"}
    assert info["calibrated"] is True
    assert info["training"] == ckpt.training
    assert info["file_bytes"] == DEMO.stat().st_size


def test_an_uncalibrated_checkpoint_says_so(raw_model, capsys):
    """A checkpoint straight from training shows calibration `none` and tells the reader to calibrate it;
    --json has calibrated false."""
    code, out, _ = inspect(capsys, raw_model)
    assert code == 0
    assert "window head     calibration none, threshold 0.5000 (rule 0.5)" in out
    assert "run `detector calibrate`" in out
    wide = "steps           distance anchor 0, held over 64 steps (a wide model: 2 features, narrow_max_features 1)"
    assert wide in out
    code, out, _ = inspect(capsys, raw_model, "--json")
    info = json.loads(out)
    assert info["calibrated"] is False
    assert info["normalisation"] == LEVELS_NORMALISATION  # a wide model's distance has no range term
    assert info["heads"]["window"]["calibration"] == "none"


def test_text_from_the_file_cannot_drive_the_terminal(raw_model, tmp_path, capsys):
    """Control characters in feature names are printed as escapes; --json stays valid JSON that gives the
    names back as stored."""
    hostile = ("\x1b[2Jcpu", "mem\u202e")
    ckpt = checkpoint.load(raw_model)
    path = tmp_path / "hostile.ckpt"
    checkpoint.save(replace(ckpt, feature_names=hostile), path)
    code, out, _ = inspect(capsys, path)
    assert code == 0
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert "\\x1b[2Jcpu" in out
    code, out, _ = inspect(capsys, path, "--json")
    assert "\x1b" not in out
    assert json.loads(out)["features"] == list(hostile)


class _Touch:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


BAD_FILES: dict[str, Callable[[bytes, Path], bytes]] = {
    "empty": lambda good, _: b"",
    "truncated": lambda good, _: good[: len(good) // 2],
    "header only": lambda good, _: good[:8],
    "random bytes": lambda good, _: bytes(range(256)) * 8,
    "foreign safetensors": lambda good, _: save_tensors({"w": torch.zeros(2)}, metadata={"other": "x"}),
    "pickle": lambda good, marker: pickle.dumps(_Touch(marker)),
    "torch.save file": lambda good, marker: _torch_save({"x": _Touch(marker)}, marker),
}


def _torch_save(obj: object, marker: Path) -> bytes:
    path = marker.with_name("torch.pt")
    torch.save(obj, path)
    return path.read_bytes()


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_file_that_is_not_a_sound_checkpoint_is_one_line_and_exit_2(kind, tmp_path, capsys):
    """Corrupt, truncated, foreign or pickled files exit 2 with one `detector:` line naming the file and
    nothing on stdout; a pickle in them is never run."""
    marker = tmp_path / "unpickled"
    path = tmp_path / "bad.ckpt"
    path.write_bytes(BAD_FILES[kind](DEMO.read_bytes(), marker))
    for args in ((path,), (path, "--json")):
        code, out, err = inspect(capsys, *args)
        assert (code, out) == (2, "")
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"detector: {path}: ")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["missing file", "missing folder", "a folder"])
def test_a_path_that_is_not_a_readable_file_is_one_line_and_exit_2(where, tmp_path, capsys):
    """A missing file, a file in a missing folder, or a folder: one line naming the path, exit 2."""
    path = {"missing file": tmp_path / "nope.ckpt", "missing folder": tmp_path / "no" / "x.ckpt", "a folder": tmp_path}
    code, out, err = inspect(capsys, path[where])
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"detector: {path[where]}: ")


def test_help_explains_the_command_to_a_newcomer(capsys):
    """--help names the argument, what is shown, --json and what happens with a bad file."""
    code, out, _ = inspect(capsys, "--help")
    assert code == 0
    assert "Usage: detector inspect [OPTIONS] CHECKPOINT" in out
    for words in ("model_version", "calibration", "threshold", "--json", "never unpickled", "exit 2"):
        assert words in out, words


def test_the_readme_documents_every_json_key():
    """The README's table of `inspect --json` keys names exactly the keys printed."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Inspect a checkpoint", 1)[1].split("\n#", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    assert {key for row in rows for key in re.findall(r"`(\w+)`", row)} == KEYS


def test_a_narrow_model_shows_its_floored_distance_anchor(small_data, tmp_path, capsys):
    """How steps score is shown resolved for the model's feature count: a narrow model has the floored
    prior and the narrow hold, in the text and in --json."""
    path = tmp_path / "narrow.ckpt"
    checkpoint.save(train(small_data, tiny_config(seed=0, narrow_max_features=2)).checkpoint, path)
    code, out, _ = inspect(capsys, path)
    assert code == 0
    assert (
        "steps           distance anchor 6 (floored), held over 2 steps (a narrow model: 2 features, "
        "narrow_max_features 2)" in out
    )
    code, out, _ = inspect(capsys, path, "--json")
    assert json.loads(out)["step_scoring"] == {"distance_anchor": 6.0, "anchor_floor": True, "step_hold": 2}
