"""The consumer-group coordinator: a replayable state machine (KIP-848's protocol).

Contract (CONVENTIONS.md rule 5, Kafka's ``GroupCoordinatorShard``):

* Every handler (``heartbeat``, ``commit_offsets``, ``delete_group``,
  ``reset_offsets``, ``tick``, ``on_metadata``) validates, computes, and
  returns a :class:`Result`: the records to append to ``__consumer_offsets``
  and the reply. It changes no group state. A handler that raises (a typed
  :mod:`logstore.errors` error) returned nothing and changed nothing.
* Group state changes only in :meth:`Coordinator.replay`. The caller appends
  a result's records and then replays them (``apply`` does both halves for
  an in-memory caller) **before the next handler call**: handlers run one at
  a time on the current state (the broker serializes them on one thread).
* :meth:`Coordinator.load` replays a log from scratch; the state equals the
  live one's (``snapshot()``). A restart is just a replay.

Two things are deliberately not group state and not in records, as in Kafka:
the topic metadata (partition counts, an input given by ``on_metadata``) and
the liveness timers (session and revocation deadlines, refreshed by the
handlers; after ``load`` every member's timers are re-armed from the load
time, so a restart gives each member a full session to come back).

Protocol, per heartbeat:

* epoch 0 joins (a new or reset member owns nothing); -1 leaves at once;
  -2 is a static member's temporary leave (its partitions stay reserved for
  its instance id until the session times out). A join with the instance id
  of an existing member replaces that member: the new member id inherits its
  assignment and epoch, nobody else moves, and the old id is fenced.
* A change of membership, subscription or assignor bumps the group epoch and
  recomputes every member's target with the group's assignor (pure).
* Reconciliation is incremental: a member first has the partitions not in its
  target revoked (``revoking``; its epoch does not move); once its heartbeat's
  owned partitions show them released, it takes its epoch to the group epoch
  and gets the target partitions that no other member still owns (assigned or
  revoking). So no partition is ever owned by two members; partitions that
  do not move are never interrupted.
* Fencing: a heartbeat with an unknown member id, or an epoch other than the
  member's (or its previous one, for a reply that was lost, when it owns
  nothing new), is refused; so are commits with a stale epoch or for a
  partition the member does not own. A member silent for
  ``session_timeout_ms``, or holding revoked partitions longer than its
  rebalance timeout, is removed by ``tick``.
* Offsets of a group without members expire ``offsets_retention_ms`` after
  the later of the last commit and the moment it became empty; the group goes
  with them. A group that becomes empty with no offsets is deleted at once.

Thread-safety: none; one thread calls it (the broker's coordinator thread).
Memory: bounded by ``GroupConfig`` (groups, members per group, committed
partitions per group, id and metadata lengths).
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import re2  # type: ignore[import-untyped]  # google-re2 ships no stubs

from logstore.coordinator._assignors import ASSIGNORS, AssignorMember
from logstore.coordinator._config import GroupConfig
from logstore.coordinator._group import (
    JOIN_EPOCH,
    LEAVE_EPOCH,
    STATIC_LEAVE_EPOCH,
    CommittedOffset,
    Group,
    GroupDescription,
    GroupListing,
    HeartbeatReply,
    MemberDescription,
    ResetPlanEntry,
)
from logstore.coordinator._records import (
    CoordinatorRecord,
    GroupMetadataKey,
    GroupMetadataValue,
    MemberKey,
    MemberValue,
    OffsetCommitKey,
    OffsetCommitValue,
    TargetAssignmentKey,
    TargetAssignmentValue,
    TopicPartition,
)
from logstore.errors import (
    FencedMemberEpochError,
    GroupIdNotFoundError,
    GroupMaxSizeReachedError,
    GroupNotEmptyError,
    InvalidGroupRequestError,
    PartitionNotAssignedError,
    StaleMemberEpochError,
    TooManyCommittedPartitionsError,
    TooManyGroupsError,
    UnknownMemberIdError,
)

T = TypeVar("T")

#: How many partitions an error message lists before "...".
_SHOWN = 5


@dataclass(frozen=True)
class Result(Generic[T]):
    """Records to append (in order), then the reply for the caller."""

    records: tuple[CoordinatorRecord, ...]
    reply: T


@dataclass(frozen=True)
class TickResult:
    """Records that expire members and offsets, and the next time ``tick``
    has work (None: nothing pending), so a timer can be armed exactly."""

    records: tuple[CoordinatorRecord, ...]
    next_deadline_ms: int | None


class _Pattern(Protocol):
    def fullmatch(self, text: str) -> object | None: ...


# RE2 semantics, as Kafka's RE2J for KIP-848 subscriptions: matching is linear in
# the topic name, so a member's regex cannot stall the coordinator (Python's `re`
# backtracks: `(a+)+$` against 40 "a"s and a "b" takes minutes). No
# backreferences or lookaround. Errors are returned, not logged to stderr.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


@functools.lru_cache(maxsize=1024)
def _compile(regex: str) -> _Pattern:
    pattern: _Pattern = re2.compile(regex, _RE2_OPTIONS)
    return pattern


def regex_matches(regex: str, names: Iterable[str]) -> frozenset[str]:
    """The ``names`` a subscription regex selects: whole-name RE2 matches, never an
    internal ``__`` topic (the coordinator's rule; the broker's lag report uses it
    too). ``regex`` must be one the coordinator accepted."""
    pat = _compile(regex)
    return frozenset(t for t in names if not t.startswith("__") and pat.fullmatch(t) is not None)


def _regex_error(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def _fmt(tps: Iterable[TopicPartition]) -> str:
    items = sorted(tps)
    s = ", ".join(f"{t}:{p}" for t, p in items[:_SHOWN])
    return s + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


class Coordinator:
    """All consumer groups of one broker (see the module docstring)."""

    def __init__(
        self,
        config: GroupConfig | None = None,
        topics: Mapping[str, int] | None = None,
        id_factory: Callable[[], str] | None = None,
    ) -> None:
        self.config = config or GroupConfig()
        self._topics: dict[str, int] = dict(topics or {})
        self._new_id = id_factory or (lambda: str(uuid.uuid4()))
        self._groups: dict[str, Group] = {}
        # liveness timers, not group state (see the module docstring)
        self._session: dict[tuple[str, str], int] = {}
        self._revoke: dict[tuple[str, str], int] = {}

    # ---------------------------------------------------------------- replay

    @classmethod
    def load(
        cls,
        records: Iterable[CoordinatorRecord],
        *,
        config: GroupConfig | None = None,
        topics: Mapping[str, int] | None = None,
        now_ms: int = 0,
        id_factory: Callable[[], str] | None = None,
    ) -> Coordinator:
        """A coordinator rebuilt by replaying ``records`` in order, with every
        member's timers armed from ``now_ms``. Call ``on_metadata`` next if
        topics may have changed while it was down."""
        c = cls(config, topics, id_factory)
        for r in records:
            c.replay(r)
        c._arm_all(now_ms)
        return c

    def _arm_all(self, now_ms: int) -> None:
        for gid, g in self._groups.items():
            for mid, m in g.members.items():
                self._session[(gid, mid)] = now_ms + self.config.session_timeout_ms
                if m.revoking:
                    self._revoke[(gid, mid)] = now_ms + m.rebalance_timeout_ms

    def replay(self, record: CoordinatorRecord) -> None:
        """Apply one record: the only place group state changes."""
        key, value = record.key, record.value
        gid = key.group_id
        g = self._groups.get(gid)
        if value is None:
            if g is None:
                return
            if isinstance(key, GroupMetadataKey):
                del self._groups[gid]
                for k in [k for k in self._session if k[0] == gid]:
                    del self._session[k]
                for k in [k for k in self._revoke if k[0] == gid]:
                    del self._revoke[k]
            elif isinstance(key, MemberKey):
                gone = g.members.pop(key.member_id, None)
                if gone is not None:
                    g.disown(key.member_id, gone)
                self._session.pop((gid, key.member_id), None)
                self._revoke.pop((gid, key.member_id), None)
            elif isinstance(key, TargetAssignmentKey):
                g.targets.pop(key.member_id, None)
            else:
                g.offsets.pop((key.topic, key.partition), None)
            return
        if g is None:
            g = self._groups[gid] = Group(gid, assignor=self.config.default_assignor)
        if isinstance(value, GroupMetadataValue):
            g.epoch, g.assignor, g.empty_since_ms = (
                value.epoch,
                value.assignor,
                value.empty_since_ms,
            )
        elif isinstance(value, MemberValue):
            assert isinstance(key, MemberKey)
            before = g.members.get(key.member_id)
            if before is not None:
                g.disown(key.member_id, before)
            g.members[key.member_id] = value
            for tp in value.assigned | value.revoking:
                assert g.owners.setdefault(tp, key.member_id) == key.member_id, tp
                g.owners[tp] = key.member_id
            if not value.revoking:
                self._revoke.pop((gid, key.member_id), None)
        elif isinstance(value, TargetAssignmentValue):
            assert isinstance(key, TargetAssignmentKey)
            g.targets[key.member_id] = value
        else:
            assert isinstance(key, OffsetCommitKey)
            g.offsets[(key.topic, key.partition)] = value

    def apply(self, result: Result[T]) -> T:
        """Replay ``result``'s records and return its reply (for callers that
        keep the log themselves, like tests; the broker appends first)."""
        for r in result.records:
            self.replay(r)
        return result.reply

    def snapshot(self) -> dict[str, Any]:
        """The whole replayed state as plain, comparable data (timers and
        topic metadata excluded)."""
        return {
            gid: {
                "epoch": g.epoch,
                "assignor": g.assignor,
                "empty_since_ms": g.empty_since_ms,
                "members": dict(g.members),
                "targets": dict(g.targets),
                "offsets": dict(g.offsets),
            }
            for gid, g in sorted(self._groups.items())
        }

    # ------------------------------------------------------------ validation

    def _check_id(self, what: str, value: str, limit_name: str, *, empty_ok: bool = False) -> None:
        limit = getattr(self.config, limit_name)
        if not isinstance(value, str) or (not value and not empty_ok):
            raise InvalidGroupRequestError(f"{what} must be a non-empty string")
        if len(value) > limit:
            raise InvalidGroupRequestError(
                f"{what} is {len(value)} characters; the limit is {limit} ({limit_name})"
            )

    def _check_subscription(self, topics: Sequence[str] | None, regex: str | None) -> None:
        if topics is not None and regex is not None:
            raise InvalidGroupRequestError("subscribe to topic names or to a regex, not both")
        if topics is not None:
            n = len(set(topics))
            if n > self.config.max_subscribed_topics:
                raise InvalidGroupRequestError(
                    f"subscription names {n} topics; the limit is "
                    f"{self.config.max_subscribed_topics} (max_subscribed_topics)"
                )
            if any(not isinstance(t, str) or not t for t in topics):
                raise InvalidGroupRequestError("subscribed topic names must be non-empty strings")
        if regex is not None:
            if not regex or len(regex) > self.config.max_regex_length:
                raise InvalidGroupRequestError(
                    f"subscription regex must be 1..{self.config.max_regex_length} "
                    f"characters (max_regex_length), not {len(regex)}"
                )
            try:
                _compile(regex)
            except re2.error as exc:
                raise InvalidGroupRequestError(
                    f"subscription regex {regex!r} (RE2 syntax): {_regex_error(exc)}"
                ) from exc

    # ------------------------------------------------------------- heartbeat

    def heartbeat(
        self,
        group_id: str,
        member_id: str,
        member_epoch: int,
        *,
        now_ms: int,
        instance_id: str | None = None,
        topics: Sequence[str] | None = None,
        regex: str | None = None,
        assignor: str | None = None,
        owned: Iterable[TopicPartition] | None = None,
        rebalance_timeout_ms: int = -1,
        client_id: str = "",
        host: str = "",
    ) -> Result[HeartbeatReply]:
        """Join (epoch 0), heartbeat (the epoch last received), or leave (-1,
        or -2 for a static member). ``topics``/``regex``/``assignor`` None mean
        "unchanged" after the join; ``owned`` None means "not reported" (the
        member acknowledges no revocation). Raises UnknownMemberIdError or
        FencedMemberEpochError (rejoin with epoch 0), GroupMaxSizeReachedError,
        TooManyGroupsError, InvalidGroupRequestError."""
        cfg = self.config
        self._check_id("group id", group_id, "max_group_id_length")
        self._check_id("member id", member_id, "max_member_id_length", empty_ok=True)
        if instance_id is not None:
            self._check_id("instance id", instance_id, "max_instance_id_length")
        if len(client_id) > cfg.max_client_id_length:
            raise InvalidGroupRequestError(
                f"client id is {len(client_id)} characters; the limit is "
                f"{cfg.max_client_id_length} (max_client_id_length)"
            )
        if len(host) > cfg.max_host_length:
            raise InvalidGroupRequestError(
                f"host is {len(host)} characters; the limit is "
                f"{cfg.max_host_length} (max_host_length)"
            )
        self._check_subscription(topics, regex)
        if assignor is not None and assignor not in ASSIGNORS:
            raise InvalidGroupRequestError(
                f"unsupported assignor {assignor!r}; the coordinator offers {', '.join(ASSIGNORS)}"
            )
        if rebalance_timeout_ms > cfg.max_rebalance_timeout_ms:
            raise InvalidGroupRequestError(
                f"rebalance_timeout_ms {rebalance_timeout_ms} exceeds the limit "
                f"{cfg.max_rebalance_timeout_ms} (max_rebalance_timeout_ms)"
            )
        owned_set = None if owned is None else frozenset((str(t), int(p)) for t, p in owned)
        g = self._groups.get(group_id)
        if member_epoch in (LEAVE_EPOCH, STATIC_LEAVE_EPOCH):
            return self._leave(group_id, g, member_id, member_epoch, now_ms)
        if member_epoch == JOIN_EPOCH:
            return self._join(
                group_id,
                g,
                member_id,
                instance_id=instance_id,
                topics=topics,
                regex=regex,
                assignor=assignor,
                rebalance_timeout_ms=rebalance_timeout_ms,
                client_id=client_id,
                host=host,
                now_ms=now_ms,
            )
        if member_epoch < 0:
            raise InvalidGroupRequestError(
                f"member epoch {member_epoch} is not valid: 0 joins, -1 leaves, "
                "-2 leaves a static member, a positive epoch heartbeats"
            )
        m = self._member(group_id, g, member_id)
        assert g is not None
        if member_epoch != m.epoch and not (
            member_epoch == m.previous_epoch and owned_set is not None and owned_set <= m.assigned
        ):
            raise FencedMemberEpochError(
                f"member {member_id} of group {group_id} sent epoch {member_epoch} but its "
                f"epoch is {m.epoch}: it was fenced; release all partitions and rejoin with epoch 0"
            )
        new = m
        if topics is not None:
            new = dataclasses.replace(new, topics=tuple(sorted(set(topics))), regex=None)
        if regex is not None:
            new = dataclasses.replace(new, topics=(), regex=regex)
        if assignor is not None:
            new = dataclasses.replace(new, assignor=assignor)
        if client_id:
            new = dataclasses.replace(new, client_id=client_id)
        if host:
            new = dataclasses.replace(new, host=host)
        if rebalance_timeout_ms > 0:
            new = dataclasses.replace(new, rebalance_timeout_ms=rebalance_timeout_ms)
        records, final = self._plan(
            group_id, g, upserts={member_id: new}, now_ms=now_ms, acting=member_id, owned=owned_set
        )
        assert final is not None
        self._touch(group_id, member_id, final, now_ms)
        return Result(tuple(records), self._reply(member_id, final))

    def _member(self, group_id: str, g: Group | None, member_id: str) -> MemberValue:
        m = g.members.get(member_id) if g is not None else None
        if m is None or m.epoch == STATIC_LEAVE_EPOCH:
            raise UnknownMemberIdError(
                f"group {group_id} has no member {member_id!r} (it left, timed out or was "
                "fenced); release all partitions and rejoin with epoch 0"
            )
        return m

    def _reply(self, member_id: str, m: MemberValue) -> HeartbeatReply:
        return HeartbeatReply(
            member_id, m.epoch, self.config.heartbeat_interval_ms, m.assigned, m.revoking
        )

    def _touch(self, gid: str, mid: str, m: MemberValue, now_ms: int) -> None:
        """Refresh the liveness timers after a successful heartbeat."""
        self._session[(gid, mid)] = now_ms + self.config.session_timeout_ms
        if not m.revoking:
            self._revoke.pop((gid, mid), None)
        elif (gid, mid) not in self._revoke:
            self._revoke[(gid, mid)] = now_ms + m.rebalance_timeout_ms

    def _join(
        self,
        group_id: str,
        g: Group | None,
        member_id: str,
        *,
        instance_id: str | None,
        topics: Sequence[str] | None,
        regex: str | None,
        assignor: str | None,
        rebalance_timeout_ms: int,
        client_id: str,
        host: str,
        now_ms: int,
    ) -> Result[HeartbeatReply]:
        cfg = self.config
        if topics is None and regex is None:
            raise InvalidGroupRequestError("a join (epoch 0) must give topic names or a regex")
        members = g.members if g is not None else {}
        previous = None
        if instance_id is not None:
            previous = next(
                (mid for mid, m in sorted(members.items()) if m.instance_id == instance_id), None
            )
        if not member_id:
            member_id = self._new_id()
            assert member_id not in members, "id_factory returned an id already in use"
        if g is None and len(self._groups) >= cfg.max_groups:
            raise TooManyGroupsError(
                f"the coordinator holds {len(self._groups)} groups; the limit is "
                f"{cfg.max_groups} (max_groups)"
            )
        if (
            previous is None
            and member_id not in members
            and len(members) >= cfg.max_members_per_group
        ):
            raise GroupMaxSizeReachedError(
                f"group {group_id} has {len(members)} members; the limit is "
                f"{cfg.max_members_per_group} (max_members_per_group)"
            )
        base = MemberValue(
            instance_id=instance_id,
            client_id=client_id,
            host=host,
            topics=tuple(sorted(set(topics))) if topics is not None else (),
            regex=regex,
            assignor=assignor,
            rebalance_timeout_ms=rebalance_timeout_ms
            if rebalance_timeout_ms > 0
            else cfg.rebalance_timeout_ms,
            epoch=0,
            previous_epoch=0,
            assigned=frozenset(),
            revoking=frozenset(),
        )
        removals: set[str] = set()
        inherit: tuple[str, str] | None = None
        if previous is not None:
            # Static member back (clean -2 leave or a crash): take over its
            # assignment; the old member id is fenced. Partitions it was
            # revoking are released, since that process is gone.
            old = members[previous]
            epoch = old.previous_epoch if old.epoch == STATIC_LEAVE_EPOCH else old.epoch
            base = dataclasses.replace(
                base, epoch=epoch, previous_epoch=epoch, assigned=old.assigned
            )
            if previous != member_id:
                removals.add(previous)
                inherit = (previous, member_id)
        records, final = self._plan(
            group_id,
            g,
            upserts={member_id: base},
            removals=removals,
            inherit=inherit,
            now_ms=now_ms,
            acting=member_id,
            owned=None,
        )
        assert final is not None
        if previous is not None and previous != member_id:
            self._session.pop((group_id, previous), None)
            self._revoke.pop((group_id, previous), None)
        self._revoke.pop((group_id, member_id), None)
        self._touch(group_id, member_id, final, now_ms)
        return Result(tuple(records), self._reply(member_id, final))

    def _leave(
        self, group_id: str, g: Group | None, member_id: str, epoch: int, now_ms: int
    ) -> Result[HeartbeatReply]:
        m = self._member(group_id, g, member_id)
        assert g is not None
        reply = HeartbeatReply(member_id, epoch, self.config.heartbeat_interval_ms, frozenset())
        if epoch == LEAVE_EPOCH or m.instance_id is None:
            records, _ = self._plan(group_id, g, removals={member_id}, now_ms=now_ms)
            return Result(tuple(records), dataclasses.replace(reply, member_epoch=LEAVE_EPOCH))
        # Static leave: keep the member and its partitions for its instance id.
        departed = dataclasses.replace(
            m, epoch=STATIC_LEAVE_EPOCH, previous_epoch=m.epoch, revoking=frozenset()
        )
        records, _ = self._plan(group_id, g, upserts={member_id: departed}, now_ms=now_ms)
        self._session[(group_id, member_id)] = now_ms + self.config.session_timeout_ms
        self._revoke.pop((group_id, member_id), None)
        return Result(tuple(records), reply)

    # ------------------------------------------------------------ the planner

    def _resolve(self, m: MemberValue) -> frozenset[str]:
        """The existing topics a member subscribes to (regexes never match
        internal ``__`` topics)."""
        if m.regex is not None:
            return regex_matches(m.regex, self._topics)
        return frozenset(t for t in m.topics if t in self._topics)

    def _group_assignor(self, members: Mapping[str, MemberValue]) -> str:
        """The assignor most members name (ties: alphabetical), else the default."""
        counts = Counter(m.assignor for m in members.values() if m.assignor is not None)
        if not counts:
            return self.config.default_assignor
        return min(counts, key=lambda a: (-counts[a], a))

    def _plan(
        self,
        gid: str,
        g: Group | None,
        *,
        now_ms: int,
        upserts: Mapping[str, MemberValue] | None = None,
        removals: set[str] | frozenset[str] = frozenset(),
        inherit: tuple[str, str] | None = None,
        acting: str | None = None,
        owned: frozenset[TopicPartition] | None = None,
        recompute: bool = False,
    ) -> tuple[list[CoordinatorRecord], MemberValue | None]:
        """The records that take group ``gid`` from its state to one with
        ``removals`` gone and ``upserts`` in, its target recomputed (and the
        epoch bumped) if membership, subscriptions or the assignor changed (or
        ``recompute`` and the target differs), and ``acting`` reconciled.
        Pure: reads state, writes nothing. Returns the records and the acting
        member's final value."""
        upserts = upserts or {}
        if (
            g is not None
            and acting is not None
            and not removals
            and inherit is None
            and not recompute
            and upserts.keys() == {acting}
            and acting in g.members
            and _subscription(upserts[acting]) == _subscription(g.members[acting])
        ):
            # The common case, a heartbeat that changes no subscription: only
            # this member moves, so work is O(its partitions), not O(group);
            # who else holds a partition comes from the replayed owner map.
            group = g
            current = g.members[acting]
            target = g.targets[acting].partitions if acting in g.targets else frozenset()

            def taken(tp: TopicPartition) -> bool:
                return group.owners.get(tp, acting) != acting

            moved = _reconcile(upserts[acting], target, g.epoch, owned, taken)
            if moved == current:
                return [], moved
            return [CoordinatorRecord(MemberKey(gid, acting), moved)], moved
        old_members = g.members if g is not None else {}
        old_targets = g.targets if g is not None else {}
        old_epoch = g.epoch if g is not None else 0
        members = {k: v for k, v in old_members.items() if k not in removals}
        members.update(upserts)
        targets = {k: v for k, v in old_targets.items() if k in members}
        if inherit is not None and inherit[0] in old_targets:
            targets[inherit[1]] = old_targets[inherit[0]]
        rename = {inherit[0]: inherit[1]} if inherit is not None else {}

        old_subs = {rename.get(k, k): _subscription(v) for k, v in old_members.items()}
        new_subs = {k: _subscription(v) for k, v in members.items()}
        assignor = self._group_assignor(members)
        changed = old_subs != new_subs or (g is not None and assignor != g.assignor)
        epoch = old_epoch
        if (changed or recompute) and members:
            fn = ASSIGNORS[assignor]
            computed = fn(
                {
                    mid: AssignorMember(
                        self._resolve(m),
                        targets[mid].partitions if mid in targets else frozenset(),
                    )
                    for mid, m in members.items()
                },
                self._topics,
            )
            differs = any(
                mid not in targets or targets[mid].partitions != parts
                for mid, parts in computed.items()
            )
            if changed or differs:
                epoch = old_epoch + 1
                for mid, parts in computed.items():
                    if mid not in targets or targets[mid].partitions != parts:
                        targets[mid] = TargetAssignmentValue(epoch, parts)
        for mid, m in members.items():
            if m.epoch == STATIC_LEAVE_EPOCH:
                # A static member away holds only what is still its target;
                # its process is gone, so there is nothing to revoke from it.
                keep = m.assigned & (targets[mid].partitions if mid in targets else frozenset())
                if keep != m.assigned:
                    members[mid] = dataclasses.replace(m, assigned=keep)
        final = None
        if acting is not None and acting in members:
            others: set[TopicPartition] = set()
            for mid, m in members.items():
                if mid != acting:
                    others |= m.assigned | m.revoking
            target = targets[acting].partitions if acting in targets else frozenset()
            final = _reconcile(members[acting], target, epoch, owned, others.__contains__)
            members[acting] = final

        records: list[CoordinatorRecord] = []
        if not members:
            if g is None:
                return records, final
            gone = [CoordinatorRecord(MemberKey(gid, k), None) for k in sorted(old_members)]
            gone += [
                CoordinatorRecord(TargetAssignmentKey(gid, k), None) for k in sorted(old_targets)
            ]
            if not g.offsets:
                # nothing left worth keeping: delete the group (metadata last)
                return [*gone, CoordinatorRecord(GroupMetadataKey(gid), None)], final
            meta = GroupMetadataValue(old_epoch + 1, g.assignor, now_ms)
            return [CoordinatorRecord(GroupMetadataKey(gid), meta), *gone], final
        meta = GroupMetadataValue(epoch, assignor, -1)
        if g is None or (g.epoch, g.assignor, g.empty_since_ms) != (
            meta.epoch,
            meta.assignor,
            meta.empty_since_ms,
        ):
            records.append(CoordinatorRecord(GroupMetadataKey(gid), meta))
        for mid in sorted(old_members):
            if mid not in members:
                records.append(CoordinatorRecord(MemberKey(gid, mid), None))
        for mid in sorted(old_targets):
            if mid not in targets:
                records.append(CoordinatorRecord(TargetAssignmentKey(gid, mid), None))
        for mid in sorted(targets):
            if old_targets.get(mid) != targets[mid]:
                records.append(CoordinatorRecord(TargetAssignmentKey(gid, mid), targets[mid]))
        # The acting member last: it may take partitions that another record
        # of this result releases (a static member away shrinking to its
        # target), and every prefix of the log must have one owner per partition.
        for mid in sorted(members, key=lambda k: (k == acting, k)):
            if old_members.get(mid) != members[mid]:
                records.append(CoordinatorRecord(MemberKey(gid, mid), members[mid]))
        return records, final

    # --------------------------------------------------------------- offsets

    def commit_offsets(
        self,
        group_id: str,
        member_id: str,
        member_epoch: int,
        offsets: Mapping[TopicPartition, tuple[int, str]],
        *,
        now_ms: int,
    ) -> Result[None]:
        """Commit ``{(topic, partition): (next offset, metadata)}`` for a member
        at its current epoch, for partitions it owns. All or nothing. Raises
        UnknownMemberIdError, StaleMemberEpochError (heartbeat first),
        FencedMemberEpochError, PartitionNotAssignedError,
        InvalidGroupRequestError (offset < 0, metadata above
        max_commit_metadata_bytes, too many partitions),
        TooManyCommittedPartitionsError (max_committed_partitions_per_group)."""
        cfg = self.config
        self._check_id("group id", group_id, "max_group_id_length")
        if len(offsets) > cfg.max_partitions_per_request:
            raise InvalidGroupRequestError(
                f"commit names {len(offsets)} partitions; the limit is "
                f"{cfg.max_partitions_per_request} (max_partitions_per_request)"
            )
        g = self._groups.get(group_id)
        m = self._member(group_id, g, member_id)
        assert g is not None
        if member_epoch < m.epoch:
            raise StaleMemberEpochError(
                f"commit with member epoch {member_epoch} but member {member_id} is at "
                f"{m.epoch}: heartbeat for the new assignment, then commit again"
            )
        if member_epoch > m.epoch:
            raise FencedMemberEpochError(
                f"commit with member epoch {member_epoch} but member {member_id} is at "
                f"{m.epoch}: rejoin with epoch 0"
            )
        held = m.assigned | m.revoking
        missing = [tp for tp in offsets if tp not in held]
        if missing:
            raise PartitionNotAssignedError(
                f"member {member_id} of group {group_id} does not own {_fmt(missing)}; "
                "nothing was committed"
            )
        records = self._offset_records(group_id, g, offsets, now_ms)
        return Result(tuple(records), None)

    def _offset_records(
        self,
        group_id: str,
        g: Group | None,
        offsets: Mapping[TopicPartition, tuple[int, str]],
        now_ms: int,
    ) -> list[CoordinatorRecord]:
        cfg = self.config
        existing = g.offsets if g is not None else {}
        fresh = sum(1 for tp in offsets if tp not in existing)
        if len(existing) + fresh > cfg.max_committed_partitions_per_group:
            raise TooManyCommittedPartitionsError(
                f"group {group_id} would hold {len(existing) + fresh} committed partitions; "
                f"the limit is {cfg.max_committed_partitions_per_group} "
                "(max_committed_partitions_per_group)"
            )
        records = []
        for (topic, partition), (offset, metadata) in sorted(offsets.items()):
            if not isinstance(offset, int) or offset < 0:
                raise InvalidGroupRequestError(
                    f"offset {offset!r} for {topic}:{partition} must be a non-negative integer"
                )
            size = len(metadata.encode())
            if size > cfg.max_commit_metadata_bytes:
                raise InvalidGroupRequestError(
                    f"commit metadata for {topic}:{partition} is {size} bytes; the limit is "
                    f"{cfg.max_commit_metadata_bytes} (max_commit_metadata_bytes)"
                )
            records.append(
                CoordinatorRecord(
                    OffsetCommitKey(group_id, topic, partition),
                    OffsetCommitValue(offset, metadata, now_ms),
                )
            )
        return records

    def fetch_offsets(
        self, group_id: str, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, CommittedOffset]:
        """Committed offsets of ``partitions`` (all when None); partitions
        without one, and unknown groups, are simply absent."""
        g = self._groups.get(group_id)
        if g is None:
            return {}
        keys = (
            sorted(g.offsets)
            if partitions is None
            else [tp for tp in partitions if tp in g.offsets]
        )
        return {tp: _committed(g.offsets[tp]) for tp in keys}

    # ------------------------------------------------------------------ admin

    def list_groups(self) -> list[GroupListing]:
        """Every group, by id."""
        return [
            GroupListing(gid, g.state(), len(g.members)) for gid, g in sorted(self._groups.items())
        ]

    def describe_group(self, group_id: str) -> GroupDescription:
        """State, epoch, assignor, members and committed offsets. Raises
        GroupIdNotFoundError."""
        g = self._group(group_id)
        members = tuple(
            MemberDescription(
                member_id=mid,
                instance_id=m.instance_id,
                client_id=m.client_id,
                host=m.host,
                member_epoch=m.epoch,
                topics=m.topics,
                regex=m.regex,
                assignor=m.assignor,
                assigned=m.assigned,
                revoking=m.revoking,
                target=g.targets[mid].partitions if mid in g.targets else frozenset(),
            )
            for mid, m in sorted(g.members.items())
        )
        offsets = {tp: _committed(v) for tp, v in sorted(g.offsets.items())}
        return GroupDescription(group_id, g.state(), g.epoch, g.assignor, members, offsets)

    def _group(self, group_id: str) -> Group:
        g = self._groups.get(group_id)
        if g is None:
            raise GroupIdNotFoundError(f"consumer group {group_id!r} does not exist")
        return g

    def _require_empty(self, g: Group, what: str) -> None:
        if g.members:
            raise GroupNotEmptyError(
                f"cannot {what} group {g.group_id}: it has {len(g.members)} member(s); "
                "stop them first (static members count until their session times out)"
            )

    def delete_group(self, group_id: str) -> Result[None]:
        """Tombstones for everything of an empty group. Raises
        GroupIdNotFoundError, GroupNotEmptyError."""
        g = self._group(group_id)
        self._require_empty(g, "delete")
        return Result(tuple(_group_tombstones(g)), None)

    def reset_offsets(
        self,
        group_id: str,
        partitions: Iterable[TopicPartition],
        resolve: Callable[[TopicPartition, int | None], int],
        *,
        now_ms: int,
        dry_run: bool = False,
    ) -> Result[tuple[ResetPlanEntry, ...]]:
        """Set the committed offset of each partition to ``resolve(tp, current
        committed or None)`` (the broker resolves earliest/latest/time/shift
        against the log; the coordinator does no I/O). Only for a group without
        members; ``dry_run`` returns the plan and no records. Raises
        GroupIdNotFoundError, GroupNotEmptyError, InvalidGroupRequestError."""
        g = self._group(group_id)
        self._require_empty(g, "reset offsets of")
        tps = sorted(set(partitions))
        if len(tps) > self.config.max_partitions_per_request:
            raise InvalidGroupRequestError(
                f"reset names {len(tps)} partitions; the limit is "
                f"{self.config.max_partitions_per_request} (max_partitions_per_request)"
            )
        plan = []
        new: dict[TopicPartition, tuple[int, str]] = {}
        for tp in tps:
            cur = g.offsets.get(tp)
            target = resolve(tp, cur.offset if cur else None)
            plan.append(ResetPlanEntry(tp[0], tp[1], cur.offset if cur else None, target))
            new[tp] = (target, cur.metadata if cur else "")
        records = self._offset_records(group_id, g, new, now_ms)
        return Result(() if dry_run else tuple(records), tuple(plan))

    # ------------------------------------------------------ timers, metadata

    def tick(self, now_ms: int) -> TickResult:
        """Records removing members whose session or revocation deadline has
        passed and expiring offsets of long-empty groups, plus the next
        deadline after those."""
        records: list[CoordinatorRecord] = []
        deadlines: list[int] = []
        for gid, g in sorted(self._groups.items()):
            expired = set()
            for mid in g.members:
                for timers in (self._session, self._revoke):
                    d = timers.get((gid, mid))
                    if d is None:
                        continue
                    if d <= now_ms:
                        expired.add(mid)
                    else:
                        deadlines.append(d)
            if expired:
                recs, _ = self._plan(gid, g, removals=expired, now_ms=now_ms)
                records += recs
            elif not g.members:
                last = max((v.commit_ms for v in g.offsets.values()), default=-1)
                expiry = max(last, g.empty_since_ms) + self.config.offsets_retention_ms
                if expiry <= now_ms:
                    records += _group_tombstones(g)
                else:
                    deadlines.append(expiry)
        return TickResult(tuple(records), min(deadlines) if deadlines else None)

    def on_metadata(self, topics: Mapping[str, int], *, now_ms: int) -> Result[None]:
        """Take new topic metadata (name -> partition count; partitions added,
        topics created or deleted) and return the records that change every
        affected group's target assignment."""
        self._topics = dict(topics)
        records: list[CoordinatorRecord] = []
        for gid, g in sorted(self._groups.items()):
            if g.members:
                recs, _ = self._plan(gid, g, now_ms=now_ms, recompute=True)
                records += recs
        return Result(tuple(records), None)


def _subscription(m: MemberValue) -> tuple[tuple[str, ...], str | None, str | None]:
    """What of a member the assignor depends on: a change bumps the group epoch."""
    return (m.topics, m.regex, m.assignor)


def _reconcile(
    m: MemberValue,
    target: frozenset[TopicPartition],
    epoch: int,
    owned: frozenset[TopicPartition] | None,
    taken: Callable[[TopicPartition], bool],
) -> MemberValue:
    """One step of a member toward its target (see the module docstring)."""
    if m.epoch == STATIC_LEAVE_EPOCH:
        return m
    revoking = m.revoking if owned is None else m.revoking & owned
    if revoking:
        return dataclasses.replace(m, revoking=revoking)
    drop = m.assigned - target
    if drop:
        # first release what moves away; the epoch moves only afterwards
        return dataclasses.replace(m, assigned=m.assigned & target, revoking=drop)
    assigned = m.assigned | frozenset(tp for tp in target - m.assigned if not taken(tp))
    if m.epoch != epoch:
        return dataclasses.replace(
            m, assigned=assigned, revoking=frozenset(), epoch=epoch, previous_epoch=m.epoch
        )
    return dataclasses.replace(m, assigned=assigned, revoking=frozenset())


def _committed(v: OffsetCommitValue) -> CommittedOffset:
    return CommittedOffset(v.offset, v.metadata, v.commit_ms, v.leader_epoch)


def _group_tombstones(g: Group) -> list[CoordinatorRecord]:
    gid = g.group_id
    out = [CoordinatorRecord(OffsetCommitKey(gid, t, p), None) for t, p in sorted(g.offsets)]
    out += [CoordinatorRecord(MemberKey(gid, k), None) for k in sorted(g.members)]
    out += [CoordinatorRecord(TargetAssignmentKey(gid, k), None) for k in sorted(g.targets)]
    out.append(CoordinatorRecord(GroupMetadataKey(gid), None))
    return out
