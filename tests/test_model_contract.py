"""Contract tests over every model variant and calibrator (River's checks/ habit)."""

from __future__ import annotations

import itertools
import json
import math
import struct
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_tensors

from detector.codec import Window
from detector.errors import CheckpointError
from detector.model import calibration, checkpoint
from detector.model.checkpoint import UNCALIBRATED, Head
from detector.model.context import ContextParts, join_context
from detector.model.network import BinaryActivation
from detector.model.thresholds import choose_threshold, parse_rule
from detector.scoring import Scorer, cpu_has_bf16, effective_precision, resolve_device

VARIANTS = {
    "last": {"pooling": "last"},
    "mean": {"pooling": "mean"},
    "max": {"pooling": "max"},
    "attention": {"pooling": "attention"},
    "window-only": {"pooling": "attention", "step_head": False},
    "step-only": {"window_head": False},
    "bidirectional-2-layers": {"bidirectional": True, "num_layers": 2, "pooling": "last"},
    "binary-bottleneck": {"binary_bottleneck": 6},
    "event-head": {"event_head": True},
    "narrow": {"narrow_max_features": 2},  # distance anchor, narrow hold: the small recording has 2 features
}
CALIBRATORS = ["none", "platt", "isotonic", "temperature"]


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, small_data):
    """A tiny trained checkpoint of each variant, calibrated each way, saved and loaded back."""
    from detector.model.train import train
    from tests.conftest import tiny_config

    options = dict(VARIANTS[request.param])
    event_head = bool(options.pop("event_head", False))
    base = train(small_data, tiny_config(0, event_head, **options)).checkpoint
    # A model trained for a few batches need not rank the real labels (a binary bottleneck often does not),
    # and these tests are about mechanics, not quality: fit each calibrator on labels that follow the
    # model's own logits, with 10% flipped so that the fit stays finite.
    z = Scorer(base).logits(small_data.values)[0]
    assert len(np.unique(z)) > 1, "a degenerate model: every window gets the same logit"
    y = (z > np.median(z)).astype(int)
    flip = np.random.default_rng(0).random(len(y)) < 0.1
    y[flip] = 1 - y[flip]
    out = {"none": base}
    for method in CALIBRATORS[1:]:
        params = calibration.fit(method, z, y)
        threshold = choose_threshold(parse_rule("max-f1"), calibration.apply(params, z), y)
        out[method] = base.with_heads(Head(params, threshold, "max-f1"), base.step)
    return out


@pytest.mark.parametrize("method", CALIBRATORS)
def test_round_trip_gives_identical_scores(variant, method, small_data, tmp_path):
    """A checkpoint saved and loaded scores exactly as the one in memory, and keeps its heads."""
    ckpt = variant[method]
    path = tmp_path / "m.ckpt"
    version = checkpoint.save(ckpt, path)
    loaded = checkpoint.load(path)
    assert loaded.version == version
    assert loaded.network == ckpt.network
    assert loaded.window == ckpt.window
    a = Scorer(ckpt).score(small_data.values)
    b = Scorer(loaded).score(small_data.values)
    np.testing.assert_array_equal(a.probability, b.probability)
    np.testing.assert_array_equal(a.flag, b.flag)
    if a.step_probability is not None:
        np.testing.assert_array_equal(a.step_probability, b.step_probability)


@pytest.mark.parametrize("method", CALIBRATORS)
def test_probabilities_in_unit_interval(variant, method, small_data):
    """Window and step probabilities lie in [0, 1], also for extreme inputs."""
    scorer = Scorer(variant[method])
    extreme = small_data.values[:8] * np.float32(1e6) + np.float32(3e7)
    for values in (small_data.values, extreme):
        s = scorer.score(values)
        assert np.all((s.probability >= 0) & (s.probability <= 1))
        if s.step_probability is not None:
            assert np.all((s.step_probability >= 0) & (s.step_probability <= 1))


@pytest.mark.parametrize("method", CALIBRATORS)
def test_calibration_is_monotone(variant, method):
    """Calibrated probability never decreases as the raw logit grows."""
    z = np.linspace(-40, 40, 2001)
    p = calibration.apply(variant[method].window.calibration, z)
    assert np.all(np.diff(p) >= 0)


def test_scores_do_not_depend_on_batch_size(variant, small_data):
    """Scoring windows one at a time, in odd chunks or all at once agrees within 1e-5."""
    scorer = Scorer(variant["isotonic"])
    whole = scorer.score(small_data.values)
    ones = np.concatenate([scorer.score(small_data.values[i : i + 1]).probability for i in range(12)])
    np.testing.assert_allclose(ones, whole.probability[:12], atol=1e-5)
    chunks = [scorer.logits(small_data.values[i : i + 7])[0] for i in range(0, len(small_data), 7)]
    np.testing.assert_allclose(np.concatenate(chunks), whole.window_logit, atol=1e-5)


def test_the_compiled_cpu_graph_agrees_with_the_eager_network(variant, small_data):
    """Every variant runs on the CPU as one frozen TorchScript graph, scoring as the eager network does."""
    compiled = Scorer(variant["isotonic"])
    eager = Scorer(variant["isotonic"])
    eager.compiled = None
    assert compiled.compiled is not None
    a, b = compiled.score(small_data.values), eager.score(small_data.values)
    for field in ("window_logit", "probability", "step_logit", "event_probability"):
        if getattr(b, field) is None:
            assert getattr(a, field) is None
        else:
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=1e-5)
    clear = np.abs(b.probability - compiled.checkpoint.window.threshold) > 1e-5  # not on the threshold itself
    np.testing.assert_array_equal(a.flag[clear], b.flag[clear])


def test_a_new_scorer_is_warm_before_its_first_batch(variant):
    """Building a scorer runs the graph until TorchScript has its optimised plan, so the thread that builds
    it (the reload watcher's) pays the ~50 ms of profiling and optimisation, not the serving loop's first
    batch after a swap. Without those calls the executor holds no optimised plan yet."""
    scorer = Scorer(variant["isotonic"])
    assert scorer.compiled is not None
    assert len(scorer.compiled.get_debug_state().execution_plans) == 1


def test_chunked_and_pooled_scoring_agree_with_one_pass(variant, small_data):
    """A batch scored in small chunks, on a thread pool or not, agrees with one forward pass within 1e-5."""
    from concurrent.futures import ThreadPoolExecutor

    whole = Scorer(variant["isotonic"], chunk=len(small_data)).score(small_data.values)
    chunked = Scorer(variant["isotonic"], chunk=5)
    with ThreadPoolExecutor(3) as pool:
        for scores in (chunked.score(small_data.values), chunked.score(small_data.values, pool=pool)):
            np.testing.assert_allclose(scores.window_logit, whole.window_logit, atol=1e-5)
            np.testing.assert_allclose(scores.probability, whole.probability, atol=1e-5)
            if whole.step_logit is not None:
                np.testing.assert_allclose(scores.step_logit, whole.step_logit, atol=1e-5)
            if whole.event_probability is not None:
                np.testing.assert_allclose(scores.event_probability, whole.event_probability, atol=1e-5)


def test_training_is_deterministic_under_a_seed(fit_tiny):
    """The same seed gives byte-identical checkpoints; another seed gives another model."""
    a, b, c = fit_tiny(seed=3), fit_tiny(seed=3), fit_tiny(seed=4)
    assert checkpoint.to_bytes(a) == checkpoint.to_bytes(b)
    assert checkpoint.to_bytes(a) != checkpoint.to_bytes(c)


def test_checkpoint_rebuilds_without_outside_config(fit_tiny, tmp_path):
    """Everything the model needs (architecture, shape, normalisation, heads) is in the file."""
    ckpt = fit_tiny(pooling="attention", hidden_size=12)
    path = tmp_path / "m.ckpt"
    checkpoint.save(ckpt, path)
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    meta = json.loads(json.loads(path.read_bytes()[8 : 8 + header_len])["__metadata__"]["detector"])
    assert meta["architecture"]["pooling"] == "attention"
    assert meta["architecture"]["hidden_size"] == 12
    assert meta["window_length"] == 16
    assert len(meta["features"]) == 2
    assert set(meta["normalisation"]) == {"kind", "mean", "std"}
    assert meta["format_version"] == checkpoint.FORMAT_VERSION
    assert checkpoint.load(path).build().config.hidden_size == 12


def _corruptions(good: bytes, tmp_path) -> dict[str, bytes]:
    meta_foreign = save_tensors({"w": torch.zeros(2)}, metadata={"framework": "other"})
    wrong_version = good.replace(
        f'\\"format_version\\":{checkpoint.FORMAT_VERSION}'.encode(), b'\\"format_version\\":99'
    )
    assert wrong_version != good
    pickled = tmp_path / "pickle.pt"
    torch.save({"state": torch.zeros(2)}, pickled)
    rng = np.random.default_rng(0)
    return {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "truncated-header": good[:20],
        "random": rng.bytes(4096),
        "foreign-safetensors": meta_foreign,
        "wrong-version": wrong_version,
        "pickle": pickled.read_bytes(),
    }


@pytest.mark.parametrize(
    "kind",
    ["empty", "truncated", "truncated-header", "random", "foreign-safetensors", "wrong-version", "pickle"],
)
def test_corrupt_checkpoints_are_rejected(fit_tiny, tmp_path, kind):
    """A truncated, random, foreign, pickled or wrong-version file raises CheckpointError with one line."""
    good = checkpoint.to_bytes(fit_tiny())
    path = tmp_path / f"{kind}.ckpt"
    path.write_bytes(_corruptions(good, tmp_path)[kind])
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path)
    assert "\n" not in str(err.value)
    assert str(path) in str(err.value)


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    """A path with no file gives CheckpointError, not FileNotFoundError."""
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "absent.ckpt")


def test_save_is_atomic_and_leaves_no_temporary(fit_tiny, tmp_path):
    """save() replaces the target in one rename and leaves no temporary file behind."""
    path = tmp_path / "m.ckpt"
    path.write_bytes(b"old")
    checkpoint.save(fit_tiny(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]
    checkpoint.load(path)


def test_binary_activation_forward_and_straight_through_gradient():
    """Forward is hard 0/1; backward passes the gradient where |x| <= 1 and zero elsewhere."""
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], requires_grad=True)
    y = BinaryActivation()(x)
    assert y.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    y.backward(torch.full_like(x, 2.0))
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0]


def test_event_head_names_travel_in_the_checkpoint(variant, small_data):
    """With the event head on, records name an event type from the checkpoint's list."""
    ckpt = variant["none"]
    scorer = Scorer(ckpt)
    s = scorer.score(small_data.values[:4])
    if not ckpt.network.event_types:
        assert s.event_probability is None
        return
    assert s.event_probability is not None
    np.testing.assert_allclose(s.event_probability.sum(axis=1), 1.0, rtol=1e-5)


def test_auto_device_is_the_cpu_without_a_gpu():
    """device=auto selects the CPU when CUDA is absent; an explicit cuda device is an error then."""
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
        return
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA"):
        resolve_device("cuda")


def test_cuda_settings_fall_back_to_the_cpu_without_a_gpu(fit_tiny):
    """Without a GPU, device=auto scores on the CPU, in fp32 whatever the precision, with CPU-sized chunks."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    scorer = Scorer(fit_tiny(), device="auto", precision="fp16")
    assert scorer.device.type == "cpu"
    assert scorer.precision == "fp32"
    assert scorer.autocast_dtype is None
    assert scorer.chunk <= 1024
    probs = scorer.score(np.random.default_rng(0).normal(size=(3, 16, 2)).astype(np.float32)).probability
    assert np.isfinite(probs).all()
    assert ((probs >= 0) & (probs <= 1)).all()


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_cpu_bf16_on_a_cpu_that_has_it_scores_in_bf16_close_to_fp32(variant, small_data):
    """cpu_bf16 on a CPU with native bfloat16 runs the network in bf16 (compiled, and eager alike): the
    logits move, by little; the normalisation stays in float64/float32 and outputs come back float32."""
    fp32 = Scorer(variant["isotonic"])
    bf16 = Scorer(variant["isotonic"], cpu_bf16=True)
    assert bf16.precision == "bf16"
    assert bf16.compiled is not None
    eager = Scorer(variant["isotonic"], cpu_bf16=True)
    eager.compiled = None
    a, b, c = fp32.score(small_data.values), bf16.score(small_data.values), eager.score(small_data.values)
    assert b.window_logit.dtype == np.float32
    assert not np.array_equal(a.window_logit, b.window_logit)  # it did run in another precision
    np.testing.assert_allclose(c.window_logit, b.window_logit, atol=1e-5)
    np.testing.assert_allclose(b.window_logit, a.window_logit, atol=0.05, rtol=0.02)
    if a.step_logit is not None:
        np.testing.assert_allclose(b.step_logit, a.step_logit, atol=0.05, rtol=0.02)
    if a.event_probability is not None:
        np.testing.assert_allclose(b.event_probability, a.event_probability, atol=0.02)


@pytest.mark.parametrize("native", [True, False])
def test_the_cpu_stays_fp32_unless_cpu_bf16_and_the_cpu_has_it(monkeypatch, fit_tiny, small_data, native):
    """model.precision is CUDA's (the CPU stays fp32); cpu_bf16 alone opts the CPU in, and only
    where bfloat16 is native (emulated, it is slower than fp32)."""
    monkeypatch.setattr("detector.scoring.cpu_has_bf16", lambda: native)
    ckpt = fit_tiny()
    fp32 = Scorer(ckpt).score(small_data.values)
    for precision in ("bf16", "fp16"):
        scorer = Scorer(ckpt, precision=precision)
        assert scorer.precision == "fp32"
        assert scorer.autocast_dtype is None
        np.testing.assert_array_equal(scorer.score(small_data.values).window_logit, fp32.window_logit)
    assert Scorer(ckpt, cpu_bf16=True).precision == ("bf16" if native else "fp32")
    assert effective_precision(torch.device("cpu"), "bf16", cpu_bf16=True) == ("bf16" if native else "fp32")
    assert effective_precision(torch.device("cuda"), "bf16") == "bf16"  # autocast there, whatever the CPU


def test_the_distance_anchor_adds_its_slope_times_each_steps_largest_distance():
    """With the learnt step paths silenced, a narrow model's step logit is distance_anchor times the largest
    of its features' distance channels (where features.distance_channels says they are), plus what the
    network adds: its logit as is (0 here) without the floor, the floor (0) + softplus(0) with it; slope 0
    turns both off."""
    from detector.model.config import NetworkConfig
    from detector.model.features import input_channels
    from detector.model.network import DetectorNet

    x = torch.randn(3, 16, input_channels(4), generator=torch.Generator().manual_seed(0))
    distance = x[:, :, 16:20]  # 4 features x 5 channels: level, change, quiet, history, then distance
    for slope, floor, added in ((0.0, True, 0.0), (2.5, False, 0.0), (2.5, True, math.log(2.0))):
        config = NetworkConfig(
            hidden_size=4,
            distance_anchor=slope,
            anchor_floor=floor,
            step_skip=False,
            narrow_max_features=4,
            narrow_step_hold=1,
        )
        net = DetectorNet(config, x.shape[2]).eval()
        with torch.no_grad():
            net.step_head.weight.zero_()  # type: ignore[union-attr]
            net.step_head.bias.zero_()  # type: ignore[union-attr]
            step = net(x).step
        assert step is not None
        torch.testing.assert_close(step, slope * distance.amax(dim=2) + added)


@pytest.mark.parametrize("seed", range(5))
def test_the_network_can_raise_a_floored_step_above_the_distance_prior_but_never_lower_it(seed):
    """Whatever the weights, a floored narrow model's step logit is at least its floor plus the prior; with
    the floor off the same weights can take it below."""
    from detector.model.config import NetworkConfig
    from detector.model.features import input_channels
    from detector.model.network import DetectorNet

    x = 3 * torch.randn(8, 16, input_channels(1), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    config = NetworkConfig(hidden_size=4, distance_anchor=2.0)
    floored = DetectorNet(config, x.shape[2]).eval()
    plain = DetectorNet(config.model_copy(update={"anchor_floor": False}), x.shape[2]).eval()
    plain.load_state_dict({k: v for k, v in floored.state_dict().items() if k != "step_floor"})
    with torch.no_grad():
        floored.step_floor.fill_(-1.5)  # type: ignore[union-attr]
        floored.step_head.bias.fill_(-20.0)  # type: ignore[union-attr]  # a network that says "lower"
        plain.step_head.bias.fill_(-20.0)  # type: ignore[union-attr]
        prior = 2.0 * x[:, :, 4]  # one feature: its distance channel is the fifth
        assert bool((floored(x).step >= prior - 1.5 - 1e-5).all())  # type: ignore[operator]
        assert bool((plain(x).step < prior - 1.5).any())  # type: ignore[operator]


def _running_max(x: torch.Tensor, rows: int) -> torch.Tensor:
    """A plain reference for the step hold: step t takes the largest of steps max(0, t - rows + 1) .. t."""
    return torch.stack([x[:, max(0, t - rows + 1) : t + 1].amax(dim=1) for t in range(x.shape[1])], dim=1)


@pytest.mark.parametrize("rows", [1, 2, 5, 16, 64])
def test_a_wide_models_step_logit_is_the_largest_of_the_last_step_hold_steps(rows):
    """The same weights with and without the hold: held step logits are the running maximum of the unheld
    ones over step_hold steps (the whole window when step_hold exceeds it), and the window logit is not
    touched by it."""
    from detector.model.config import NetworkConfig
    from detector.model.features import input_channels
    from detector.model.network import DetectorNet

    x = torch.randn(3, 16, input_channels(4), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    held = DetectorNet(NetworkConfig(hidden_size=4, step_hold=rows), x.shape[2]).eval()
    plain = DetectorNet(NetworkConfig(hidden_size=4, step_hold=1), x.shape[2]).eval()
    plain.load_state_dict(held.state_dict())
    with torch.no_grad():
        out, ref = held(x), plain(x)
    assert out.step is not None
    assert ref.step is not None
    torch.testing.assert_close(out.step, _running_max(ref.step, rows))
    torch.testing.assert_close(out.window, ref.window)
    if rows >= x.shape[1]:
        torch.testing.assert_close(out.step[:, -1], ref.step.amax(dim=1))


def test_a_step_farther_from_its_series_history_scores_higher(fit_tiny, small_data):
    """The same window scored against histories whose location lies ever farther below it: a narrow
    model's last-step logit rises with the distance, by far more than a briefly trained network alone moves
    it (about 25 against at most ~2 without the anchor)."""
    # Unheld, so that the last step's logit is its own (the hold is tested on its own above).
    scorer = Scorer(fit_tiny(narrow_max_features=small_data.shape[1], narrow_step_hold=1))
    window = small_data.values[:1].astype(np.float32)
    f = window.shape[2]
    last = window[0, -1]
    logits = []
    for distance in (0.0, 3.0, 10.0, 30.0):
        level, one = (last - distance)[None].astype(np.float64), np.ones((1, f))
        # long-run and recent contexts alike, a range that is that one level, unit noise
        context = join_context(ContextParts(level, one, level, one, level, level, one, np.ones((1, 1))))
        logits.append(float(scorer.logits(window, context)[1][0, -1]))  # type: ignore[index]
    assert logits == sorted(logits), logits
    assert logits[-1] > logits[0] + 10, logits


def test_the_feature_count_decides_between_the_distance_anchor_and_the_step_hold(fit_tiny, small_data):
    """Up to narrow_max_features features a model scores with the slope and the narrow hold, beyond it with
    the (wide) hold and no slope; the checkpoint stores the settings, and what they resolve to follows from it alone
    (the model it builds, and the step targets that calibrate and evaluate compare with)."""
    f, t = small_data.shape[1], small_data.shape[0]
    assert f > 1
    wide = fit_tiny(step_hold=4, narrow_step_hold=3)
    narrow = fit_tiny(narrow_max_features=f, distance_anchor=2.5, step_hold=4, narrow_step_hold=2)
    assert (wide.build().anchor, wide.build().hold) == (0.0, 4)
    assert (narrow.build().anchor, narrow.build().hold) == (2.5, 2)
    restored = checkpoint.from_bytes(checkpoint.to_bytes(wide))
    assert (restored.build().anchor, restored.build().hold) == (0.0, 4)
    labels = np.zeros((2, t), np.int8)
    labels[0, 3] = 1
    labels[1, t - 1] = 1
    held = wide.step_targets(labels)
    expected = np.zeros_like(labels)
    expected[0, 3:7] = 1  # the event's step and the 3 after it
    expected[1, t - 1] = 1
    np.testing.assert_array_equal(held, expected)
    expected[0, 5:7] = 0  # held over 2 steps: the event's step and the one after it
    np.testing.assert_array_equal(narrow.step_targets(labels), expected)


def test_training_calibration_and_evaluation_compare_steps_with_held_labels(fit_tiny, small_data, tmp_path):
    """A wide model's step outputs estimate held labels, so its step loss, step calibration and step metrics
    all compare them with ``step_targets`` of the labels, not the raw per-step labels."""
    from torch import nn

    from detector.calibrate import calibrate
    from detector.evaluation import evaluate
    from detector.model.context import recording_contexts
    from detector.model.metrics import binary_metrics
    from detector.model.train import Objective

    ckpt = fit_tiny(step_hold=5)
    labels = small_data.labels
    assert labels is not None
    held = ckpt.step_targets(labels)
    assert held.sum() > labels.sum()  # the hold reaches steps the raw labels leave at 0

    net = ckpt.build()
    x = torch.randn(4, small_data.shape[0], net.lstm.input_size, generator=torch.Generator().manual_seed(0))
    y = torch.from_numpy(labels[:4].astype(np.float32))
    with torch.no_grad():
        out = net(x)
        loss = Objective(net, 1.0, 1.0, 1.0)(x, y, None)
        expected = nn.functional.binary_cross_entropy_with_logits(out.window, y.amax(dim=1))
        expected = expected + nn.functional.binary_cross_entropy_with_logits(
            out.step, torch.from_numpy(held[:4]).float()
        )
    torch.testing.assert_close(loss, expected)

    scorer = Scorer(ckpt)
    calibrated = calibrate(scorer, small_data, "isotonic", "max-f1")
    assert calibrated.step is not None
    metrics = evaluate(Scorer(calibrated), small_data, tmp_path)
    contexts = recording_contexts(small_data, calibrated.history)  # what evaluate scores each window against
    step_prob = Scorer(calibrated).score(small_data.values, contexts).step_probability
    assert step_prob is not None
    assert metrics["step"] == binary_metrics(held.reshape(-1), step_prob.reshape(-1), calibrated.step.threshold)


def test_records_write_probabilities_as_they_are_so_far_steps_rank_apart_and_flags_read_true(fit_tiny, small_data):
    ck = fit_tiny()
    threshold = 0.1234567891
    scorer = Scorer(ck.with_heads(Head(dict(UNCALIBRATED), threshold, "0.1234567891"), ck.step))
    scores = scorer.score(small_data.values[:4])
    assert scores.step_probability is not None
    # Steps far up the sigmoid (far beyond their series' range), and windows a hair either side of the threshold.
    far = calibration.apply(UNCALIBRATED, np.array([14.0, 16.0, 20.0, 30.0]))
    step = scores.step_probability.copy()
    step[:, -1] = far
    prob = np.array([threshold - 1e-9, threshold, threshold + 1e-9, 0.5])
    scores = replace(scores, probability=prob, flag=prob >= threshold, step_probability=step)
    windows = [
        Window(small_data.series_ids[i], small_data.window_ids[i], small_data.starts[i], small_data.step_ms[i], v)
        for i, v in enumerate(small_data.values[:4])
    ]
    records = json.loads(json.dumps(scorer.records(windows, scores, [0, 1, 2, 3], [0] * 4, [0.0] * 4)))
    last = [r["step_probabilities"][-1] for r in records]
    assert last == far.tolist()
    assert all(a < b for a, b in itertools.pairwise(last))
    assert [r["probability"] for r in records] == prob.tolist()
    assert [r["flag"] for r in records] == [r["probability"] >= r["threshold"] for r in records] == [0, 1, 1, 1]
