"""Architecture and training hyper-parameters: frozen, validated, with the defaults that ship.

These are plain pydantic models (no I/O, no environment): the settings tree embeds them under ``train``
and a checkpoint stores ``NetworkConfig`` as JSON so that it rebuilds its model with no outside config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Pooling = Literal["last", "mean", "max", "attention"]


class NetworkConfig(BaseModel):
    """The LSTM encoder and its heads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_size: int = Field(default=64, ge=1, le=4096)  # LSTM hidden units per direction
    # Two stacked layers: a second layer detects better on generated recordings than one, and doubles the
    # LSTM's work per window.
    num_layers: int = Field(default=2, ge=1, le=8)  # stacked LSTM layers
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)  # between LSTM layers and before the heads
    bidirectional: bool = True  # both directions see a step's context before and after: finds edges and drifts
    window_head: bool = True  # one logit per window, from the pooled hidden states
    pooling: Pooling = "attention"  # how the window head pools: last hidden state, mean, max or attention
    step_head: bool = True  # one logit per time step; trained jointly with the window head when both are on
    # The step head also reads the step's own input channels through a linear path past the LSTM, so that a
    # step far from its series' history can raise its logit directly.
    step_skip: bool = True
    # Narrow models (at most ``narrow_max_features`` features: univariate series) and wide ones score steps
    # differently, by measurement on real data (bench/RESULTS.md, Real data):
    # - narrow: each step's logit also rises by ``distance_anchor`` per unit of the step's standardised
    #   distance from its series' history (a fixed slope, not learnt; 0 = off; the distance includes how
    #   far the step goes beyond the series' range, which wide models' inputs leave out), and is held over
    #   ``narrow_step_hold`` steps (below). Trained on injected events alone, the network learns to spot
    #   them inside a window and leaves the distance under-used; the fixed slope keeps real incidents, far
    #   from their series' past, above a spiky series' everyday moves.
    # - wide: each step's probability is the highest of the network's over that step and the
    #   ``step_hold - 1`` steps before it in the window (1 = off), and is trained on labels held the same
    #   way: "an event within the last step_hold rows". Incidents on multi-metric services last for hours
    #   while any one row of them may look normal; no single metric's distance ranks them (the slope sank
    #   them), the window's strongest evidence does.
    distance_anchor: float = Field(default=6.0, ge=0.0, le=100.0)
    # Narrow models: the network may raise a step's logit above the distance prior but not lower it below
    # (logit = a learnt floor + distance_anchor x distance + softplus(network's)). Added as is (false), the
    # network learnt to cancel the prior the longer it trained on injected events, in which every natural
    # deviation of the training data is "normal", and ranked real incidents worse (bench/RESULTS.md).
    anchor_floor: bool = True
    step_hold: int = Field(default=64, ge=1, le=4096)
    # Narrow models hold each step's probability over that step and the ``narrow_step_hold - 1`` before it
    # (trained on labels held the same way; 1 = off): a labelled incident on a univariate series often goes
    # on a row past its largest deviation (bench/RESULTS.md: 2 rows ranked best, 3 or more worse).
    narrow_step_hold: int = Field(default=2, ge=1, le=4096)
    narrow_max_features: int = Field(default=1, ge=0)
    event_types: list[str] = Field(default_factory=list)  # names for the optional multi-class head; empty = off
    binary_bottleneck: int = Field(default=0, ge=0)  # >0: a straight-through 0/1 code of this width before the heads

    def is_narrow(self, n_features: int) -> bool:
        """Whether a model of ``n_features`` features scores its steps as a narrow one (see above)."""
        return n_features <= self.narrow_max_features

    def anchor_for(self, n_features: int) -> float:
        """The distance slope that scores a model of ``n_features`` features."""
        return self.distance_anchor if self.is_narrow(n_features) else 0.0

    def floor_for(self, n_features: int) -> bool:
        """Whether the step logit of a model of ``n_features`` features is floored at the distance prior."""
        return self.anchor_floor and self.anchor_for(n_features) > 0

    def hold_for(self, n_features: int) -> int:
        """The step hold (rows) that scores a model of ``n_features`` features; 1 = none."""
        return self.narrow_step_hold if self.is_narrow(n_features) else self.step_hold

    @model_validator(mode="after")
    def _some_head(self) -> NetworkConfig:
        if not (self.window_head or self.step_head):
            raise ValueError("at least one of window_head and step_head must be on")
        return self


class AugmentConfig(BaseModel):
    """How training windows are made from a recording beyond the windows it holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recut: bool = True  # cut fresh windows at random offsets from the contiguous series a recording holds
    flip_sign: bool = True  # multiply a window's channels by -1 at random
    permute_channels: bool = True  # shuffle feature order at random (all features play the same role)
    # Share of training windows that get a synthetic event. 0.25 rather than 0.5 leaves more of each batch
    # to the recording's own labelled events.
    inject_rate: float = Field(default=0.25, ge=0.0, le=1.0)


class TrainConfig(BaseModel):
    """Optimisation, data split and stopping."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    network: NetworkConfig = NetworkConfig()
    augment: AugmentConfig = AugmentConfig()
    seed: int = 0
    epochs: int = Field(default=40, ge=1)  # upper bound; early stopping usually ends sooner
    steps_per_epoch: int = Field(default=60, ge=1)  # an epoch is a fixed number of batches, whatever the data size
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=5e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)  # share of series (or windows) held out for validation
    max_val_windows: int = Field(default=4000, ge=1)  # validation is subsampled to this many windows
    patience: int = Field(default=10, ge=1)  # epochs without validation-loss improvement before stopping
    event_head: bool = False  # learn the event type too (needs event_type in the data, or --inject)
    step_loss_weight: float = Field(default=1.0, ge=0)  # weight of the per-step loss when both heads are on
    max_minutes: float = Field(default=4.0, ge=0)  # wall-clock cap on training (best epoch so far is kept); 0 = none
