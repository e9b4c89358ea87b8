"""What the serving loop reports, in one place: :class:`Observer` is the set of hooks; a metrics exporter
implements it beside :class:`CountingObserver` (the loop's own :class:`Counters`), and :func:`safe` combines
observers so that one that raises is logged once per hook and never breaks the loop.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import structlog

from detector.serve.messages import TopicPartition


class Observer(Protocol):
    def consumed(self, messages: int) -> None: ...

    def dead_letter(self, reason: str) -> None: ...

    def scored(self, windows: int, flagged: int, seconds: float, latencies_ms: Sequence[float]) -> None: ...

    def batch_done(self, messages: int, seconds: float) -> None: ...

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    def delivery_retry(self, unfinished: int, failures: int) -> None: ...

    def dropped_on_revoke(self, messages: int) -> None: ...

    def delivery_stalled(self, seconds: float) -> None: ...

    def output_dropped(self, records: int) -> None: ...

    def unreadable_record(self) -> None: ...

    def set_consumer_lag(self, lags: Mapping[TopicPartition, int]) -> None: ...

    def model_loaded(self, version: str) -> None: ...

    def alert_transitions(self, raised: int, cleared: int) -> None: ...


@dataclass
class Counters:
    """Running totals since start; what the daemon logs when it stops."""

    consumed: int = 0
    scored: int = 0
    flagged: int = 0
    batches: int = 0
    commits: int = 0
    delivery_retries: int = 0
    dropped_on_revoke: int = 0
    output_dropped: int = 0
    unreadable_records: int = 0
    alerts_raised: int = 0
    alerts_cleared: int = 0
    models: list[str] = field(default_factory=list)  # every version served, in order
    dead_letters: Counter[str] = field(default_factory=Counter)
    batch_sizes: list[int] = field(default_factory=list)  # messages per completed batch, in order

    def summary(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "scored": self.scored,
            "flagged": self.flagged,
            "dead_letters": dict(self.dead_letters),
            "batches": self.batches,
            "commits": self.commits,
            "delivery_retries": self.delivery_retries,
            "dropped_on_revoke": self.dropped_on_revoke,
            "output_dropped": self.output_dropped,
            "unreadable_records": self.unreadable_records,
            "alerts_raised": self.alerts_raised,
            "alerts_cleared": self.alerts_cleared,
            "models": list(self.models),
        }


class CountingObserver:
    """The default observer: keeps :class:`Counters` (the last ``keep_batches`` batch sizes)."""

    def __init__(self, keep_batches: int = 1000) -> None:
        self.counts = Counters()
        self.keep_batches = keep_batches

    def consumed(self, messages: int) -> None:
        self.counts.consumed += messages

    def dead_letter(self, reason: str) -> None:
        self.counts.dead_letters[reason] += 1

    def scored(self, windows: int, flagged: int, seconds: float, latencies_ms: Sequence[float]) -> None:
        self.counts.scored += windows
        self.counts.flagged += flagged

    def batch_done(self, messages: int, seconds: float) -> None:
        self.counts.batches += 1
        sizes = self.counts.batch_sizes
        sizes.append(messages)
        if len(sizes) > self.keep_batches:
            del sizes[: len(sizes) - self.keep_batches]

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.counts.commits += 1

    def delivery_retry(self, unfinished: int, failures: int) -> None:
        self.counts.delivery_retries += 1

    def dropped_on_revoke(self, messages: int) -> None:
        self.counts.dropped_on_revoke += messages

    def delivery_stalled(self, seconds: float) -> None:
        pass

    def output_dropped(self, records: int) -> None:
        self.counts.output_dropped += records

    def unreadable_record(self) -> None:
        self.counts.unreadable_records += 1

    def set_consumer_lag(self, lags: Mapping[TopicPartition, int]) -> None:
        pass

    def model_loaded(self, version: str) -> None:
        self.counts.models.append(version)

    def alert_transitions(self, raised: int, cleared: int) -> None:
        self.counts.alerts_raised += raised
        self.counts.alerts_cleared += cleared


_HOOKS = frozenset(name for name in vars(Observer) if not name.startswith("_"))


class SafeObserver:
    """Calls every observer given, for each hook of :class:`Observer` (the type it is used as); an exception
    in one is logged (once per observer and hook) and swallowed, so an observer never breaks the loop."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers
        self._failed: set[tuple[int, str]] = set()
        self._log = structlog.get_logger("detector.serve")

    def __getattr__(self, hook: str) -> Callable[..., None]:
        if hook not in _HOOKS:
            raise AttributeError(hook)
        return functools.partial(self._call, hook)

    def _call(self, hook: str, *args: Any) -> None:
        for i, observer in enumerate(self.observers):
            try:
                getattr(observer, hook)(*args)
            except Exception as err:
                if (i, hook) not in self._failed:
                    self._failed.add((i, hook))
                    self._log.error("observer failed", observer=type(observer).__name__, hook=hook, error=repr(err))


def safe(*observers: Observer) -> Observer:
    """One observer that calls each of ``observers`` (see :class:`SafeObserver`)."""
    return cast(Observer, SafeObserver(*observers))
