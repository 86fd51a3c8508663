"""The topic catalog: ``topics.json``, the source of truth for topic names,
partition counts and configs.

Format (unchanged; JSON, ``indent=1``, keys sorted)::

    {
     "events": {
      "config": {"cleanup_policy": "delete", "index_interval_bytes": 4096, ...},
      "partitions": 3
     }
    }

Written atomically (``write_atomic``: temp file with ``O_EXCL``, fsync,
rename, fsync of the directory). Each write serialises only the topics that
changed and keeps the others' text in name order, so a create costs list
inserts and one join (C loops) plus the write, not a JSON dump of every topic
(at 2,000 topics that dump was ~1.8 ms of Python per create); the bytes are
those of ``json.dumps(..., indent=1, sort_keys=True)`` of the whole mapping.

Loading never deletes anything and never guesses: a missing catalog (with
partition directories present), a file that does not parse, or an entry that
is malformed (a name is checked as on creation, so ``../../x`` cannot escape
the data directory) raises :class:`CatalogError` with one line naming the
file and the way out, unless the caller asked to rebuild it from the
partition directories found.

Thread-safety: the owner (the store) serialises writes under its lock.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from logstore.config import MAX_PARTITIONS, TopicConfig
from logstore.errors import CatalogError, InvalidArgumentError

from ._checkpoint import SpaceReserve, write_atomic
from ._fs import FileSystem
from ._names import TOPICS_FILE, check_topic_name

log = logging.getLogger("logstore.storage")

#: The config a rebuilt topic gets when the catalog had no usable entry for it:
#: defaults, except that retention deletes nothing (a default 7-day retention
#: would delete data because metadata was lost). The operator sets it again.
KEEP_EVERYTHING = TopicConfig(retention_ms=-1, retention_bytes=-1)


@dataclass(frozen=True)
class TopicInfo:
    """A topic: its name, partition count and resolved configuration."""

    name: str
    partitions: int
    config: TopicConfig


def check_partition_count(n: object) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_PARTITIONS:
        raise InvalidArgumentError(
            f"partition count must be an integer in 1..{MAX_PARTITIONS}, got {n!r}"
        )


def rebuild_hint(data_dir: str) -> str:
    """How to rebuild the catalog, for error messages."""
    return (
        f"Store.open(..., rebuild_catalog=True) (`python -m logstore.storage rebuild-catalog "
        f"{data_dir}`)"
    )


class Catalog:
    """``topics.json`` of one data directory; see the module docstring."""

    def __init__(self, fs: FileSystem, data_dir: str) -> None:
        self.fs = fs
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, TOPICS_FILE)
        #: Set by the store: released when a write finds the disk full.
        self.reserve: SpaceReserve | None = None
        # The file as last written: sorted names and each one's text.
        self._names: list[str] = []
        self._parts: list[str] = []
        self._synced = False
        #: A write failed after the change it was for took effect (a topic
        #: deletion on a full disk): the next write rebuilds the whole file.
        self.dirty = False

    def load(self, found: Mapping[str, set[int]], rebuild: bool) -> dict[str, TopicInfo]:
        """The topics of the file, checked; with ``rebuild``, completed from
        ``found`` (partition directories: topic -> partition numbers, every
        topic getting its highest number plus one, configs kept where known)
        and written back."""
        topics: dict[str, TopicInfo] = {}
        damage: str | None = None
        if not self.fs.exists(self.path):
            damage = "is missing" if found else None
        else:
            raw = self.fs.read_file(self.path)  # an I/O error propagates as it is
            try:
                topics, bad = _parse(json.loads(raw), lenient=rebuild)
            except ValueError as exc:  # malformed JSON or entries (InvalidArgumentError)
                damage = f"is damaged ({exc})"
            else:
                if bad:
                    damage = f"is damaged ({'; '.join(bad)})"
        if rebuild:
            rebuilt = dict(topics)
            for name, parts in sorted(found.items()):
                try:
                    check_topic_name(name, internal=True)
                except InvalidArgumentError as exc:
                    raise CatalogError(f"cannot rebuild {self.path}: {exc}") from None
                old = rebuilt.get(name)
                count = max(parts) + 1
                if old is None or old.partitions < count:
                    cfg = old.config if old is not None else KEEP_EVERYTHING
                    rebuilt[name] = TopicInfo(name, count, cfg)
                    log.warning(
                        "rebuilt catalog entry: topic %s with %d partitions (%s)",
                        name, count,
                        "config kept" if old else
                        "config unknown: retention_ms=-1 and retention_bytes=-1 so nothing is "
                        "deleted; set the topic's retention again",
                    )  # fmt: skip
            if rebuilt != topics or damage is not None:
                self.write(rebuilt)
            return rebuilt
        if damage is not None:
            raise CatalogError(
                f"{self.path} {damage}; refusing to start so that no partition data is "
                f"deleted. Restore it from a backup, or rebuild it from the partition "
                f"directories with {rebuild_hint(self.data_dir)}; topics whose entry is "
                f"missing or damaged keep every record (retention -1) until their config is "
                f"set again"
            )
        return topics

    def write(self, topics: Mapping[str, TopicInfo], changed: Sequence[str] | None = None) -> None:
        """Write the file for ``topics``; ``changed`` names the topics that
        differ from the last write (None: rebuild all). The caller publishes
        the change after this returns."""
        if self._synced and not self.dirty and changed is not None:
            names, parts = list(self._names), list(self._parts)
            for name in changed:
                i = bisect.bisect_left(names, name)
                present = i < len(names) and names[i] == name
                if name in topics:
                    if present:
                        parts[i] = _entry(topics[name])
                    else:
                        names.insert(i, name)
                        parts.insert(i, _entry(topics[name]))
                elif present:
                    del names[i], parts[i]
        else:
            names = sorted(topics)
            parts = [_entry(topics[n]) for n in names]
        assert len(names) == len(topics)
        data = "{\n" + ",\n".join(parts) + "\n}" if parts else "{}"
        write_atomic(self.fs, self.path, data.encode(), self.reserve)
        self._names, self._parts = names, parts
        self._synced = True
        self.dirty = False


def _entry(t: TopicInfo) -> str:
    """One topic's text, as ``json.dumps(indent=1)`` of the whole catalog
    writes it (one level deeper than a dump of the entry alone)."""
    body = json.dumps(
        {"config": t.config.to_dict(), "partitions": t.partitions}, indent=1, sort_keys=True
    )
    return f" {json.dumps(t.name)}: " + body.replace("\n", "\n ")


def _parse(raw: object, *, lenient: bool = False) -> tuple[dict[str, TopicInfo], list[str]]:
    """Topics from the parsed file, and what was wrong with the entries left out.

    Strict (the default): InvalidArgumentError on the first malformed entry (a
    name that could escape the data directory included). Lenient (a rebuild):
    malformed entries are left out and described, so the good entries keep
    their configs and only the bad ones are rebuilt from their directories.
    """
    if not isinstance(raw, dict):
        raise InvalidArgumentError(f"expected an object, got {type(raw).__name__}")
    out: dict[str, TopicInfo] = {}
    bad: list[str] = []
    for name, t in raw.items():
        try:
            check_topic_name(name, internal=True)
            if not isinstance(t, dict) or not isinstance(t.get("config"), dict):
                raise InvalidArgumentError("expected partitions and config")
            check_partition_count(t.get("partitions"))
            out[name] = TopicInfo(name, t["partitions"], TopicConfig.from_mapping(t["config"]))
        except InvalidArgumentError as exc:
            why = f"topic {name!r}: {exc}"
            if not lenient:
                raise InvalidArgumentError(why) from None
            bad.append(why)
    return out, bad
