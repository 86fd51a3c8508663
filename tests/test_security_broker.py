"""Security against real broker processes: TLS, tokens, ACLs, audit, safe defaults.

Certificates are generated per module (tests/tlshelp.py, the ``cryptography``
package); every broker is a real ``python -m logstore.broker`` process with
``--tls-cert/--tls-key --auth token --super-users admin`` (tests/secbroker.py).
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logstore import errors
from logstore.broker._rpc_table import ACCESS, SERVICES
from logstore.client import AclBinding, Admin, Consumer, Credentials, Producer
from logstore.v1 import logstore_pb2 as pb
from tests.brokerproc import start_broker
from tests.secbroker import Secure, raw_call, start_secure
from tests.tlshelp import Pki, make_pki, serial_of

AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def secure(tmp_path: Path, pki: Pki) -> Iterator[Secure]:
    s = start_secure(tmp_path / "data", pki)
    try:
        yield s
    finally:
        s.broker.stop()


def _admin(s: Secure, token: str | None) -> Admin:
    return Admin(s.address, credentials=s.creds(token), connect_timeout_ms=10_000)


def _grant_all(s: Secure, principal: str) -> None:
    """Every operation on every topic, group and the cluster, for ``principal``."""
    with _admin(s, s.admin_token) as a:
        a.create_acls(
            [
                AclBinding(
                    principal,
                    rtype,
                    "literal",
                    "*" if rtype != "cluster" else "cluster",
                    op,
                    "allow",
                )
                for rtype in ("topic", "group", "cluster")
                for op in ("read", "write", "create", "delete", "alter", "describe")
            ]
        )


# -- TLS -------------------------------------------------------------------------


def test_plaintext_and_a_wrong_ca_cannot_reach_a_tls_listener(secure: Secure) -> None:
    """A plaintext client and a client trusting another CA both fail to connect; the right
    CA connects (and is then asked for a token)."""
    plain = Admin(secure.address, connect_timeout_ms=2000)
    with plain, pytest.raises(errors.BrokerUnavailableError):
        plain.list_topics()
    wrong = Credentials(token=secure.admin_token, tls_ca=str(secure.pki.other_ca))
    a = Admin(secure.address, credentials=wrong, connect_timeout_ms=2000)
    with a, pytest.raises(errors.BrokerUnavailableError):
        a.list_topics()
    a = _admin(secure, None)
    with a, pytest.raises(errors.AuthenticationError, match="Bearer"):
        a.list_topics()
    with _admin(secure, secure.admin_token) as a:
        assert [t.name for t in a.list_topics()] == []


def test_metrics_listener_is_tls_too(secure: Secure) -> None:
    """/metrics answers over HTTPS with the broker's certificate, and not over plain HTTP."""
    ctx = ssl.create_default_context(cafile=str(secure.pki.ca))
    url = f"https://{secure.broker.metrics_address}/metrics"
    body = urllib.request.urlopen(url, context=ctx, timeout=10).read().decode()
    assert "logstore_auth_failures" in body
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{secure.broker.metrics_address}/metrics", timeout=5).read()


def _served_serial(address: str, ca: Path) -> int:
    """The serial of the certificate a new TLS connection to ``address`` gets."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    sock = socket.create_connection((host, int(port)), timeout=10)
    with sock, ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return serial_of(ssl.DER_cert_to_PEM_cert(der).encode())


def test_sighup_serves_the_new_certificate_while_an_open_stream_keeps_working(
    tmp_path: Path, pki: Pki
) -> None:
    """Rotation: after the files change and SIGHUP, new connections get the new certificate;
    a Subscribe stream opened before keeps delivering records."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(pki.server.cert.read_bytes())
    key.write_bytes(pki.server.key.read_bytes())
    data = tmp_path / "data"
    data.mkdir()
    from logstore.security import UserStore

    token = UserStore.open(str(data)).create("admin")
    b = start_broker(data, "--tls-cert", str(cert), "--tls-key", str(key), "--auth", "token",
                     "--super-users", "admin")  # fmt: skip
    try:
        s = Secure(b, token, pki)
        old_serial = serial_of(pki.server.cert.read_bytes())
        assert _served_serial(s.address, pki.ca) == old_serial
        with _admin(s, token) as a:
            a.create_topic("rot", 1)
        ch = s.channel(token)
        stream = ch.unary_stream("/logstore.v1.LogStore/Subscribe")(
            pb.SubscribeRequest(topic="rot", partition=0, offset=0).SerializeToString(),
            timeout=60,
        )
        got: list[bytes] = []

        def read() -> None:
            try:
                got.extend(m for m in stream)
            except grpc.RpcError as exc:  # the cancel() below ends it
                assert exc.code() == grpc.StatusCode.CANCELLED, exc

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        with Producer(s.address, credentials=s.creds(token)) as p:
            p.send("rot", b"before").result(timeout=30)
            new = pki.server_again("-rotated")
            cert.write_bytes(new.cert.read_bytes())
            key.write_bytes(new.key.read_bytes())
            b.proc.send_signal(signal.SIGHUP)
            new_serial = serial_of(new.cert.read_bytes())
            deadline = time.monotonic() + 20
            while _served_serial(s.address, pki.ca) != new_serial:
                assert time.monotonic() < deadline, "the new certificate is never served"
                time.sleep(0.1)
            p.send("rot", b"after").result(timeout=30)
        deadline = time.monotonic() + 20
        while not any(b"after" in m for m in got):
            assert time.monotonic() < deadline, f"the open stream stopped: {len(got)} replies"
            time.sleep(0.05)
        stream.cancel()
        reader.join(10)
        ch.close()
        assert "TLS certificate reloaded" in b.log()
    finally:
        b.stop()


def test_mutual_tls_maps_the_certificate_subject_to_the_principal(tmp_path: Path, pki: Pki) -> None:
    """--auth mtls: no client certificate cannot connect; CN=alice is principal 'alice'
    (denied without an ACL, allowed with one)."""
    s = start_secure(tmp_path / "data", pki, "--tls-client-ca", str(pki.ca), auth="mtls")
    try:
        alice = pki.client("alice")
        admin = pki.client("admin")
        no_cert = Credentials(tls_ca=str(pki.ca))
        a = Admin(s.address, credentials=no_cert, connect_timeout_ms=2000)
        with a, pytest.raises(errors.BrokerUnavailableError):
            a.list_topics()
        as_admin = Credentials(tls_ca=str(pki.ca), tls_cert=str(admin.cert), tls_key=str(admin.key))
        as_alice = Credentials(tls_ca=str(pki.ca), tls_cert=str(alice.cert), tls_key=str(alice.key))
        with Admin(s.address, credentials=as_admin, connect_timeout_ms=10_000) as a:
            a.create_topic("t", 1)
            a.create_acls([AclBinding("alice", "topic", "literal", "t", "describe", "allow")])
        a = Admin(s.address, credentials=as_alice, connect_timeout_ms=10_000)
        with a, pytest.raises(errors.AuthorizationError, match="principal 'alice' may not alter"):
            a.alter_topic_config("t", {"retention_ms": "1000"})
        with Admin(s.address, credentials=as_admin, connect_timeout_ms=10_000) as a:
            a.create_acls([AclBinding("alice", "topic", "literal", "t", "alter", "allow")])
        with Admin(s.address, credentials=as_alice, connect_timeout_ms=10_000) as a:
            a.alter_topic_config("t", {"retention_ms": "1000"})
        assert "principal=alice" in s.broker.log()
    finally:
        s.broker.stop()


# -- every RPC: no token, bad token, no ACL, ACL ----------------------------------


def _request(rpc: Any) -> bytes:
    """A request of ``rpc`` naming topic 't1' / group 'g1' wherever ACCESS looks."""
    msg = rpc.request()
    for chk in ACCESS[rpc.name].checks:
        if not chk.field:
            continue
        head, _, rest = chk.field.partition(".")
        value = "t1" if chk.resource_type == "topic" else "g1"
        field = getattr(msg, head)
        if rest:
            setattr(field.add(), rest, value)
        elif isinstance(field, str):
            setattr(msg, head, value)
        else:
            field.append(value)
    return bytes(msg.SerializeToString())


def _every_rpc() -> list[tuple[str, Any]]:
    return [(service, rpc) for service, rows in SERVICES.items() for rpc in rows]


def test_every_rpc_needs_a_valid_token_and_its_acl(secure: Secure) -> None:
    """Each RPC of every service: no token and a bad token are UNAUTHENTICATED; a principal
    without ACLs is refused (PERMISSION_DENIED, or for a topic it may not describe the
    missing-topic NOT_FOUND) unless the RPC needs no ACL; with every ACL granted, no
    authentication or authorization error."""
    with _admin(secure, secure.admin_token) as a:
        a.create_topic("t1", 1)
        nobody = a.create_user("nobody")
        granted = a.create_user("granted")
    _grant_all(secure, "granted")
    channels = {
        "none": secure.channel(None),
        "bad": secure.channel("lst_0123456789abcdef_" + "x" * 43),
        "nobody": secure.channel(nobody),
        "granted": secure.channel(granted),
    }
    try:
        for service, rpc in _every_rpc():
            raw = _request(rpc)
            kw = {"client_streaming": rpc.client_streaming,
                  "server_streaming": rpc.server_streaming, "timeout": 3.0}  # fmt: skip
            for who in ("none", "bad"):
                code, details = raw_call(channels[who], service, rpc.name, raw, **kw)
                assert code == grpc.StatusCode.UNAUTHENTICATED, (rpc.name, who, code, details)
                assert "logctl" in details, details  # says how to authenticate
            code, details = raw_call(channels["nobody"], service, rpc.name, raw, **kw)
            if ACCESS[rpc.name].per_entry:
                # The call is served; its one entry carries the denial (its own
                # status: tests/test_security_gaps.py checks those).
                assert code == grpc.StatusCode.OK, (rpc.name, code, details)
            elif ACCESS[rpc.name].checks:
                hidden = code == grpc.StatusCode.NOT_FOUND and details == "unknown topic 't1'"
                assert code == grpc.StatusCode.PERMISSION_DENIED or hidden, (rpc.name, code)
            else:
                assert code not in AUTH_CODES, (rpc.name, code, details)
            if rpc.name in ("DeleteUser", "DeleteTopic", "DeleteAcls"):
                continue  # not with everything granted: it would undo this test's setup
            code, details = raw_call(channels["granted"], service, rpc.name, raw, **kw)
            assert code not in AUTH_CODES, (rpc.name, code, details)
    finally:
        for ch in channels.values():
            ch.close()
    log = secure.broker.log()
    assert "authentication failed" in log and "authorization denied" in log
    ctx = ssl.create_default_context(cafile=str(secure.pki.ca))
    url = f"https://{secure.broker.metrics_address}/metrics"
    metrics = urllib.request.urlopen(url, context=ctx, timeout=10).read().decode()
    assert 'logstore_auth_failures_total{method="Produce"} 2.0' in metrics  # none + bad
    assert 'logstore_authorization_denials_total{method="Fetch",resource_type="topic"}' in metrics
    for token in (secure.admin_token, nobody, granted):
        assert token not in log and token not in metrics


def test_health_checking_stays_open(secure: Secure) -> None:
    """A load balancer's health check needs no token."""
    ch = secure.channel(None)
    try:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        ch.close()


def test_a_deleted_users_token_stops_working_at_once(secure: Secure) -> None:
    """DeleteUser revokes: the same connection's next call is UNAUTHENTICATED."""
    with _admin(secure, secure.admin_token) as a:
        token = a.create_user("temp")
        a.create_acls([AclBinding("temp", "cluster", "literal", "cluster", "describe", "allow")])
    with _admin(secure, token) as t:
        assert [u.name for u in t.list_users()] == ["admin", "temp"]
        with _admin(secure, secure.admin_token) as a:
            a.delete_user("temp")
        with pytest.raises(errors.AuthenticationError, match="not valid"):
            t.list_users()


# -- ACL semantics through the broker ----------------------------------------------


def test_a_topic_it_may_not_describe_looks_missing(secure: Secure) -> None:
    """Without describe, an existing topic answers exactly as a missing one (status and
    message), for DescribeTopic, Fetch, Produce and ListOffsets; ListTopics omits it."""
    with _admin(secure, secure.admin_token) as a:
        a.create_topic("visible", 1)
        a.create_topic("hidden", 1)
        reader = a.create_user("reader")
        a.create_acls([AclBinding("reader", "topic", "literal", "visible", "read", "allow")])
    ch = secure.channel(reader)
    admin_ch = secure.channel(secure.admin_token)
    try:
        cases = [
            ("DescribeTopic", lambda t: pb.DescribeTopicRequest(name=t)),
            ("Fetch", lambda t: pb.FetchRequest(topic=t, partition=0, offset=0)),
            ("Produce", lambda t: pb.ProduceRequest(topic=t, partition=0)),
            ("ListOffsets", lambda t: pb.ListOffsetsRequest(topic=t)),
        ]
        for name, make in cases:
            svc = "logstore.v1.LogStore"
            denied = raw_call(ch, svc, name, make("hidden").SerializeToString())
            # the same principal on a topic that does not exist: the same answer
            absent = raw_call(ch, svc, name, make("missing").SerializeToString())
            assert denied[0] == absent[0] == grpc.StatusCode.NOT_FOUND, (name, denied, absent)
            assert denied[1] == absent[1].replace("missing", "hidden"), (name, denied, absent)
            if name == "Produce":
                continue  # an empty batch is refused before the topic is looked up
            # and what a principal allowed everything is told of a missing topic
            missing = raw_call(admin_ch, svc, name, make("missing").SerializeToString())
            assert missing == absent, (name, missing, absent)
        with _admin(secure, reader) as r:
            assert [t.name for t in r.list_topics()] == ["visible"]
            r.describe_topic("visible")  # read implies describe
    finally:
        ch.close()
        admin_ch.close()


def test_prefix_acls_and_deny_beating_allow(secure: Secure) -> None:
    """An allow on prefix 'app.' covers app.a; a deny on app.secret wins over it
    (PERMISSION_DENIED naming the operation and topic: describe is still implied)."""
    with _admin(secure, secure.admin_token) as a:
        for t in ("app.a", "app.secret", "other"):
            a.create_topic(t, 1)
        user = a.create_user("app")
        a.create_acls(
            [
                AclBinding("app", "topic", "prefix", "app.", "write", "allow"),
                AclBinding("app", "topic", "literal", "app.secret", "write", "deny"),
            ]
        )
    with Producer(secure.address, credentials=secure.creds(user), retry_backoff_ms=10) as p:
        p.send("app.a", b"x").result(timeout=30)
        with pytest.raises(errors.AuthorizationError, match=r"may not write topic 'app\.secret'"):
            p.send("app.secret", b"x").result(timeout=30)
    with _admin(secure, user) as u:
        assert [t.name for t in u.list_topics()] == ["app.a", "app.secret"]


def test_acls_survive_a_restart_and_kill_9_during_changes(tmp_path: Path, pki: Pki) -> None:
    """ACLs added one by one while the broker is kill -9ed: after a restart every ACL whose
    add was answered is there and acls.json parses; a clean restart keeps them too."""
    data = tmp_path / "data"
    s = start_secure(data, pki)
    acked: list[str] = []
    stop = threading.Event()

    def add_forever() -> None:
        with _admin(s, s.admin_token) as a:
            i = 0
            while not stop.is_set():
                name = f"topic-{i}"
                try:
                    a.create_acls([AclBinding("u", "topic", "literal", name, "read", "allow")])
                except errors.LogStoreError:
                    return
                acked.append(name)
                i += 1

    t = threading.Thread(target=add_forever, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    s.broker.kill()
    stop.set()
    t.join(30)
    assert len(acked) >= 20
    b = start_broker(data, "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                     "--auth", "token", "--super-users", "admin")  # fmt: skip
    try:
        s2 = Secure(b, s.admin_token, pki)
        with _admin(s2, s.admin_token) as a:
            names = {acl.name for acl in a.list_acls(principal="u")}
        assert set(acked) <= names
    finally:
        assert b.stop() == 0
    b = start_broker(data, "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                     "--auth", "token", "--super-users", "admin")  # fmt: skip
    try:
        with _admin(Secure(b, s.admin_token, pki), s.admin_token) as a:
            assert {acl.name for acl in a.list_acls(principal="u")} == names
    finally:
        b.stop()


def test_consumer_and_group_need_their_acls(secure: Secure) -> None:
    """A consumer's Fetch needs topic read; its group heartbeat group read."""
    with _admin(secure, secure.admin_token) as a:
        a.create_topic("events", 1)
        user = a.create_user("consumer")
        a.create_acls([AclBinding("consumer", "topic", "literal", "events", "read", "allow")])
    with Producer(secure.address, credentials=secure.admin_creds()) as p:
        p.send("events", b"hello").result(timeout=30)
    with Consumer(secure.address, credentials=secure.creds(user)) as c:
        c.assign([("events", 0)])
        c.seek(("events", 0), 0)
        records = c.poll(timeout_ms=10_000)
        assert [r.value for rs in records.values() for r in rs] == [b"hello"]
    from logstore.client import GroupConsumer

    with pytest.raises(errors.AuthorizationError, match="may not read group 'grp'"):
        g = GroupConsumer(secure.address, "grp", topics=["events"],
                          credentials=secure.creds(user), connect_timeout_ms=10_000)  # fmt: skip
        try:
            g.poll(timeout_ms=5000)
        finally:
            g.close()


def test_a_consumer_with_a_token_over_tls_tails_over_subscribe(secure: Secure) -> None:
    """The token interceptor and TLS around the Consumer's single-threaded Subscribe
    read: a caught-up consumer with a read-only user's token opens a stream and is
    pushed every record, in order (the call is gRPC's single-threaded kind through
    the interceptor too)."""
    with _admin(secure, secure.admin_token) as a:
        a.create_topic("pushed", 1)
        user = a.create_user("tail")
        a.create_acls([AclBinding("tail", "topic", "literal", "pushed", "read", "allow")])
    with Consumer(secure.address, credentials=secure.creds(user), fetch_max_wait_ms=200) as c:
        c.assign([("pushed", 0)])
        c.seek_to_end()
        deadline = time.monotonic() + 30
        while not c._streams:
            assert time.monotonic() < deadline, "no Subscribe stream opened"
            assert c.poll(100) == {}
        [(_, st)] = c._streams.values()
        assert type(st.call).__name__ == "_SingleThreadedRendezvous"
        with Producer(secure.address, credentials=secure.admin_creds(), linger_ms=0) as p:
            for i in range(30):
                p.send("pushed", b"r-%d" % i, partition=0)
            p.flush()
        got: list[tuple[int, bytes | None]] = []
        while len(got) < 30:
            assert time.monotonic() < deadline, f"{len(got)} of 30 records pushed"
            for recs in c.poll(500).values():
                got.extend((r.offset, r.value) for r in recs)
        assert got == [(i, b"r-%d" % i) for i in range(30)]
        assert c.streams_opened == 1


# -- safe defaults, CLI ------------------------------------------------------------


def test_allow_remote_without_tls_and_auth_refuses_to_start(tmp_path: Path) -> None:
    """--allow-remote on 0.0.0.0 without TLS/auth: exit 2 and one line naming the fix."""
    proc = subprocess.run(
        [sys.executable, "-m", "logstore.broker", "--data-dir", str(tmp_path / "d"),
         "--listen", "0.0.0.0:0", "--metrics-listen", "127.0.0.1:0", "--allow-remote"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--insecure" in lines[0] and "--tls-cert" in lines[0], lines


def test_auth_without_flags_is_exactly_todays_broker(broker: Any) -> None:
    """No security flags: plaintext, no token needed, Security RPCs open (the loopback
    zero-setup default of make run)."""
    with Admin(broker.grpc_address) as a:
        a.create_topic("plain", 1)
        assert [t.name for t in a.list_topics()] == ["plain"]
        assert a.list_acls() == []


def _logctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("LOGSTORE_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=60,
        env=full, check=False,
    )  # fmt: skip


def test_logctl_users_and_acls_end_to_end(tmp_path: Path, pki: Pki) -> None:
    """The first user offline (--data-dir), the rest through the broker with a token file
    and --tls-ca; acls add/list/remove; bad token and bad input are one line; --data-dir of
    a running broker is refused; tokens never printed except by users create."""
    data = tmp_path / "data"
    data.mkdir()
    made = _logctl("users", "create", "admin", "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    admin_token = made.stdout.strip()
    assert admin_token.startswith("lst_") and made.stdout.count("\n") == 1
    b = start_broker(data, "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                     "--auth", "token", "--super-users", "admin")  # fmt: skip
    try:
        token_file = tmp_path / "admin.token"
        token_file.write_text(admin_token + "\n")
        base = ["--token-file", str(token_file), "--tls-ca", str(pki.ca)]
        boot = ["--bootstrap", b.grpc_address]
        r = _logctl(*base, "users", "create", "bob", *boot)
        assert r.returncode == 0, r.stderr
        bob = r.stdout.strip()
        r = _logctl(*base, "users", "list", *boot, "-o", "json")
        assert r.returncode == 0 and '"bob"' in r.stdout and bob not in r.stdout, r
        r = _logctl(*base, "acls", "add", "--principal", "bob", "--topic", "logs.", "--prefix",
                    "--operation", "read", "--operation", "write", *boot)  # fmt: skip
        assert r.returncode == 0 and "added 2" in r.stdout, r
        r = _logctl(*base, "acls", "list", "--principal", "bob", *boot, "-o", "json")
        assert r.returncode == 0 and r.stdout.count('"prefix"') == 2, r
        r = _logctl(*base, "acls", "remove", "--principal", "bob", "--operation", "write", *boot)
        assert r.returncode == 0 and "removed 1" in r.stdout, r
        r = _logctl(*base, "acls", "remove", *boot)
        assert r.returncode == 2 and "--all" in r.stderr, r
        r = _logctl(*base, "acls", "add", "--topic", "x", "--operation", "read", *boot)
        assert r.returncode == 2 and "--principal" in r.stderr, r
        r = _logctl(*base, "acls", "add", "--principal", "bob", "--topic", "x",
                    "--operation", "fly", *boot)  # fmt: skip
        assert r.returncode == 2 and "fly" in r.stderr, r
        bad = "lst_0123456789abcdef_" + "y" * 43
        r = _logctl("--token", bad, "--tls-ca", str(pki.ca), "topics", "list", *boot)
        assert r.returncode == 1 and "not valid" in r.stderr and bad not in r.stderr, r
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        r = _logctl("--tls-ca", str(pki.ca), "topics", "list", *boot,
                    env={"LOGSTORE_TOKEN": bob})  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = _logctl("users", "create", "eve", "--data-dir", str(data))
        assert r.returncode == 1 and "in use" in r.stderr, r
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        for secret in (admin_token, bob):
            assert secret not in b.log()
    finally:
        b.stop()


def test_fetch_quota_answers_resource_exhausted_with_a_retry_sized_to_the_debt(
    tmp_path: Path, pki: Pki
) -> None:
    """Past quota_fetch_bytes_per_s a principal's next Fetch is RESOURCE_EXHAUSTED
    (QUOTA_EXCEEDED) with RetryInfo = its debt / rate (~9 s here: a ~100 kB reply against
    a 10 kB/s bucket holding 10 kB; a fixed or missing hint fails the range); another
    principal is not throttled; the audit metrics count the throttle and name no token."""
    from logstore.client._rpc import Connection

    s = start_secure(tmp_path / "data", pki, env={"LOGSTORE_QUOTA_FETCH_BYTES_PER_S": "10000"})
    try:
        with _admin(s, s.admin_token) as a:
            a.create_topic("big", 1)
            tokens = {n: a.create_user(n) for n in ("r1", "r2")}
            a.create_acls(
                [AclBinding(n, "topic", "literal", "big", "read", "allow") for n in tokens]
            )
        with Producer(s.address, credentials=s.admin_creds()) as p:
            p.send_many("big", [b"z" * 1000] * 100, partition=0)
            p.flush()
        req = pb.FetchRequest(topic="big", partition=0, offset=0, max_bytes=1 << 20)
        conn = Connection(s.address, 10_000, s.creds(tokens["r1"]))
        try:
            first = conn.call(conn.fetch_raw, req, 10)
            assert len(first) > 90_000
            with pytest.raises(errors.QuotaExceededError) as err:
                conn.call(conn.fetch_raw, req, 10)
            assert err.value.retry_after_ms is not None
            # debt / rate: ~100 kB read against 10 kB/s, less the bucket's burst and the time
            # between the calls, is 9-10 s; a range for those, while a hint not sized to the
            # debt (a fixed backoff, or the read not charged) falls outside it
            assert 5_000 <= err.value.retry_after_ms <= 10_000, err.value.retry_after_ms
            assert "quota" in str(err.value)
        finally:
            conn.close()
        other = Connection(s.address, 10_000, s.creds(tokens["r2"]))
        try:
            assert len(other.call(other.fetch_raw, req, 10)) > 90_000
        finally:
            other.close()
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        url = f"https://{s.broker.metrics_address}/metrics"
        metrics = urllib.request.urlopen(url, context=ctx, timeout=10).read().decode()
        assert 'logstore_quota_throttled_total{method="Fetch"} 1.0' in metrics, metrics
        for token in (*tokens.values(), s.admin_token):
            assert token not in metrics
    finally:
        s.broker.stop()
