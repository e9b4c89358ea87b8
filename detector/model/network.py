"""The network: an LSTM encoder with a per-step head, a pooled window head and an optional event-type head.

Shapes: B windows, T steps, C input channels, H hidden units (times 2 when bidirectional), K event types.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detector.model.config import NetworkConfig
from detector.model.features import distance_channels, feature_count


def hold(x: torch.Tensor, rows: int) -> torch.Tensor:
    """(B, T) -> (B, T): each step's value becomes the largest over it and the ``rows - 1`` steps before it
    (fewer at the window's start); ``rows`` 1 returns ``x`` itself. Causal: a step never sees later ones."""
    if rows <= 1:
        return x
    rows = min(rows, x.shape[1])
    padded = F.pad(x.unsqueeze(1), (rows - 1, 0), value=float("-inf"))
    return F.max_pool1d(padded, rows, stride=1).squeeze(1)


class BinaryStraightThrough(torch.autograd.Function):
    """Hard 0/1 forward (x >= 0); backward passes the gradient where |x| <= 1 and blocks it elsewhere."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class BinaryActivation(nn.Module):
    """Module form of :class:`BinaryStraightThrough`, usable as a binary bottleneck or a binary head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return BinaryStraightThrough.apply(x)


@dataclass
class NetworkOutput:
    """Logits; a head that is off gives None (the window logit always exists)."""

    window: torch.Tensor  # (B,); the max step logit when the window head is off
    step: torch.Tensor | None  # (B, T)
    event: torch.Tensor | None  # (B, K)


class DetectorNet(nn.Module):
    """LSTM encoder (batch_first) and binary heads, built from a :class:`NetworkConfig` alone."""

    def __init__(self, config: NetworkConfig, in_channels: int) -> None:
        super().__init__()
        self.config = config
        c = config
        self.lstm = nn.LSTM(
            input_size=in_channels,
            hidden_size=c.hidden_size,
            num_layers=c.num_layers,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
            bidirectional=c.bidirectional,
            batch_first=True,
        )
        width = c.hidden_size * (2 if c.bidirectional else 1)
        self.dropout = nn.Dropout(c.dropout)
        self.bottleneck: nn.Module | None = None
        if c.binary_bottleneck:
            self.bottleneck = nn.Sequential(nn.Linear(width, c.binary_bottleneck), BinaryActivation())
            width = c.binary_bottleneck
        self.step_head = nn.Linear(width, 1) if c.step_head else None
        self.step_skip = nn.Linear(in_channels, 1, bias=False) if c.step_head and c.step_skip else None
        self.distance = distance_channels(in_channels)
        n_features = feature_count(in_channels)
        self.anchor = c.anchor_for(n_features)  # 0 = off
        self.hold = c.hold_for(n_features)  # 1 = off
        # The learnt level of a floored step logit: what it is where the network adds nothing at distance 0.
        floored = c.step_head and c.floor_for(n_features)
        self.step_floor = nn.Parameter(torch.zeros(())) if floored else None
        self.attention = nn.Linear(width, 1) if c.window_head and c.pooling == "attention" else None
        self.window_head = nn.Linear(width, 1) if c.window_head else None
        self.event_head = nn.Linear(width, len(c.event_types)) if c.event_types else None

    def pool(self, h: torch.Tensor, h_last: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, H) -> one vector per window (B, H) by the configured pooling."""
        pooling = self.config.pooling
        if pooling == "last":
            return h_last
        if pooling == "mean":
            return h.mean(dim=1)
        if pooling == "max":
            return h.amax(dim=1)
        assert self.attention is not None
        weights = torch.softmax(self.attention(h).squeeze(-1), dim=1)  # (B, T)
        return torch.einsum("bt,bth->bh", weights, h)

    def step_bias(self) -> torch.Tensor | None:
        """The parameter that shifts every step logit alike (None without a step head)."""
        if self.step_floor is not None:
            return self.step_floor
        return self.step_head.bias if self.step_head is not None else None

    def step_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Per-step 0/1 labels (B, T) -> what this network's step outputs estimate (held like them)."""
        return hold(labels, self.hold)

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        """x: (B, T, C) standardised inputs."""
        h, (h_n, _) = self.lstm(x)  # h: (B, T, H); h_n: (layers * dirs, B, H/dirs)
        if self.config.bidirectional:
            h_last = torch.cat([h_n[-2], h_n[-1]], dim=1)  # final states of the last layer, both directions
        else:
            h_last = h_n[-1]
        h = self.dropout(h)
        h_last = self.dropout(h_last)
        if self.bottleneck is not None:
            h = self.bottleneck(h)
            h_last = self.bottleneck(h_last)
        step = self.step_head(h).squeeze(-1) if self.step_head is not None else None  # (B, T)
        if step is not None and self.step_skip is not None:
            step = step + self.step_skip(x).squeeze(-1)
        if step is not None and self.anchor:
            # A fixed (not learnt) rise with the step's largest distance from its series' history, which the
            # network's own logit adds to (only upwards when floored): a prior that ranks steps by how far
            # they are from their own series' past, comparable across series.
            prior = self.anchor * x[:, :, self.distance].amax(dim=2)
            step = prior + (self.step_floor + F.softplus(step) if self.step_floor is not None else step)
        if step is not None:
            step = hold(step, self.hold)
        pooled = self.pool(h, h_last) if (self.window_head is not None or self.event_head is not None) else None
        if self.window_head is not None:
            window = self.window_head(pooled).squeeze(-1)  # (B,)
        else:
            window = step.amax(dim=1)  # type: ignore[union-attr]  # a window is as anomalous as its worst step
        event = self.event_head(pooled) if self.event_head is not None else None  # (B, K)
        return NetworkOutput(window=window, step=step, event=event)
