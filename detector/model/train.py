"""Training: from a recording (labelled, or clean with synthetic injection) to an uncalibrated checkpoint.

Labelled windows alone are few and overfit, so each training batch is drawn fresh: windows re-cut at random
offsets from the contiguous series the recording holds, channels permuted and signs flipped at random, and
a share of them given a synthetic event (:mod:`detector.model.inject`), sized on the window's noise or on
its series' level scale. Each window comes with the context of its series' rows before it
(:mod:`detector.model.context`), drawn as serving gives it, and cut short or cold for a share of windows so
that the model learns new series too. An epoch is a fixed number of such
batches, so training time does not grow with the recording. Validation uses held-out series as they are
(with injected events when training with ``inject``); early stopping keeps the best validation loss.
Seeded and deterministic on the CPU unless the wall-clock cap (``train.max_minutes``) binds: the learning
rate decays by the larger of the share of batches done and the share of the cap gone.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from detector.errors import TrainingError
from detector.model.checkpoint import MAX_HISTORY_BYTES, Checkpoint, Head, summary_rows
from detector.model.config import TrainConfig
from detector.model.context import (
    BLOCK_ROWS,
    HISTORY_BLOCKS,
    ContextParts,
    cold_contexts,
    context_width,
    history_after,
    join_context,
    recording_contexts,
    series_blocks,
    split_context,
    warm_context,
)
from detector.model.features import (
    LEVELS_NORMALISATION,
    NORMALISATION,
    InputStats,
    input_channels,
    prepare,
    robust_channels,
)
from detector.model.inject import EVENT_KINDS, EventSpec, inject_batch, noise_scale
from detector.model.metrics import binary_metrics
from detector.model.network import DetectorNet
from detector.windows import WindowSet

# Training events are sized on the window's own step-to-step noise, which for smooth (autocorrelated)
# series is far below the series' overall noise that real events are measured against: widen the sizes.
# Half the events end on the window's last step (an incident still under way when the window is scored),
# and level shifts may span the whole window.
TRAINING_EVENTS = EventSpec(gain=(1.0, 30.0), shift_length=(8, 64), tail_share=0.5)
# Share of injected events sized on the series' long-run level scale rather than the window's own noise. In
# narrow models all of them: their prior already ranks a step by its distance from the series' past, and
# events sized on a quiet window's noise taught the network to raise the ordinary jumps a series makes every
# day (a daily step-up many times its minute-to-minute noise, of which its history holds plenty).
HISTORY_SIZED = 0.75
NARROW_HISTORY_SIZED = 1.0
COLD_SHARE = 0.15  # share of training windows whose history is cut short (down to none: a cold series)


@dataclass
class Batch:
    values: np.ndarray  # (B, T, F)
    contexts: np.ndarray  # (B, 7F + 1) float64
    labels: np.ndarray  # (B, T) int8
    kinds: list[str]  # event type per window, "none" without one


def normalisation_for(config: TrainConfig, n_features: int) -> str:
    """The normalisation a model of ``n_features`` features is trained under: narrow models' distance also
    counts how far a step goes beyond its series' range, wide ones' does not (with it, the network leant on
    the range to find injected events and ranked real multi-metric incidents worse; bench/RESULTS.md)."""
    return NORMALISATION if config.network.is_narrow(n_features) else LEVELS_NORMALISATION


def history_sized(config: TrainConfig, n_features: int) -> float:
    """The share of a model's injected events sized on its series' long-run level scale: NARROW_HISTORY_SIZED
    in a narrow model, HISTORY_SIZED in a wide one."""
    return NARROW_HISTORY_SIZED if config.network.is_narrow(n_features) else HISTORY_SIZED


def series_weights(series_ids: list[str], room: np.ndarray) -> np.ndarray:
    """How often training draws a window from each segment (a contiguous run of one series with ``room``
    window positions): every series alike, whatever its length, and within a series by room. Weighted by
    room alone, a short series (a few weeks of hourly rows beside months of minutes) was seldom drawn, and
    the network raised its ordinary shapes as if they were events."""
    per_series: dict[str, float] = {}
    for series, r in zip(series_ids, room, strict=True):
        per_series[series] = per_series.get(series, 0.0) + float(r)
    share = np.array([r / per_series[s] for s, r in zip(series_ids, room, strict=True)])
    return share / len(per_series)


def _grid_contexts(blocks: np.ndarray, n_features: int) -> np.ndarray:
    """Contexts (k + 1, 7F + 1) of a series whose block summaries are ``blocks`` (k, SUMMARY_ROWS, F), with
    history ending after 0, 1, ..., k blocks; after 0 a cold placeholder (warmth 0, see :func:`_recold`)."""
    out = np.zeros((len(blocks) + 1, context_width(n_features)))
    for k in range(1, len(blocks) + 1):
        out[k] = warm_context(blocks[max(0, k - HISTORY_BLOCKS) : k])
    return out


def _recold(contexts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``contexts`` with every cold one (warmth 0) measured again on its window in ``values``, as serving
    measures a cold series' context on the window it scores."""
    cold = split_context(contexts, values.shape[2]).warmth[:, 0] == 0
    if not cold.any():
        return contexts
    contexts = contexts.copy()
    contexts[cold] = cold_contexts(values[cold])
    return contexts


def _event_scales(values: np.ndarray, contexts: np.ndarray, rng: np.random.Generator, share: float) -> np.ndarray:
    """Per window (N, F): the window's noise scale, or for a random ``share`` the context's level scale, so
    that the model learns events against the window, against the series' past, or both."""
    scales = noise_scale(values)
    by_level = rng.random(len(values)) < share
    scales[by_level] = split_context(contexts, values.shape[2]).scale[by_level]  # the long-run scale
    return scales


class BatchSampler:
    """Draws augmented training batches from the training part of a recording."""

    def __init__(self, data: WindowSet, config: TrainConfig, inject: bool, rng: np.random.Generator) -> None:
        self.cfg = config.augment
        self.rng = rng
        self.t = data.shape[0]
        self.inject = inject
        self.rate = self.cfg.inject_rate
        self.history_sized = history_sized(config, data.shape[1])
        if inject and self.rate <= 0:
            raise TrainingError("--inject needs train.augment.inject_rate > 0")
        labels = None if inject else data.labels
        kinds = data.event_types
        if self.cfg.recut:
            segs = WindowSet(
                data.values, labels, data.series_ids, data.window_ids, data.starts, data.step_ms, kinds
            ).segments()
            self.segments = [(v, lab if lab is not None else np.zeros(len(v), np.int8)) for _, v, lab in segs]
            owners = [series for series, _, _ in segs]
        else:
            self.segments = [
                (data.values[i], labels[i] if labels is not None else np.zeros(self.t, np.int8))
                for i in range(len(data))
            ]
            owners = list(data.series_ids)
        room = np.array([len(v) - self.t + 1 for v, _ in self.segments], dtype=np.float64)
        self.weights = series_weights(owners, room)
        self.blocks = [series_blocks(v) for v, _ in self.segments]
        self.grids = [_grid_contexts(b, v.shape[1]) for b, (v, _) in zip(self.blocks, self.segments, strict=True)]

    def _context(self, s: int, end: int) -> np.ndarray:
        """A context for the window of segment ``s`` ending before row ``end``: the blocks completed 1 to
        T + BLOCK_ROWS rows before ``end`` (as serving gives), fewer of them for a COLD_SHARE of windows; a
        cold placeholder (warmth 0) where none."""
        rng = self.rng
        k = max(0, end - int(rng.integers(1, self.t + BLOCK_ROWS + 1))) // BLOCK_ROWS
        if rng.random() < COLD_SHARE:
            held = int(rng.integers(0, min(k, HISTORY_BLOCKS) + 1))
            if held == 0:
                return self.grids[s][0]
            return warm_context(self.blocks[s][k - held : k])
        return self.grids[s][k]

    def sample(self, size: int) -> Batch:
        rng, t = self.rng, self.t
        seg_idx = rng.choice(len(self.segments), size=size, p=self.weights)
        n_feat = self.segments[0][0].shape[1]
        values = np.empty((size, t, n_feat), dtype=np.float32)
        contexts = np.empty((size, context_width(n_feat)))
        labels = np.empty((size, t), dtype=np.int8)
        for j, s in enumerate(seg_idx):
            v, lab = self.segments[s]
            off = int(rng.integers(0, len(v) - t + 1))
            values[j] = v[off : off + t]
            labels[j] = lab[off : off + t]
            contexts[j] = self._context(s, off + t)
        ctx = split_context(contexts, n_feat)
        if self.cfg.permute_channels and n_feat > 1:
            perm = np.argsort(rng.random((size, n_feat)), axis=1)
            values = np.take_along_axis(values, perm[:, None, :], axis=2)
            ctx = ContextParts._make([*(np.take_along_axis(part, perm, axis=1) for part in ctx[:-1]), ctx.warmth])
        if self.cfg.flip_sign:
            sign = np.where(rng.random((size, n_feat)) < 0.5, -1.0, 1.0)
            values = values * sign[:, None, :].astype(np.float32)
            flipped = sign < 0  # a flipped feature's highest row is minus its lowest, and the other way round
            ctx = ctx._replace(
                loc=ctx.loc * sign,
                recent_loc=ctx.recent_loc * sign,
                highest=np.where(flipped, -ctx.lowest, ctx.highest),
                lowest=np.where(flipped, -ctx.highest, ctx.lowest),
            )
        contexts = join_context(ctx)
        kinds = ["none" if not lab.any() else "unknown" for lab in labels]
        if self.rate > 0:
            sized = _event_scales(values, _recold(contexts, values), rng, self.history_sized)
            values, masks, injected = inject_batch(values, rng, self.rate, spec=TRAINING_EVENTS, scales=sized)
            labels = labels | masks
            kinds = [k or kinds[i] for i, k in enumerate(injected)]
        values = values.astype(np.float32)
        return Batch(values, _recold(contexts, values), labels, kinds)


def _split(data: WindowSet, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation windows: whole series held out when there are several."""
    series = sorted(set(data.series_ids))
    ids = np.array(data.series_ids)
    if len(series) >= 2:
        held = set(rng.permutation(series)[: max(1, min(len(series) - 1, round(fraction * len(series))))])
        val = np.array([s in held for s in ids])
    else:  # one series: hold out its last windows
        val = np.zeros(len(ids), dtype=bool)
        val[int(len(ids) * (1 - fraction)) :] = True
    train_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise TrainingError(f"need at least 2 windows to split into training and validation, got {len(ids)}")
    return train_idx, val_idx


def _subset(data: WindowSet, idx: np.ndarray) -> WindowSet:
    pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
    return WindowSet(
        data.values[idx],
        None if data.labels is None else data.labels[idx],
        pick(data.series_ids),
        pick(data.window_ids),
        pick(data.starts),
        pick(data.step_ms),
        pick(data.event_types),
    )


@dataclass
class TrainResult:
    checkpoint: Checkpoint
    summary: dict[str, Any]  # validation precision/recall/f1/auprc at threshold 0.5, epochs, seconds


class Schedule:
    """Learning-rate factor (for ``LambdaLR``) by training progress, the larger of the share of batches done
    and the share of ``max_seconds`` gone since the first call (0 = no time limit): a linear warm-up from
    1/25 over the first 10%, then a cosine down to 1/10^4 at 100%. Sizing the decay to the wall-clock cap
    as well as to the batch count lets a run that the cap ends still finish with a small learning rate
    (annealed) instead of stopping at its peak. Where the batches run ahead of the clock throughout (always
    with no time limit) the factor follows the batch count alone and training is deterministic under a
    seed."""

    WARMUP = 0.1
    START, END = 1 / 25, 1e-4

    def __init__(self, total_batches: int, max_seconds: float) -> None:
        self.total_batches = max(total_batches, 1)
        self.max_seconds = max_seconds
        self.started: float | None = None

    def progress(self, batches: int) -> float:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        done = batches / self.total_batches
        if self.max_seconds > 0:
            done = max(done, (now - self.started) / self.max_seconds)
        return min(done, 1.0)

    def __call__(self, batches: int) -> float:
        p = self.progress(batches)
        if p < self.WARMUP:
            return self.START + (1 - self.START) * p / self.WARMUP
        return self.END + (1 - self.END) * 0.5 * (1 + math.cos(math.pi * (p - self.WARMUP) / (1 - self.WARMUP)))


class Objective:
    """The joint loss: BCEWithLogits per head (pos_weight from the data) plus cross-entropy for event types."""

    def __init__(self, net: DetectorNet, window_pw: float, step_pw: float, step_weight: float) -> None:
        self.net = net
        self.window = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(window_pw))
        self.step = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(step_pw))
        self.event = nn.CrossEntropyLoss()
        self.step_weight = step_weight

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, kinds: torch.Tensor | None) -> torch.Tensor:
        out = self.net(x)
        y_win = labels.amax(dim=1)
        loss = torch.zeros(())
        if self.net.window_head is not None:
            loss = loss + self.window(out.window, y_win)
        if out.step is not None:
            loss = loss + self.step_weight * self.step(out.step, self.net.step_targets(labels))
        if out.event is not None and kinds is not None:
            loss = loss + self.event(out.event, kinds)
        return loss


def train(
    data: WindowSet,
    config: TrainConfig,
    inject: bool = False,
    on_batch: Callable[[], None] = lambda: None,
    feature_names: list[str] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> TrainResult:
    """Fit a model on ``data``; labels are required unless ``inject``. ``on_batch`` is called after each
    training batch (``config.epochs * config.steps_per_epoch`` at most), ``log`` with a line per epoch."""
    if not inject and data.labels is None:
        raise TrainingError("the recording carries no labels: add them, or train with --inject")
    if (
        not inject
        and data.window_labels is not None
        and data.window_labels.sum() == 0
        and config.augment.inject_rate == 0
    ):
        raise TrainingError("the recording holds no labelled events and injection is off: nothing to learn")
    started = time.monotonic()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    t, n_feat = data.shape
    if t < 8:
        raise TrainingError(f"windows of {t} steps are too short to learn from (need at least 8)")
    train_idx, val_idx = _split(data, config.val_fraction, rng)
    train_set, val_set = _subset(data, train_idx), _subset(data, val_idx)
    sampler = BatchSampler(train_set, config, inject, rng)

    event_types: list[str] = []
    if config.event_head:
        event_types = ["none", *EVENT_KINDS] if inject else sorted({k for k in data.event_types if k} | {"none"})
        if len(event_types) < 2:
            raise TrainingError("the event-type head needs event_type in the data, or --inject")
    network = config.network.model_copy(update={"event_types": event_types})

    # Validation: held-out series as they are, plus copies of them with injected events, so that early
    # stopping sees enough events to be steady even when the recording holds few.
    val_rng = np.random.default_rng(config.seed + 1)
    vi = val_rng.permutation(len(val_set))[: config.max_val_windows // 2]
    own_values = val_set.values[vi]
    # Each held-out window's context is what replaying the held-out series in order gives it.
    own_contexts = recording_contexts(val_set)[vi]
    own_labels = (
        val_set.labels[vi] if (val_set.labels is not None and not inject) else np.zeros(own_values.shape[:2], np.int8)
    )
    own_kinds = [val_set.event_types[i] or "none" for i in vi] if not inject else ["none"] * len(vi)
    injected_values, masks, names = inject_batch(
        own_values,
        val_rng,
        0.5,
        spec=TRAINING_EVENTS,
        scales=_event_scales(own_values, own_contexts, val_rng, history_sized(config, n_feat)),
    )
    val_values = np.concatenate([own_values, injected_values])
    val_contexts = np.concatenate([own_contexts, _recold(own_contexts, injected_values)])
    val_labels = np.concatenate([own_labels, own_labels | masks])
    val_kinds = own_kinds + [k or own_kinds[i] for i, k in enumerate(names)]

    # Input statistics and class balance, measured on a sample of training batches.
    probe = [sampler.sample(config.batch_size) for _ in range(max(4, 4096 // config.batch_size))]
    normalisation = normalisation_for(config, n_feat)
    probe_x = robust_channels(
        torch.from_numpy(np.concatenate([b.values for b in probe])),
        torch.from_numpy(np.concatenate([b.contexts for b in probe])),
        normalisation,
    )
    stats = InputStats.fit(probe_x, normalisation)
    probe_y = np.concatenate([b.labels for b in probe])
    win_pos = probe_y.max(axis=1).mean()
    if win_pos == 0:
        raise TrainingError("no training window holds an event (labelled or injected): nothing to learn")
    window_pw = float(min((1 - win_pos) / win_pos, 100.0))

    def tensors(values: np.ndarray, contexts: np.ndarray, labels: np.ndarray, kinds: list[str]):
        x = prepare(torch.from_numpy(values), torch.from_numpy(contexts), stats)
        y = torch.from_numpy(labels.astype(np.float32))
        k = None
        if event_types:
            k = torch.tensor([event_types.index(s) if s in event_types else 0 for s in kinds])
        return x, y, k

    net = DetectorNet(network, input_channels(n_feat))
    step_pos = float(net.step_targets(torch.from_numpy(probe_y.astype(np.float32))).mean())
    step_pw = float(min((1 - step_pos) / max(step_pos, 1e-6), 100.0))
    objective = Objective(net, window_pw, step_pw, config.step_loss_weight)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # The cap counts from the start of train(); what is left of it when the first batch runs is the loop's.
    left = max(config.max_minutes * 60 - (time.monotonic() - started), 1e-3) if config.max_minutes else 0.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, Schedule(config.epochs * config.steps_per_epoch, left))
    vx, vy, vk = tensors(val_values, val_contexts, val_labels, val_kinds)

    best_loss, best_state, best_epoch, stale = math.inf, copy.deepcopy(net.state_dict()), 0, 0
    history = []
    epoch = 0
    for epoch in range(1, config.epochs + 1):
        net.train()
        running = 0.0
        for _ in range(config.steps_per_epoch):
            b = sampler.sample(config.batch_size)
            x, y, k = tensors(b.values, b.contexts, b.labels, b.kinds)
            loss = objective(x, y, k)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            running += loss.item()
            on_batch()
        net.eval()
        with torch.no_grad():
            val_loss = float(objective(vx, vy, vk))
        history.append({"epoch": epoch, "train_loss": running / config.steps_per_epoch, "val_loss": val_loss})
        log(f"epoch {epoch}: train loss {running / config.steps_per_epoch:.4f}, validation loss {val_loss:.4f}")
        if val_loss < best_loss - 1e-4:
            best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(net.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
        if config.max_minutes and time.monotonic() - started > config.max_minutes * 60:
            break
    net.load_state_dict(best_state)
    # pos_weight w moves the optimal logit up by log(w); take it back out so that the raw model is
    # roughly calibrated at the training prior (calibration proper comes later, on held-out data).
    with torch.no_grad():
        window_bias = net.window_head.bias if net.window_head is not None else None
        for bias, pw in ((window_bias, window_pw), (net.step_bias(), step_pw)):
            if bias is not None and pw > 0:
                bias.sub_(math.log(pw))
    net.eval()
    with torch.no_grad():
        val_logits = net(vx).window.numpy()
    prob = 1.0 / (1.0 + np.exp(-val_logits.astype(np.float64)))
    m = binary_metrics(val_labels.max(axis=1), prob, 0.5)
    summary = {
        "validation": {k: round(float(m[k]), 4) for k in ("precision", "recall", "f1", "auprc")},
        "validation_windows": len(val_values),
        "validation_positives": int(val_labels.max(axis=1).sum()),
        "best_epoch": best_epoch,
        "epochs": epoch,
        "best_val_loss": round(best_loss, 6),
        "seconds": round(time.monotonic() - started, 1),
        "inject": inject,
        "training_windows": len(train_set),
        "seed": config.seed,
    }
    names = feature_names or [f"f{i}" for i in range(n_feat)]
    ckpt = Checkpoint(
        network=network,
        state={k: v.detach().clone() for k, v in net.state_dict().items()},
        window_length=t,
        feature_names=tuple(names),
        stats=stats,
        window=Head(),
        step=Head() if network.step_head else None,
        training={k: v for k, v in summary.items() if k != "seconds"},
        # serving starts from what the recording leaves, as much as the file may hold
        history=history_after(data, MAX_HISTORY_BYTES, summary_rows(normalisation)),
    )
    return TrainResult(ckpt, summary)
