"""logstore.security's pure parts: users and tokens, the ACL matcher and store,
quota buckets, the broker's produce-topic peek and the security config keys."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from logstore.errors import (
    InvalidArgumentError,
    InvalidConfigError,
    InvalidRequestError,
    StorageError,
    UnknownUserError,
    UserExistsError,
)
from logstore.security import (
    Acl,
    AclFilter,
    AclStore,
    Authorizer,
    ByteQuota,
    QuotaManager,
    QuotaStore,
    UserStore,
)
from logstore.v1 import logstore_pb2 as pb


def acl(principal: str, rtype: str, name: str, op: str, perm: str = "allow",
        pattern: str = "literal") -> Acl:  # fmt: skip
    return Acl(principal, rtype, pattern, name, op, perm)


# -- users ---------------------------------------------------------------------


def test_token_verifies_only_itself_and_is_never_stored(tmp_path: Path) -> None:
    """create -> a token that verifies as its user; the file holds neither it nor its
    secret; a changed character, another user's id or garbage verify as nobody."""
    users = UserStore.open(str(tmp_path))
    token = users.create("alice")
    other = users.create("bob")
    assert token.startswith("lst_") and token != other
    assert users.verify(token) == "alice"
    assert users.verify(other) == "bob"
    text = (tmp_path / "users.json").read_text()
    secret = token.rsplit("_", 1)[1]
    assert token not in text and secret not in text
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert users.verify(flipped) is None
    # bob's id with alice's secret
    assert users.verify(other.rsplit("_", 1)[0] + "_" + secret) is None
    assert users.verify("") is None
    assert users.verify("Bearer x") is None
    assert oct((tmp_path / "users.json").stat().st_mode & 0o777) == "0o600"


def test_users_survive_reopen_and_delete_revokes(tmp_path: Path) -> None:
    """A reopened store verifies the same tokens; a deleted user's token stops verifying."""
    token = UserStore.open(str(tmp_path)).create("alice")
    again = UserStore.open(str(tmp_path))
    assert [u.name for u in again.list()] == ["alice"]
    assert again.verify(token) == "alice"
    again.delete("alice")
    assert again.verify(token) is None
    assert UserStore.open(str(tmp_path)).list() == []
    with pytest.raises(UnknownUserError):
        again.delete("alice")


def test_bad_user_names_and_duplicates_are_refused(tmp_path: Path) -> None:
    """Names are 1..128 of [A-Za-z0-9._@=+-]; '*', '', '../x', a space: refused; twice: exists."""
    users = UserStore.open(str(tmp_path))
    for bad in ("", "*", "../x", "a b", "a\n", "x" * 129, "a,b"):
        with pytest.raises(InvalidArgumentError):
            users.create(bad)
    users.create("svc-1@example.com")
    with pytest.raises(UserExistsError):
        users.create("svc-1@example.com")


def test_a_damaged_users_file_is_an_error_naming_it(tmp_path: Path) -> None:
    """Garbage in users.json is a StorageError naming the file, not an empty user list."""
    (tmp_path / "users.json").write_text('{"version": 1, "users": {"a": {"id": 3}}}')
    with pytest.raises(StorageError, match=r"users\.json"):
        UserStore.open(str(tmp_path))
    (tmp_path / "users.json").write_text("{not json")
    with pytest.raises(StorageError, match=r"users\.json"):
        UserStore.open(str(tmp_path))


# -- the ACL matcher -------------------------------------------------------------


def test_literal_prefix_and_wildcard_acls_match_what_they_name() -> None:
    """literal = that name only; prefix = names starting with it; '*' name = all of the type;
    '*' principal = everyone; no matching ACL = denied."""
    authz = Authorizer(
        [
            acl("alice", "topic", "orders", "read"),
            acl("alice", "topic", "logs.", "write", pattern="prefix"),
            acl("*", "topic", "public", "read"),
            acl("bob", "group", "*", "read"),
        ]
    )
    a = authz.authorize
    assert a("alice", "topic", "orders", "read")
    assert not a("alice", "topic", "orders2", "read")
    assert not a("alice", "topic", "orders", "write")
    assert a("alice", "topic", "logs.app", "write")
    assert not a("alice", "topic", "logs", "write")
    assert a("carol", "topic", "public", "read")
    assert a("bob", "group", "anything", "read")
    assert not a("bob", "topic", "anything", "read")
    assert not a("carol", "topic", "orders", "read")


def test_deny_beats_allow_and_super_users_pass() -> None:
    """A matching deny (even a wildcard one) wins over an allow; super users skip ACLs."""
    authz = Authorizer(
        [
            acl("alice", "topic", "t", "read", pattern="prefix"),
            acl("*", "topic", "t.secret", "read", "deny"),
        ],
        super_users=["root"],
    )
    assert authz.authorize("alice", "topic", "t.public", "read")
    assert not authz.authorize("alice", "topic", "t.secret", "read")
    assert authz.authorize("root", "topic", "t.secret", "read")
    assert authz.authorize("root", "cluster", "cluster", "alter")


def test_describe_is_implied_by_the_other_operations_unless_denied() -> None:
    """read/write/delete/alter imply describe (Kafka); create does not; deny describe wins."""
    authz = Authorizer(
        [
            acl("r", "topic", "t", "read"),
            acl("c", "topic", "t", "create"),
            acl("d", "topic", "t", "write"),
            acl("d", "topic", "t", "describe", "deny"),
        ]
    )
    assert authz.authorize("r", "topic", "t", "describe")
    assert not authz.authorize("c", "topic", "t", "describe")
    assert not authz.authorize("d", "topic", "t", "describe")
    assert authz.authorize("d", "topic", "t", "write")


def test_cached_decisions_are_those_of_the_matcher() -> None:
    """allowed() (cached per connection + resource) answers what authorize() does, also on
    the second, cached, lookup."""
    authz = Authorizer([acl("a", "topic", "x", "read"), acl("a", "topic", "x", "read", "deny")])
    authz2 = Authorizer([acl("a", "topic", "x", "read")])
    for _ in range(2):
        assert authz.allowed("peer1", "a", "topic", "x", "read") is False
        assert authz2.allowed("peer1", "a", "topic", "x", "read") is True
        assert authz2.allowed("peer2", "a", "topic", "y", "read") is False


def test_bad_acls_are_refused_with_the_field_named() -> None:
    """Unknown resource type, operation, pattern or permission; empty name; cluster name."""
    with pytest.raises(InvalidArgumentError, match="resource type"):
        acl("a", "queue", "x", "read")
    with pytest.raises(InvalidArgumentError, match="operation"):
        acl("a", "topic", "x", "all")
    with pytest.raises(InvalidArgumentError, match="permission"):
        acl("a", "topic", "x", "read", "maybe")
    with pytest.raises(InvalidArgumentError, match="pattern"):
        acl("a", "topic", "x", "read", pattern="regex")
    with pytest.raises(InvalidArgumentError, match="name"):
        acl("a", "topic", "", "read")
    with pytest.raises(InvalidArgumentError, match="cluster"):
        acl("a", "cluster", "other", "alter")
    with pytest.raises(InvalidArgumentError, match="principal"):
        acl("a b", "topic", "x", "read")


def test_acl_store_persists_filters_and_changes_the_authorizer(tmp_path: Path) -> None:
    """add/remove are on disk when they return; a new authorizer sees them (an old one,
    and its cache, keep the old answer)."""
    store = AclStore.open(str(tmp_path))
    before = store.authorizer()
    assert store.add([acl("a", "topic", "x", "read"), acl("a", "topic", "y", "read")]) == 2
    assert store.add([acl("a", "topic", "x", "read")]) == 0
    after = store.authorizer()
    assert not before.allowed("p", "a", "topic", "x", "read")
    assert after.allowed("p", "a", "topic", "x", "read")
    reopened = AclStore.open(str(tmp_path))
    assert reopened.list() == store.list()
    gone = reopened.remove(AclFilter(name="x"))
    assert [g.name for g in gone] == ["x"]
    assert [a.name for a in AclStore.open(str(tmp_path)).list()] == ["y"]
    data = json.loads((tmp_path / "acls.json").read_text())
    assert data["version"] == 1 and len(data["acls"]) == 1


def test_a_leftover_tmp_file_is_not_read(tmp_path: Path) -> None:
    """A crash between writing acls.json.tmp and the rename leaves the old file in force."""
    store = AclStore.open(str(tmp_path))
    store.add([acl("a", "topic", "x", "read")])
    (tmp_path / "acls.json.tmp").write_text("{half a fi")
    assert [a.name for a in AclStore.open(str(tmp_path)).list()] == ["x"]


# -- quotas ----------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_quota_delay_pays_back_the_debt_exactly() -> None:
    """Past its rate, a principal waits debt/rate; after that wait it may send again;
    another principal is unaffected."""
    clock = _Clock()
    q = ByteQuota(1000, clock=clock)  # 1000 B/s, 1 s burst
    assert q.delay_ms("a") == 0
    q.charge("a", 3000)  # 1000 in the bucket - 3000 = 2000 B of debt
    assert q.delay_ms("a") == 2000
    assert q.delay_ms("b") == 0
    clock.now += 1.0
    assert q.delay_ms("a") == 1000
    clock.now += 1.0
    assert q.delay_ms("a") == 0
    clock.now += 60.0  # idle a minute: at most one second of burst saved
    q.charge("a", 1500)
    assert q.delay_ms("a") == 500


def test_quota_overrides_win_over_the_default_per_principal() -> None:
    """An override is that principal's rate (0 = unlimited) whatever the default; the
    others keep the default; a default of 0 with no override is unlimited."""
    clock = _Clock()
    q = ByteQuota(1000, clock=clock, overrides={"fast": 10_000, "free": 0})
    for who in ("fast", "free", "other"):
        q.charge(who, 3000)
    assert q.delay_ms("other") == 2000  # default 1000 B/s: 2000 B of debt
    assert q.delay_ms("fast") == 0  # 10 kB bucket: 7000 B left
    assert q.delay_ms("free") == 0  # unlimited
    q.set_overrides({})  # removed: back to the default, its debt still owed
    q.charge("fast", 8000)
    assert q.delay_ms("fast") > 0
    none = ByteQuota(0, clock=clock, overrides={"slow": 1000})
    assert none.limited and not ByteQuota(0, clock=clock).limited
    none.charge("anyone", 10**9)
    none.charge("slow", 2000)
    assert none.delay_ms("anyone") == 0 and none.delay_ms("slow") == 1000


def test_quota_store_round_trips_and_refuses_bad_input(tmp_path: Path) -> None:
    """set merges kinds, remove drops both, a reopened store (and a QuotaManager on it)
    sees them; bad names, rates and files are refused with a clear error."""
    store = QuotaStore.open(str(tmp_path))
    assert store.list() == []
    store.set("alice", produce_bytes_per_s=100)
    got = store.set("alice", fetch_bytes_per_s=0)
    assert (got.produce_bytes_per_s, got.fetch_bytes_per_s) == (100, 0)
    store.set("bob", fetch_bytes_per_s=7)
    assert store.remove("bob") and not store.remove("bob")
    again = QuotaStore.open(str(tmp_path))
    assert [(q.principal, q.produce_bytes_per_s, q.fetch_bytes_per_s) for q in again.list()] == [
        ("alice", 100, 0)
    ]
    assert os.stat(tmp_path / "quotas.json").st_mode & 0o777 == 0o600
    manager = QuotaManager(5, 5, again)
    assert manager.produce.rate_of("alice") == 100 and manager.fetch.rate_of("alice") == 0
    assert manager.produce.rate_of("carol") == 5
    for kw in ({"produce_bytes_per_s": -1}, {"fetch_bytes_per_s": 1 << 41}, {}):
        with pytest.raises(InvalidArgumentError):
            store.set("alice", **kw)
    for name in ("", "*", "a b"):
        with pytest.raises(InvalidArgumentError):
            store.set(name, produce_bytes_per_s=1)
    for bad in ('{"version": 2, "quotas": {}}', '{"version": 1, "quotas": {"a": {"x": 1}}}',
                '{"version": 1, "quotas": {"a": {"produce_bytes_per_s": -3}}}', "[1"):  # fmt: skip
        (tmp_path / "quotas.json").write_text(bad)
        with pytest.raises(StorageError):
            QuotaStore.open(str(tmp_path))


# -- the broker's raw-produce peek -------------------------------------------------


def test_peek_topic_reads_what_protobuf_parses() -> None:
    """The topic of a raw ProduceRequest is the one protobuf would parse (the last field 1
    wins), with the records skipped; malformed bytes are INVALID_ARGUMENT."""
    from logstore.broker._security import peek_topic

    req = pb.ProduceRequest(topic="orders", partition=3, acks=1)
    raw = req.SerializeToString() + b"\x0a\x06secret"  # a second topic field
    assert pb.ProduceRequest.FromString(raw).topic == "secret"
    assert peek_topic(raw) == "secret"
    assert peek_topic(pb.ProduceRequest(partition=1).SerializeToString()) == ""
    for bad in (b"\x0a\x10short", b"\xff", b"\x0f"):
        with pytest.raises(InvalidRequestError):
            peek_topic(bad)


def test_multi_produce_view_reads_every_batch_topic() -> None:
    """MultiProduce's authorization view yields each batch's topic as protobuf parses it
    (a batch's repeated topic field: the last wins)."""
    from logstore.broker._security import field_values, raw_view

    first = pb.ProduceRequest(topic="a", partition=0).SerializeToString() + b"\x0a\x01z"
    req = pb.MultiProduceRequest(batches=[pb.ProduceRequest.FromString(first),
                                          pb.ProduceRequest(topic="b")])  # fmt: skip
    raw = req.SerializeToString()
    assert list(field_values(raw_view("MultiProduce", raw), "batches.topic")) == ["z", "b"]
    with pytest.raises(InvalidRequestError):
        raw_view("MultiProduce", b"\x7a\x05ab")


# -- config ----------------------------------------------------------------------


def test_security_config_keys_are_checked_together(tmp_path: Path) -> None:
    """tls cert without key, client CA without cert, mtls without a client CA, an unknown
    auth mode and a bad super user are each one clear InvalidConfigError."""
    from logstore.broker import BrokerConfig

    cases = [
        ({"tls_cert": "c.pem"}, "--tls-key"),
        ({"tls_client_ca": "ca.pem"}, "--tls-client-ca"),
        ({"auth": "mtls", "tls_cert": "c", "tls_key": "k"}, "--tls-client-ca"),
        ({"auth": "ldap"}, "auth"),
        ({"super_users": "ok,not ok"}, "super_users"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(InvalidConfigError, match=needle):
            BrokerConfig(**kwargs)  # type: ignore[arg-type]
    env = {"LOGSTORE_AUTH": "token", "LOGSTORE_SUPER_USERS": "admin,ops"}
    config = BrokerConfig.resolve(env=env)
    assert config.auth == "token" and config.super_user_names == ("admin", "ops")
    toml = tmp_path / "b.toml"
    toml.write_text('auth = "token"\nquota_produce_bytes_per_s = 1000\n')
    assert BrokerConfig.resolve(config_file=toml, env={}).quota_produce_bytes_per_s == 1000
    assert BrokerConfig().auth == "none" and not BrokerConfig().tls_enabled


def test_remote_needs_tls_and_auth_or_insecure(caplog: pytest.LogCaptureFixture) -> None:
    """allow_remote alone is refused now; with TLS + token it is silent; with insecure it
    warns."""
    from logstore.broker import BrokerConfig
    from logstore.broker._server import check_addresses

    remote = {"listen": "0.0.0.0:7070", "allow_remote": True}
    with pytest.raises(InvalidConfigError, match="--insecure"):
        check_addresses(BrokerConfig(**remote))  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError, match="--insecure"):  # TLS but auth none
        check_addresses(BrokerConfig(**remote, tls_cert="c", tls_key="k"))  # type: ignore[arg-type]
    logger = logging.getLogger("logstore")
    logger.addHandler(caplog.handler)
    try:
        check_addresses(
            BrokerConfig(**remote, tls_cert="c", tls_key="k", auth="token")  # type: ignore[arg-type]
        )
        assert not caplog.records
        check_addresses(BrokerConfig(**remote, insecure=True))  # type: ignore[arg-type]
    finally:
        logger.removeHandler(caplog.handler)
    assert any("--insecure" in r.getMessage() for r in caplog.records)
    assert os.environ.get("LOGSTORE_AUTH") is None  # the test did not leak into the env


# -- the broker's token check ----------------------------------------------------


class _Ctx:
    """The two things Guard.authenticate reads of a gRPC context."""

    def __init__(self, token: str, peer: str = "ipv4:127.0.0.1:5000") -> None:
        self._md = (("authorization", f"Bearer {token}"),)
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._md


def test_bad_tokens_cost_one_scrypt_each_and_at_most_two_run_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repeated bad token is refused from the bad-token cache (no second scrypt);
    a flood of distinct bad tokens runs at most TOKEN_CHECKS_AT_ONCE scrypts at a
    time; the cache is bounded and a users change empties it; a good token still
    verifies (once per peer)."""
    import asyncio
    import threading

    from prometheus_client import CollectorRegistry

    from logstore.broker import BrokerConfig
    from logstore.broker import _security as sec
    from logstore.errors import AuthenticationError

    monkeypatch.setattr(sec, "BAD_TOKEN_CACHE_ENTRIES", 5)
    calls: list[str] = []
    running = [0, 0]  # now, peak
    lock = threading.Lock()

    async def run_io(fn: object, *args: object) -> object:
        def counted() -> object:
            with lock:
                running[0] += 1
                running[1] = max(running)
            try:
                return fn(*args)  # type: ignore[operator]
            finally:
                with lock:
                    running[0] -= 1

        return await asyncio.to_thread(counted)

    async def main() -> None:
        guard = sec.Guard(BrokerConfig(auth="token"), str(tmp_path), CollectorRegistry(), run_io)
        real = guard.users.verify

        def verify(token: str) -> str | None:
            calls.append(token)
            return real(token)

        guard.users.verify = verify  # type: ignore[method-assign]
        good = guard.users.create("alice")

        async def auth(token: str) -> str:
            return await guard.authenticate(_Ctx(token), "Fetch")  # type: ignore[arg-type]

        for _ in range(4):
            with pytest.raises(AuthenticationError, match="not valid"):
                await auth("lst_0123456789abcdef_wrong")
        assert len(calls) == 1

        flood = [f"lst_{i:016x}_nope" for i in range(12)]
        results = await asyncio.gather(*(auth(t) for t in flood), return_exceptions=True)
        assert all(isinstance(r, AuthenticationError) for r in results)
        assert len(calls) == 13 and running[1] == sec.TOKEN_CHECKS_AT_ONCE
        assert len(guard._bad_tokens) == 5  # bounded: the oldest were dropped

        assert await auth(good) == "alice" and await auth(good) == "alice"
        assert len(calls) == 14
        guard.users_changed()
        with pytest.raises(AuthenticationError):
            await auth(flood[-1])
        assert len(calls) == 15  # checked afresh after the users changed

    asyncio.run(main())
