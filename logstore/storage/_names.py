"""Every file name of a data directory, made and parsed in one place.

Layout::

    <data-dir>/
      .lock                                  flock of the owning process (its pid inside)
      .clean_shutdown                        written last by a clean close; removed on open
      recovery-point-offset-checkpoint       "topic partition offset" per line
      log-start-offset-checkpoint            same format
      cleaner-offset-checkpoint              same format: each compacted partition's cleaned point
      topics.json                            topic names, partition counts, configs
      producer-id-block                      next block of producer ids to hand out
      users.json                             users and token hashes (logstore.security)
      acls.json                              ACLs (logstore.security)
      quotas.json                            per-principal quota overrides (logstore.security)
      <topic>-<partition>/
        00000000000000000000.log             frames, appended
        00000000000000000000.index           sparse offset index
        00000000000000000000.timeindex       sparse time index
        00000000000000000123.snapshot        idempotent-producer state at offset 123
        00000000000000000000.log.cleaned     a cleaner's unfinished rewrite (deleted on open)
      <uuid>.deleted/                        a partition being removed (finished on open)
      lost+found/                            left alone

Parsing is strict: a name that is none of these is an error naming the path,
except leftover ``*.tmp`` and ``*.cleaned`` files (deleted on open by the caller).
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Final

from logstore.errors import InvalidTopicNameError, StorageError

LOCK_FILE: Final = ".lock"
CLEAN_SHUTDOWN_FILE: Final = ".clean_shutdown"
RECOVERY_POINT_FILE: Final = "recovery-point-offset-checkpoint"
LOG_START_FILE: Final = "log-start-offset-checkpoint"
#: The cleaner's cleaned point per compacted partition (Kafka's name).
CLEANER_OFFSET_FILE: Final = "cleaner-offset-checkpoint"
TOPICS_FILE: Final = "topics.json"
PRODUCER_ID_FILE: Final = "producer-id-block"
#: Space kept free for metadata writes on a full disk (``_checkpoint.SpaceReserve``).
RESERVE_FILE: Final = ".space-reserve"
#: Written by logstore.security (users, ACLs, quota overrides), left alone here.
USERS_FILE: Final = "users.json"
ACLS_FILE: Final = "acls.json"
QUOTAS_FILE: Final = "quotas.json"
TMP_SUFFIX: Final = ".tmp"
#: A segment being rewritten by the cleaner (``<base>.log.cleaned``): complete
#: only once renamed over its ``.log``, so one found on open is deleted.
CLEANED_SUFFIX: Final = ".cleaned"
DELETED_SUFFIX: Final = ".deleted"
LOST_AND_FOUND: Final = "lost+found"

STORE_FILES: Final = frozenset(
    {LOCK_FILE, CLEAN_SHUTDOWN_FILE, RECOVERY_POINT_FILE, LOG_START_FILE, CLEANER_OFFSET_FILE,
     TOPICS_FILE, PRODUCER_ID_FILE, RESERVE_FILE, USERS_FILE, ACLS_FILE,
     QUOTAS_FILE}
)  # fmt: skip

MAX_TOPIC_NAME: Final = 249
#: Matched with ``fullmatch``: ``$`` in ``re.match`` also matches before a
#: trailing newline, which let ``"a\n"`` through and broke every checkpoint.
_TOPIC_RE: Final = re.compile(r"[a-zA-Z0-9._-]+")
_PARTITION_DIR_RE: Final = re.compile(r"([a-zA-Z0-9._-]+)-(0|[1-9][0-9]{0,4})")
#: Segment file names are the base offset in this many zero-padded digits
#: (Kafka's 20: enough for any non-negative int64, 19 digits), so that they
#: sort by offset as strings.
OFFSET_DIGITS: Final = 20
_SEGMENT_RE: Final = re.compile(rf"([0-9]{{{OFFSET_DIGITS}}})\.(log|index|timeindex|snapshot)")


class FileKind(Enum):
    LOG = "log"
    INDEX = "index"
    TIMEINDEX = "timeindex"
    SNAPSHOT = "snapshot"


def check_topic_name(name: object, *, internal: bool = False) -> str:
    """Return ``name`` if it is a valid topic name, else raise InvalidTopicNameError.

    Kafka's rules: 1-249 characters of ``[a-zA-Z0-9._-]``, not ``.`` or
    ``..``. Names starting with ``__`` are reserved for internal topics. Such
    a name can never escape the data directory (no ``/``, not ``..``).
    """
    if not isinstance(name, str) or not name:
        raise InvalidTopicNameError("topic name must be a non-empty string")
    if len(name) > MAX_TOPIC_NAME:
        raise InvalidTopicNameError(
            f"topic name is {len(name)} characters; the limit is {MAX_TOPIC_NAME}"
        )
    if name in (".", ".."):
        raise InvalidTopicNameError(f"topic name cannot be {name!r}")
    if not _TOPIC_RE.fullmatch(name):
        raise InvalidTopicNameError(
            f"topic name {name!r} has characters other than ASCII letters, digits, '.', '_', '-'"
        )
    if name.startswith("__") and not internal:
        raise InvalidTopicNameError(
            f"topic name {name!r} starts with '__', which is reserved for internal topics"
        )
    return name


def partition_dir(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def parse_partition_dir(name: str) -> tuple[str, int] | None:
    """``(topic, partition)`` for a partition directory name, else None."""
    m = _PARTITION_DIR_RE.fullmatch(name)
    if not m:
        return None
    return m.group(1), int(m.group(2))


def segment_file(base_offset: int, kind: FileKind) -> str:
    assert 0 <= base_offset < 10**OFFSET_DIGITS
    return f"{base_offset:0{OFFSET_DIGITS}d}.{kind.value}"


def parse_segment_file(path: str, name: str) -> tuple[int, FileKind] | None:
    """``(offset, kind)`` for a file of a partition directory.

    Returns None for a leftover ``*.tmp`` or ``*.cleaned`` file (the caller
    deletes it); raises StorageError naming the path for any other unknown name.
    """
    if name.endswith((TMP_SUFFIX, CLEANED_SUFFIX)):
        return None
    m = _SEGMENT_RE.fullmatch(name)
    if not m:
        raise StorageError(f"unknown file in partition directory: {path}/{name}")
    return int(m.group(1)), FileKind(m.group(2))
