"""ShareGroups RPCs (``proto/logstore/v1/share.proto``): decode, one runtime call, encode.

Each handler turns the request into arguments of one
:class:`~logstore.share.ShareCoordinator` call made through
:class:`~logstore.broker._share_runtime.ShareRuntime` (serialized; records
appended and fsynced before the reply) and encodes the reply; ShareFetch is
the runtime's fetch (plan, read, acquire, long poll). Per-range
acknowledgement refusals are results in the reply (code 9, reason
INVALID_RECORD_STATE), not an RPC status: the other ranges still apply.
Coordinator errors go up to the one status boundary in the service wrapper.

DescribeShareGroup counts the log past a share partition's window (records no
fetch has read yet) as ``available`` or ``delayed`` by their
``logstore-deliver-at-ms`` header: the first :data:`DESCRIBE_SCAN_RECORDS`
offsets (at most :data:`DESCRIBE_SCAN_BYTES`) past the window are read and
counted exactly (``share_metadata``'s numpy columns; a backlog without the
header's name in its bytes and no compressed batch costs one substring
search); past them the split is an **estimate**: the rest of the backlog is
divided in the proportion of the scanned part. So a describe reads at most
1 MiB per partition, never the whole backlog.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from logstore.errors import (
    GroupAlreadyExistsError,
    InvalidConfigError,
    InvalidGroupRequestError,
    InvalidRecordStateError,
    UnknownTopicError,
)
from logstore.share import (
    Ack,
    AckError,
    AckKind,
    AckReply,
    Result,
    ShareCoordinator,
    ShareGroupConfig,
)
from logstore.v1 import share_pb2 as spb
from logstore.wire import (
    DELIVER_AT_HEADER,
    build_head,
    share_metadata,
    stored_frames,
    uniform_record_count,
)

from .._config import MAX_WAIT_MS_CAP
from .._runtime import Context, Runtime, current_slot
from .._share_runtime import DEFAULT_SHARE_FETCH_BYTES, DEFAULT_SHARE_FETCH_RECORDS
from .._state_runtime import now_ms

if TYPE_CHECKING:
    from logstore.share import AckResult, ShareGroupDescription
    from logstore.storage import Store

    from .._share_runtime import PartitionFrames, ShareRuntime

#: Offsets and bytes past a window that a describe reads to split the backlog
#: into available and delayed (module docstring).
DESCRIBE_SCAN_RECORDS: Final = 10_000
DESCRIBE_SCAN_BYTES: Final = 1 << 20
_DELIVER_AT_NAME: Final = DELIVER_AT_HEADER.encode()
#: The largest max_bytes a ShareFetch may ask for.
MAX_SHARE_FETCH_BYTES: Final = 64 << 20
#: google.rpc.Code numbers of per-range results.
_OK, _INVALID_ARGUMENT, _FAILED_PRECONDITION = 0, 3, 9

_KINDS: Final = {
    spb.ACCEPT: AckKind.ACCEPT,
    spb.RELEASE: AckKind.RELEASE,
    spb.REJECT: AckKind.REJECT,
    spb.RENEW: AckKind.RENEW,
}
_ACK_MESSAGES: Final = {
    AckError.NOT_ACQUIRED: "not acquired by this member (never delivered, released, or past "
    "the window)",
    AckError.LOCK_EXPIRED: "the lock expired (the records are or will be redelivered)",
    AckError.HELD_BY_OTHER: "acquired by another member now",
    AckError.ALREADY_ACKNOWLEDGED: "already accepted, rejected or dead-lettered",
}


def _acks(batches: Sequence[spb.AcknowledgementBatch]) -> list[Ack]:
    out = []
    for b in batches:
        kind = _KINDS.get(b.type)
        if kind is None:
            raise InvalidGroupRequestError(
                f"{b.topic}:{b.partition} offsets {b.first_offset}..{b.last_offset}: "
                f"acknowledgement type {b.type} is not ACCEPT (1), RELEASE (2), REJECT (3) or "
                "RENEW (4)"
            )
        out.append(
            Ack(
                b.topic,
                b.partition,
                b.first_offset,
                b.last_offset,
                kind,
                delay_ms=b.delay_ms,
                lock_ms=b.extend_ms,
                error=b.error,
            )
        )
    return out


def _result(r: AckResult) -> spb.AcknowledgeResult:
    if r.error is AckError.OK:
        return spb.AcknowledgeResult(
            topic=r.topic,
            partition=r.partition,
            first_offset=r.first_offset,
            last_offset=r.last_offset,
            code=_OK,
        )
    return spb.AcknowledgeResult(
        topic=r.topic,
        partition=r.partition,
        first_offset=r.first_offset,
        last_offset=r.last_offset,
        code=_FAILED_PRECONDITION,
        reason=InvalidRecordStateError.reason,
        message=(
            r.message
            or f"{r.topic}:{r.partition} offsets {r.first_offset}..{r.last_offset}: "
            f"{_ACK_MESSAGES.get(r.error, r.error.value)}"
        )
        + "; nothing applied",
    )


def config_from_pb(
    group_id: str, msg: spb.ShareGroupConfig, base: ShareGroupConfig | None = None, *,
    replace_priorities: bool = False,
) -> ShareGroupConfig:  # fmt: skip
    """``msg``'s set fields over ``base`` (the defaults when None)."""
    b = base or ShareGroupConfig()
    kw: dict[str, Any] = {
        "visibility_timeout_ms": b.visibility_timeout_ms,
        "max_delivery_attempts": b.max_delivery_attempts,
        "max_inflight_records": b.max_inflight_records,
        "dead_letter_topic": b.dead_letter_topic,
        "message_ttl_ms": b.message_ttl_ms,
        "ordering_keys": b.ordering_keys,
        "topic_priorities": dict(b.topic_priorities),
        "auto_offset_reset": b.auto_offset_reset,
        "max_queue_latency_ms": b.max_queue_latency_ms,
    }
    for name in (
        "visibility_timeout_ms",
        "max_delivery_attempts",
        "max_inflight_records",
        "ordering_keys",
        "auto_offset_reset",
    ):
        if msg.HasField(name):
            kw[name] = getattr(msg, name)
    if msg.HasField("dead_letter_topic"):
        kw["dead_letter_topic"] = msg.dead_letter_topic or None
    for name in ("message_ttl_ms", "max_queue_latency_ms"):
        if msg.HasField(name):
            kw[name] = getattr(msg, name) or None
    if msg.topic_priorities or replace_priorities:
        kw["topic_priorities"] = dict(msg.topic_priorities)
    try:
        return ShareGroupConfig(**kw)
    except InvalidConfigError as exc:
        raise InvalidGroupRequestError(f"share group {group_id}: {exc}") from None


def config_to_pb(group_id: str, c: ShareGroupConfig) -> spb.ShareGroupConfig:
    """Every field set (defaults filled)."""
    return spb.ShareGroupConfig(
        visibility_timeout_ms=c.visibility_timeout_ms,
        max_delivery_attempts=c.max_delivery_attempts,
        max_inflight_records=c.max_inflight_records,
        dead_letter_topic=c.dead_letter_topic_for(group_id),
        message_ttl_ms=c.message_ttl_ms or 0,
        ordering_keys=c.ordering_keys,
        max_queue_latency_ms=c.max_queue_latency_ms or 0,
        topic_priorities=dict(c.topic_priorities),
        auto_offset_reset=c.auto_offset_reset,
    )


def _normalized(group_id: str, c: ShareGroupConfig) -> ShareGroupConfig:
    """``c`` with the default dead-letter topic spelled out (so equal configs compare equal)."""
    if c.dead_letter_topic == f"{group_id}.dlq":
        return ShareGroupConfig(**{**_fields(c), "dead_letter_topic": None})
    return c


def _fields(c: ShareGroupConfig) -> dict[str, Any]:
    return {
        "visibility_timeout_ms": c.visibility_timeout_ms,
        "max_delivery_attempts": c.max_delivery_attempts,
        "max_inflight_records": c.max_inflight_records,
        "dead_letter_topic": c.dead_letter_topic,
        "message_ttl_ms": c.message_ttl_ms,
        "ordering_keys": c.ordering_keys,
        "topic_priorities": dict(c.topic_priorities),
        "auto_offset_reset": c.auto_offset_reset,
        "max_queue_latency_ms": c.max_queue_latency_ms,
    }


def delayed_backlog(store: Store, topic: str, partition: int, start: int, hw: int, now: int) -> int:
    """How many of the records in ``[start, hw)`` (the log past a window) are
    delayed past ``now``: exact over the first ``DESCRIBE_SCAN_RECORDS``
    offsets, extrapolated past them (module docstring)."""
    if start >= hw:
        return 0
    stop = min(hw, start + DESCRIBE_SCAN_RECORDS)
    try:
        res = store.read_frames(topic, partition, start, DESCRIBE_SCAN_BYTES, stop)
    except Exception:  # deleted or truncated meanwhile: nothing to split
        return 0
    if not res.data:
        return 0
    index = stored_frames(res.data)
    if _DELIVER_AT_NAME not in index.buf and not any(h.codec for _, h in index.frames):
        return 0  # no record there has a deliver-at header
    meta = share_metadata(index, start, want_keys=False, want_delays=True, max_records=stop - start)
    delayed = int(np.count_nonzero(meta.deliver_at > now))
    scanned = meta.end_offset - start
    if delayed and scanned > 0 and meta.end_offset < hw:
        delayed += (hw - meta.end_offset) * delayed // scanned
    return min(delayed, hw - start)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: Tags of ShareFetchResponse.partitions (1) and ShareFetchPartition.records (3).
_PARTITIONS_TAG: Final = b"\x0a"
_RECORDS_TAG: Final = b"\x1a"


def trim_frames(data: bytes, lo: int, hi: int, memo: dict[object, object] | None = None) -> bytes:
    """The stored frames ``data`` with each frame that holds mostly records
    outside ``lo..hi`` cut to those in it, when it can be cut without a loop
    per record: an uncompressed format-1 frame whose records all have one
    encoded size (``uniform_record_count``: one strided numpy compare) becomes
    a frame of just its records in ``lo..hi`` -- the same records' bytes, a
    new head (base offset, record count, lengths and CRC32C; base and max
    timestamps kept, so every record's effective timestamp is unchanged;
    producer id 0). Other frames (compressed, format 2, records of mixed
    sizes) are sent whole, as stored; the consumer skips what it did not
    acquire either way. Why: a producer's batch holds ~10,000 records of
    100 B (944 KB), and a fetch acquires 500 of them: sending the whole batch
    to each of 20 fetches was most of the reply bytes (the send, the copies,
    the consumer's parse).

    ``memo`` (``FetchResult.memo`` of a cached frame) keeps each frame's
    uniform-size check across the ~20 fetches that cut the same batch."""
    index = stored_frames(data)
    out: list[bytes] = []
    cut = False
    for pos, h in index.frames:
        a, b = max(h.base_offset, lo), min(h.last_offset, hi)
        end = pos + h.frame_size
        keep = b - a + 1
        if h.has_offset_deltas or h.codec or keep <= 0 or 2 * keep >= h.record_count:
            out.append(data[pos:end])
            continue
        rs = pos + h.records_start
        if memo is None:
            uniform = uniform_record_count(data, rs, end)
        else:
            got = memo.get(("share:uniform", rs))
            uniform = got if isinstance(got, int) else uniform_record_count(data, rs, end)
            memo[("share:uniform", rs)] = uniform
        if uniform != h.record_count:
            out.append(data[pos:end])
            continue
        size = (end - rs) // h.record_count
        recs = data[rs + (a - h.base_offset) * size : rs + (b - h.base_offset + 1) * size]
        head = build_head(
            len(recs), keep, h.base_timestamp_ms, h.max_timestamp_ms, records=recs, base_offset=a
        )
        out += (bytes(head), recs)
        cut = True
    return b"".join(out) if cut else data


def fetch_reply(
    frames: Sequence[PartitionFrames], results: Sequence[spb.AcknowledgeResult]
) -> bytes:
    """The serialized ShareFetchResponse (a raw-response RPC, as Fetch): each
    partition's small fields serialized by protobuf, then its stored frames
    appended as field 3 (protobuf fields may come in any order), so the
    frames -- a producer's batches, up to ~1 MB a reply -- are copied once into
    the reply instead of into a message and again by SerializeToString
    (1.8 ms -> 0.06 ms a reply of 944 KB)."""
    out: list[bytes] = []
    for f in frames:
        head = spb.ShareFetchPartition(
            topic=f.topic,
            partition=f.partition,
            acquired=[
                spb.AcquiredRecords(
                    first_offset=r.first_offset,
                    last_offset=r.last_offset,
                    delivery_count=r.delivery_count,
                    lock_deadline_ms=r.lock_until_ms,
                )
                for r in f.acquired
            ],
        ).SerializeToString()
        records = f.records
        if records and f.acquired:
            records = trim_frames(
                records,
                min(r.first_offset for r in f.acquired),
                max(r.last_offset for r in f.acquired),
                f.memo,
            )
        if records:
            n = _varint(len(records))
            body = len(head) + 1 + len(n) + len(records)
            out += (_PARTITIONS_TAG, _varint(body), head, _RECORDS_TAG, n, records)
        else:
            out += (_PARTITIONS_TAG, _varint(len(head)), head)
    if results:
        out.append(spb.ShareFetchResponse(acknowledgements=results).SerializeToString())
    return b"".join(out)


class ShareHandlers:
    """The ShareGroups service (share groups, KIP-932)."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        assert runtime.share is not None, "Runtime.share must be set before the handlers"
        self._share: ShareRuntime = runtime.share

    # ------------------------------------------------------------ members

    async def share_group_heartbeat(
        self, request: spb.ShareGroupHeartbeatRequest, context: Context
    ) -> spb.ShareGroupHeartbeatResponse:
        gid, mid = request.group_id, request.member_id
        topics = list(request.topics)
        if len(request.client_id) > 255:
            raise InvalidGroupRequestError(
                f"client_id is {len(request.client_id)} characters; the limit is 255"
            )
        if request.leave:
            if not mid:
                raise InvalidGroupRequestError("leave needs the member_id to leave")
            await self._share.call(lambda c, now: c.leave(gid, mid, now_ms=now))
            self._share.member_info.pop((gid, mid), None)
            return spb.ShareGroupHeartbeatResponse(member_id="")
        if not mid:
            reply = await self._share.call(lambda c, now: c.join(gid, topics, now_ms=now))
        else:
            reply = await self._share.call(
                lambda c, now: c.heartbeat(gid, mid, now_ms=now, topics=topics or None)
            )
        if not mid or request.client_id:
            self._share.member_info[(gid, reply.consumer_id)] = (
                request.client_id,
                context.peer() or "",
            )
        return spb.ShareGroupHeartbeatResponse(
            member_id=reply.consumer_id,
            heartbeat_interval_ms=reply.heartbeat_interval_ms,
            session_timeout_ms=reply.session_timeout_ms,
        )

    # ------------------------------------------------------------- fetch

    async def _acknowledge(
        self, gid: str, mid: str, batches: Sequence[spb.AcknowledgementBatch]
    ) -> list[spb.AcknowledgeResult]:
        acks = _acks(batches)
        reply: AckReply = await self._share.call(
            lambda c, now: c.acknowledge(gid, mid, acks, now_ms=now)
        )
        return [_result(r) for r in reply.results]

    async def share_fetch(self, request: spb.ShareFetchRequest, context: Context) -> bytes:
        cfg = self._share.config
        if not 0 <= request.max_records <= cfg.max_fetch_records:
            raise InvalidGroupRequestError(
                f"max_records must be in 0..{cfg.max_fetch_records} (0 = "
                f"{DEFAULT_SHARE_FETCH_RECORDS}), not {request.max_records}"
            )
        if not 0 <= request.max_bytes <= MAX_SHARE_FETCH_BYTES:
            raise InvalidGroupRequestError(
                f"max_bytes must be in 0..{MAX_SHARE_FETCH_BYTES}, not {request.max_bytes}"
            )
        if not 0 <= request.max_wait_ms <= MAX_WAIT_MS_CAP:
            raise InvalidGroupRequestError(
                f"max_wait_ms must be in 0..{MAX_WAIT_MS_CAP}, not {request.max_wait_ms}"
            )
        gid, mid = request.group_id, request.member_id
        # The piggybacked acks and the acquisition are one coordinator call
        # (one batch, one fsync for both): ShareRuntime.fetch_acking.
        ack_reply, frames = await self._share.fetch_acking(
            gid,
            mid,
            _acks(request.acknowledgements),
            max_records=request.max_records or DEFAULT_SHARE_FETCH_RECORDS,
            max_bytes=min(
                request.max_bytes or DEFAULT_SHARE_FETCH_BYTES, self._rt.config.fetch_max_bytes
            ),
            wait_ms=request.max_wait_ms,
            on_park=self._park,
        )
        results = [_result(r) for r in ack_reply.results] if ack_reply is not None else []
        return fetch_reply(frames, results)

    def _park(self) -> None:
        # A waiting fetch holds a long-poll slot, not a request slot (as Fetch).
        current_slot().move_to(self._rt.limits.waiters, self._rt.metrics.long_poll_waiters)

    async def share_acknowledge(
        self, request: spb.ShareAcknowledgeRequest, context: Context
    ) -> spb.ShareAcknowledgeResponse:
        if not request.acknowledgements:
            raise InvalidGroupRequestError("ShareAcknowledge needs at least one range")
        results = await self._acknowledge(
            request.group_id, request.member_id, request.acknowledgements
        )
        return spb.ShareAcknowledgeResponse(acknowledgements=results)

    # ------------------------------------------------------------- admin

    async def create_share_group(
        self, request: spb.CreateShareGroupRequest, context: Context
    ) -> spb.CreateShareGroupResponse:
        gid = request.group_id
        cfg = _normalized(gid, config_from_pb(gid, request.config))

        def create(c: ShareCoordinator, now: int) -> Any:
            if gid in c.list_groups():
                if _normalized(gid, c.group_config(gid)) != cfg:
                    raise GroupAlreadyExistsError(
                        f"share group {gid} exists with another config; use AlterShareGroup"
                    )
                return Result((), None)
            return c.configure_group(gid, cfg)

        await self._share.call(create)
        return spb.CreateShareGroupResponse(config=config_to_pb(gid, cfg))

    async def alter_share_group(
        self, request: spb.AlterShareGroupRequest, context: Context
    ) -> spb.AlterShareGroupResponse:
        gid = request.group_id
        out: list[ShareGroupConfig] = []

        def alter(c: ShareCoordinator, now: int) -> Any:
            new = _normalized(
                gid,
                config_from_pb(
                    gid,
                    request.config,
                    c.group_config(gid),
                    replace_priorities=request.replace_topic_priorities,
                ),
            )
            out.append(new)
            return c.configure_group(gid, new)

        await self._share.call(alter)
        return spb.AlterShareGroupResponse(config=config_to_pb(gid, out[0]))

    async def list_share_groups(
        self, request: spb.ListShareGroupsRequest, context: Context
    ) -> spb.ListShareGroupsResponse:
        now = now_ms()
        rows = await self._share.read(
            lambda c: [(g, len(c.describe(g, now_ms=now).consumers)) for g in c.list_groups()]
        )
        return spb.ListShareGroupsResponse(
            groups=[spb.ShareGroupListing(group_id=g, members=n) for g, n in rows]
        )

    async def describe_share_group(
        self, request: spb.DescribeShareGroupRequest, context: Context
    ) -> spb.DescribeShareGroupResponse:
        gid = request.group_id
        if not gid:
            raise InvalidGroupRequestError("group id must be a non-empty string")
        now = now_ms()
        d: ShareGroupDescription = await self._share.read(lambda c: c.describe(gid, now_ms=now))
        store = self._rt.store
        parts = []
        for pc in d.partitions:
            try:
                hw = store.high_watermark(pc.topic, pc.partition)
            except UnknownTopicError:
                hw = pc.speo
            except Exception:
                hw = pc.speo
            ahead = await self._rt.run_io(
                delayed_backlog, store, pc.topic, pc.partition, pc.speo, hw, now
            )
            parts.append(
                spb.SharePartitionDescription(
                    topic=pc.topic,
                    partition=pc.partition,
                    start_offset=pc.spso,
                    end_offset=hw,
                    available=pc.available + max(0, hw - pc.speo) - ahead,
                    acquired=pc.acquired,
                    delayed=pc.delayed + ahead,
                    dead_lettered=pc.dead_lettered_total,
                    oldest_available_age_ms=(
                        max(0, now - pc.oldest_available_ts_ms)
                        if pc.oldest_available_ts_ms >= 0
                        else 0
                    ),
                )
            )
        info = self._share.member_info
        live = {m.consumer_id for m in d.consumers}
        for key in [k for k in info if k[0] == gid and k[1] not in live]:
            del info[key]  # left or timed out: keeps the table as large as the members
        return spb.DescribeShareGroupResponse(
            group_id=gid,
            config=config_to_pb(gid, d.config),
            members=[
                spb.ShareMemberDescription(
                    member_id=m.consumer_id,
                    client_id=info.get((gid, m.consumer_id), ("", ""))[0],
                    host=info.get((gid, m.consumer_id), ("", ""))[1],
                    inflight_records=m.in_flight,
                    topics=list(m.topics),
                )
                for m in d.consumers
            ],
            partitions=parts,
            acknowledge_rate_per_s=d.ack_rate_per_s,
            estimated_drain_ms=self._share.drain_estimates.get(gid, 0),
        )

    async def delete_share_group(
        self, request: spb.DeleteShareGroupRequest, context: Context
    ) -> spb.DeleteShareGroupResponse:
        gid = request.group_id
        await self._share.call(lambda c, now: c.delete_group(gid, now_ms=now))
        return spb.DeleteShareGroupResponse()

    async def redrive_dead_letters(
        self, request: spb.RedriveDeadLettersRequest, context: Context
    ) -> spb.RedriveDeadLettersResponse:
        if request.max_records < 0:
            raise InvalidGroupRequestError(
                f"max_records must be >= 0 (0 = all), not {request.max_records}"
            )
        redriven, remaining = await self._share.redrive(
            request.group_id, request.to_topic, request.max_records
        )
        return spb.RedriveDeadLettersResponse(redriven=redriven, remaining=remaining)
