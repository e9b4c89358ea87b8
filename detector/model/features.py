"""From raw windows to network inputs: per-window robust scaling, differences, then per-channel statistics.

Series arrive with wildly different offsets and scales (a latency around 0.3, a byte counter around 10^6).
Each window is therefore made scale-free on its own, per feature, before the network sees it:

    scale  = MAD of first differences (a robust noise scale; floored so that a constant window is finite)
    level  = asinh((x - median(x)) / scale)          where the window sits, in noise units, compressed
    change = asinh(diff(x) / scale)                    step-to-step change, compressed
    quiet  = log(|diff(x)| / scale + 1e-2)             very negative on flat lines, large on bursts

and, against the series' own history (:mod:`detector.model.context`: a long-run and a recent location and
scale per feature, the series' range and its recent noise),

    history = asinh((x - location) / scale)            where the window sits against its series' past
    distance = min(|history|, |asinh((x - recent location) / recent scale)|)
               + asinh(beyond / noise)                 how far from it, whichever side: from the nearer of
                                                       the long-run and the recent levels, plus how far
                                                       beyond the highest or lowest row of its long-run
                                                       history (beyond = max(0, x - highest, lowest - x))

giving 5 channels per feature, then one shared channel, the context's warmth (how much history stands
behind the location and scale; 0 for a cold series, whose window is its own context). Those channels are
then standardised with a mean and std per channel measured on training data; those ``InputStats`` travel
in the checkpoint, with the name of the normalisation they were measured under, and a checkpoint gets its
distance as it was trained: ``NORMALISATION`` as above (narrow models), ``LEVELS_NORMALISATION`` from the
two levels alone (wide models, and narrow ones written before the range), ``LEGACY_NORMALISATION``
(written before the recent context) from the long-run level alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detector.model.context import LEGACY_SUMMARY_ROWS, SUMMARY_ROWS, split_context

CHANNELS_PER_FEATURE = 5
SHARED_CHANNELS = 1
NORMALISATION = "window-robust-diff-history-v4"
LEVELS_NORMALISATION = "window-robust-diff-history-v3"  # distance from the nearer level, no range: wide models
LEGACY_NORMALISATION = "window-robust-diff-history-v2"  # distance = |history|: no recent context, no range


@dataclass(frozen=True)
class Normalisation:
    """What a normalisation's distance is made of, and what history a checkpoint of it keeps."""

    recent: bool  # from the nearer of the long-run and the recent level (else the long-run one alone)
    range: bool  # plus how far beyond the series' range
    summaries: int  # history summaries per block in the file (context.SUMMARY_ROWS or LEGACY_SUMMARY_ROWS)


# What a checkpoint may name.
NORMALISATIONS = {
    LEGACY_NORMALISATION: Normalisation(recent=False, range=False, summaries=LEGACY_SUMMARY_ROWS),
    LEVELS_NORMALISATION: Normalisation(recent=True, range=False, summaries=LEGACY_SUMMARY_ROWS),
    NORMALISATION: Normalisation(recent=True, range=True, summaries=SUMMARY_ROWS),
}


def input_channels(n_features: int) -> int:
    """Network input channels for windows of ``n_features`` features."""
    return n_features * CHANNELS_PER_FEATURE + SHARED_CHANNELS


def feature_count(in_channels: int) -> int:
    """The features behind ``in_channels`` network inputs (the inverse of :func:`input_channels`)."""
    return (in_channels - SHARED_CHANNELS) // CHANNELS_PER_FEATURE


def distance_channels(in_channels: int) -> slice:
    """Where the ``distance`` channels (one per feature) sit among ``in_channels`` network inputs."""
    f = feature_count(in_channels)
    return slice(4 * f, 5 * f)


def robust_channels(x: torch.Tensor, context: torch.Tensor, kind: str = NORMALISATION) -> torch.Tensor:
    """Raw windows (B, T, F) and their contexts (B, 7F + 1) -> scale-free channels (B, T, 5F + 1), float32,
    finite for any finite input and any context with positive scales; ``kind`` is one of
    ``NORMALISATIONS``."""
    if not isinstance(kind, str) or kind not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {kind!r}")
    made = NORMALISATIONS[kind]
    x = x.to(torch.float64)  # float32 loses the noise of a series around 10^6
    context = context.to(torch.float64)
    f = x.shape[2]
    med = x.median(dim=1, keepdim=True).values  # (B, 1, F)
    d = torch.diff(x, dim=1, prepend=x[:, :1])  # (B, T, F); first step has no change
    dd = d[:, 1:]
    mad = (dd - dd.median(dim=1, keepdim=True).values).abs().median(dim=1, keepdim=True).values * 1.4826
    mean_abs = dd.abs().mean(dim=1, keepdim=True)  # when more than half the changes are 0, MAD is 0
    floor = 1e-7 * (med.abs() + 1e-3)
    scale = torch.maximum(torch.maximum(mad, 0.5 * mean_abs), floor)
    level = torch.asinh((x - med) / scale)
    change = torch.asinh(d / scale)
    quiet = torch.log(d.abs() / scale + 1e-2)
    ctx = split_context(context[:, None], f)
    history = torch.asinh((x - ctx.loc) / ctx.scale)
    distance = history.abs()
    if made.recent:
        distance = torch.minimum(distance, torch.asinh((x - ctx.recent_loc) / ctx.recent_scale).abs())
    if made.range:
        beyond = torch.clamp(torch.maximum(x - ctx.highest, ctx.lowest - x), min=0.0)
        distance = distance + torch.asinh(beyond / ctx.noise)
    warmth = ctx.warmth.expand(-1, x.shape[1], -1)
    # The order is the layout that distance_channels() names.
    return torch.cat([level, change, quiet, history, distance, warmth], dim=2).to(torch.float32)


@dataclass(frozen=True)
class InputStats:
    """Mean and std of each network input channel, measured on training windows of normalisation ``kind``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    kind: str = NORMALISATION

    @classmethod
    def fit(cls, channels: torch.Tensor, kind: str) -> InputStats:
        """Statistics of channels (N, T, C), made under normalisation ``kind``, over windows and steps."""
        flat = channels.reshape(-1, channels.shape[-1]).to(torch.float64)
        mean = flat.mean(dim=0)
        std = flat.std(dim=0).clamp_min(1e-3)
        return cls(tuple(mean.tolist()), tuple(std.tolist()), kind)

    def apply(self, channels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=channels.dtype, device=channels.device)
        std = torch.tensor(self.std, dtype=channels.dtype, device=channels.device)
        return (channels - mean) / std


def prepare(x: torch.Tensor, context: torch.Tensor, stats: InputStats) -> torch.Tensor:
    """Raw windows (B, T, F) and contexts (B, 7F + 1) -> standardised network inputs (B, T, 5F + 1), made the
    way ``stats`` were measured."""
    return stats.apply(robust_channels(x, context, stats.kind))
