"""The demo's closing figures, read from the daemon's own ``/metrics`` scrape and the outputs it produced.

Pure: text in, figures out. Quantiles come from the ``detector_end_to_end_latency_seconds`` histogram
the way Prometheus' ``histogram_quantile`` computes them (linear within the bucket), so they are as
coarse as its buckets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

LATENCY = "detector_end_to_end_latency_seconds"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text scrape, by (sample name, labels)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative buckets ``(le, count)`` (``le`` ascending, +Inf last); None when empty.

    Linear interpolation inside the bucket that holds the rank; the first bucket starts at 0; a rank in
    the +Inf bucket answers the highest finite bound.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


@dataclass(frozen=True)
class DemoSummary:
    """What the demo did; ``None`` where a figure could not be had (no scrape, no output)."""

    published: int  # windows the replay had acknowledged by the broker
    outputs: int  # output records the demo read back
    scored: int | None  # from the daemon's metrics
    flagged: int | None
    dead_letters: int | None
    raised: int | None
    cleared: int | None
    windows_per_s: float | None  # scored / (last output's scored_at - first output's)
    latency_p50_s: float | None  # end to end: input on the broker -> output acknowledged
    latency_p99_s: float | None
    seconds: float  # wall time of the whole demo up to the summary

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        def n(value: int | None) -> str:
            return "?" if value is None else f"{value:,}"

        def ms(value: float | None) -> str:
            return "?" if value is None else f"{value * 1000:.0f} ms" if value >= 0.01 else f"{value * 1000:.1f} ms"

        share = f" ({self.flagged / self.scored:.1%})" if self.flagged is not None and self.scored else ""
        rate = "?" if self.windows_per_s is None else f"{self.windows_per_s:,.1f}"
        return [
            f"  windows published   {n(self.published)}",
            f"  windows scored      {n(self.scored)}   (output records read back: {n(self.outputs)})",
            f"  windows flagged     {n(self.flagged)}{share}",
            f"  alerts raised       {n(self.raised)}   (cleared: {n(self.cleared)})",
            f"  dead letters        {n(self.dead_letters)}",
            f"  end to end          {rate} windows/s (first to last output)",
            f"  latency p50 / p99   {ms(self.latency_p50_s)} / {ms(self.latency_p99_s)}"
            "   (input on the broker -> output acknowledged)",
        ]


def summarise(metrics_text: str | None, published: int, scored_at: Sequence[int], seconds: float) -> DemoSummary:
    """The summary from a ``/metrics`` scrape (None: it failed) and the outputs' ``scored_at`` (epoch ms)."""
    got = samples(metrics_text) if metrics_text else {}

    def value(name: str, **labels: str) -> int | None:
        found = got.get((name, frozenset(labels.items())))
        return None if found is None else round(found)

    buckets = sorted(
        ((float(dict(labels)["le"]), count) for (name, labels), count in got.items() if name == f"{LATENCY}_bucket"),
        key=lambda bucket: bucket[0],
    )
    scored = value("detector_windows_scored_total")
    dead = sum(count for (name, _), count in got.items() if name == "detector_dead_letters_total")
    span_s = (max(scored_at) - min(scored_at)) / 1000 if len(scored_at) > 1 else 0.0
    return DemoSummary(
        published=published,
        outputs=len(scored_at),
        scored=scored,
        flagged=value("detector_windows_flagged_total"),
        dead_letters=round(dead) if got else None,
        raised=value("detector_alert_transitions_total", state="raised"),
        cleared=value("detector_alert_transitions_total", state="cleared"),
        windows_per_s=(scored or len(scored_at)) / span_s if span_s > 0 else None,
        latency_p50_s=histogram_quantile(0.5, buckets),
        latency_p99_s=histogram_quantile(0.99, buckets),
        seconds=seconds,
    )
