"""Dead letters: a message that failed decoding or validation, or whose output the broker refused, as the
record the DLQ topic receives; and the rate limit of their log lines.

The record keeps the original key, value and headers (a header whose value is null gets an empty one: the
producer cannot send a null header value) and adds the headers ``error.reason`` (a stable code,
see :data:`detector.codec.REASONS`), ``error.detail``, ``source.topic``, ``source.partition`` and
``source.offset``. Should the broker refuse the record for good (a value over the topic's size limit), its
fallback is sent instead: the same headers plus ``error.value_dropped`` (the value's size), with an empty value.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from detector.errors import WindowError
from detector.serve.messages import Message, OutRecord

MAX_DETAIL = 1000  # characters of error.detail kept
LOGGED_DETAIL = 200  # characters of a detail that a log line shows


def dead_letter(message: Message, error: WindowError, topic: str) -> OutRecord:
    """The DLQ record for ``message``, which failed with ``error``."""
    headers = [
        *((key, b"" if value is None else value) for key, value in message.headers),
        ("error.reason", error.reason.encode()),
        ("error.detail", error.detail[:MAX_DETAIL].encode("utf-8", errors="replace")),
        ("source.topic", message.topic.encode()),
        ("source.partition", str(message.partition).encode()),
        ("source.offset", str(message.offset).encode()),
    ]
    size = len(message.value) if message.value is not None else 0
    fallback = OutRecord(topic, message.key, b"", [*headers, ("error.value_dropped", str(size).encode())])
    # a record needs a key or a value: a message with neither is kept as an empty value
    value = message.value if message.value is not None or message.key is not None else b""
    return OutRecord(topic, message.key, value, headers, fallback=fallback)


@dataclass
class _Quiet:
    until: float
    suppressed: int = 0


class DeadLetterLog:
    """Logs dead letters at WARNING, at most one line per reason every ``every_s`` seconds.

    The first dead letter of a reason is logged at once; later ones within ``every_s`` are only counted,
    and the next line logged for that reason says how many were left out (``suppressed``). Details are cut
    to :data:`LOGGED_DETAIL` characters. Every dead letter is still counted in the metrics and sent to the
    DLQ: only the log is thinned.
    """

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._quiet: dict[str, _Quiet] = {}
        self._log = structlog.get_logger("detector.serve")

    def log(self, message: Message, error: WindowError, **fields: object) -> None:
        now = self.clock()
        quiet = self._quiet.get(error.reason)
        if quiet is not None and now < quiet.until:
            quiet.suppressed += 1
            return
        suppressed = quiet.suppressed if quiet is not None else 0
        self._quiet[error.reason] = _Quiet(now + self.every_s)
        self._log.warning(
            "dead letter",
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            reason=error.reason,
            detail=error.detail[:LOGGED_DETAIL],
            **fields,
            **({"suppressed": suppressed, "suppressed_over_s": self.every_s} if suppressed else {}),
        )

    def tick(self) -> None:
        """Log the count of each reason whose quiet period is over with dead letters left out in it (so a
        burst's count is logged even when no dead letter of that reason follows)."""
        now = self.clock()
        for reason, quiet in list(self._quiet.items()):
            if now >= quiet.until:
                del self._quiet[reason]
                if quiet.suppressed:
                    self._log.warning("dead letters not logged", reason=reason, count=quiet.suppressed,
                                      over_s=self.every_s)  # fmt: skip
