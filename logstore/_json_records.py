"""The JSON key/value codec shape of the internal compacted topics' records
(``logstore.coordinator._records`` for ``__consumer_offsets``,
``logstore.share._records`` for ``__share_group_state``).

Both formats are: a key that is a JSON array whose element 0 is the record
type and whose length is fixed per type; a value that is a JSON object with
``"v"`` (its format version, from 1) or None (a tombstone); UTF-8 JSON with
sorted keys and no whitespace, so equal records are equal bytes (compaction
compares key bytes). The helpers here are that shape only: each format's
types, fields and versions stay in its own module, and nothing here changes a
byte either one writes. Every failure is
:class:`~logstore.errors.CorruptRecordError` whose message starts with the
format's name (``what``), never a guess.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import Any, TypeVar

from logstore.errors import CorruptRecordError

T = TypeVar("T")
E = TypeVar("E", bound=IntEnum)


def dumps(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8 (not escaped)."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def json_int(x: Any, what: str) -> int:
    """``x`` if it is an integer (a bool is not), else CorruptRecordError."""
    if not isinstance(x, int) or isinstance(x, bool):
        raise CorruptRecordError(f"{what} record: expected an integer, got {x!r}")
    return x


def decode_json(key: bytes, value: bytes | None, what: str, build: Callable[[Any, Any], T]) -> T:
    """``build(key JSON, value JSON or None)``; bytes that are not JSON, and a
    ``build`` that fails on a missing or mistyped field, give CorruptRecordError."""
    try:
        k = json.loads(key)
        v = None if value is None else json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptRecordError(f"{what} record is not JSON: {exc}") from exc
    try:
        return build(k, v)
    except CorruptRecordError:
        raise
    except (KeyError, TypeError, IndexError, ValueError, OverflowError) as exc:
        raise CorruptRecordError(f"malformed {what} record {key!r}: {exc!r}") from exc


def key_type(k: Any, types: type[E], lengths: Mapping[E, int], default_length: int, what: str) -> E:
    """The record type (of ``types``) of key array ``k`` (element 0), after
    checking the array's length for that type (``lengths``, else
    ``default_length``) and that elements 1 and 2 (group id, then member id
    or topic) are strings. An unknown type is a ValueError (``decode_json``
    makes it "malformed")."""
    if not isinstance(k, list) or not k:
        raise CorruptRecordError(f"{what} record key is not a typed array: {k!r}")
    kind = types(json_int(k[0], what))
    if len(k) != lengths.get(kind, default_length) or not all(isinstance(x, str) for x in k[1:3]):
        raise CorruptRecordError(f"{what} record key has the wrong shape: {k!r}")
    return kind


def check_version(v: Any, version: int, what: str) -> dict[str, Any]:
    """Value object ``v`` if its ``"v"`` is a version from 1 to ``version``."""
    if not isinstance(v, dict) or not isinstance(v.get("v"), int) or v["v"] < 1:
        raise CorruptRecordError(f"{what} record value has no version: {v!r}")
    if v["v"] > version:
        raise CorruptRecordError(
            f"{what} record value version {v['v']} is newer than this broker's "
            f"{version}; upgrade the broker"
        )
    return v
