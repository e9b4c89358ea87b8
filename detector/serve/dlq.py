"""Dead letters: a message that failed decoding or validation, as the record the DLQ topic receives.

The record keeps the original key, value and headers and adds the headers ``error.reason`` (a stable code,
see :mod:`detector.codec`), ``error.detail``, ``source.topic``, ``source.partition`` and
``source.offset``. Should the broker refuse the record for good (a value over the topic's size limit), its
fallback is sent instead: the same headers plus ``error.value_dropped`` (the value's size), with an empty value.
"""

from __future__ import annotations

from detector.errors import WindowError
from detector.serve.messages import Message, OutRecord

MAX_DETAIL = 1000  # characters of error.detail kept


def dead_letter(message: Message, error: WindowError, topic: str) -> OutRecord:
    """The DLQ record for ``message``, which failed with ``error``."""
    headers = [
        *message.headers,
        ("error.reason", error.reason.encode()),
        ("error.detail", error.detail[:MAX_DETAIL].encode()),
        ("source.topic", message.topic.encode()),
        ("source.partition", str(message.partition).encode()),
        ("source.offset", str(message.offset).encode()),
    ]
    size = len(message.value) if message.value is not None else 0
    fallback = OutRecord(topic, message.key, b"", [*headers, ("error.value_dropped", str(size).encode())])
    # a record needs a key or a value: a message with neither is kept as an empty value
    value = message.value if message.value is not None or message.key is not None else b""
    return OutRecord(topic, message.key, value, headers, fallback=fallback)
