"""The kinds of integer that storage and the wire format pass around.

``Offset`` and ``Position`` are distinct ``typing.NewType``s over ``int`` so
that ``mypy --strict`` rejects a byte position passed where a record offset is
expected (and the reverse): both are plain ints at run time, so the types cost
nothing. An ``Offset`` numbers a record in a partition (Kafka's offset, dense
only before compaction: nothing may assume offsets are contiguous); a
``Position`` is a byte position inside one segment file.

:class:`OffsetAndTimestamp` is the one answer of a search by time, at every
layer (Kafka's name for the same pair). This module imports nothing of
logstore (a root module, like ``errors`` and ``config``).
"""

from typing import NamedTuple, NewType

__all__ = ["Offset", "OffsetAndTimestamp", "Position"]

Offset = NewType("Offset", int)
"""A record's offset in its partition."""

Position = NewType("Position", int)
"""A byte position inside one segment file."""


class OffsetAndTimestamp(NamedTuple):
    """The first record at or after a searched timestamp: its offset and its
    own timestamp (which may be later than the one searched for)."""

    offset: Offset
    timestamp_ms: int
