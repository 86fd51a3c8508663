"""The cost of security (issue 13, "Speed"): W1 and W3 plain vs TLS + a token + 100 ACLs.

Two brokers side by side in one run, each its own process on loopback:

- ``plain``: today's default (plaintext, ``--auth none``);
- ``secure``: ``--tls-cert/--tls-key --auth token``, the benchmark's principal a
  regular user (not a super user) holding 100 ACLs (98 on other topics, literal
  and prefix, plus its own topic's write and read), so every request goes
  through the token cache, the decision cache and the ACL matcher.

W1: one ``Producer``, ``send_many`` of 100-B records (lists of 10,000), acks=1,
records/s. W3: one ``Consumer`` replaying them with ``poll_columns``, records/s.
Median of ``--runs`` runs each, alternating plain/secure so load drift hits both.
Prints a table (and ``uptime``); ``python -m benchmarks.security_bench``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from logstore.client import AclBinding, Admin, Consumer, Credentials, Producer  # noqa: E402
from logstore.security import UserStore  # noqa: E402
from tests.brokerproc import BrokerProcess, start_broker  # noqa: E402
from tests.tlshelp import make_pki  # noqa: E402

SIZE = 100
CHUNK = 10_000


def _produce(address: str, creds: Credentials | None, topic: str, n: int) -> float:
    values = [b"x" * SIZE] * CHUNK
    with Producer(address, credentials=creds, acks="1", linger_ms=5) as p:
        # Connect (and, secure, verify the token: one scrypt per connection) untimed.
        p.send(topic, b"warm-up", partition=0).result(timeout=30)
        t0 = time.perf_counter()
        for _ in range(n // CHUNK):
            p.send_many(topic, values, partition=0)
        p.flush()
        return n / (time.perf_counter() - t0)


def _replay(address: str, creds: Credentials | None, topic: str, n: int) -> float:
    with Consumer(address, credentials=creds) as c:
        c.assign([(topic, 0)])
        c.seek((topic, 0), 0)
        # The first poll connects (and verifies the token) untimed; its records don't count.
        first = sum(len(b) for b in c.poll_columns(timeout_ms=5000).values())
        n -= first
        got = 0
        t0 = time.perf_counter()
        while got < n:
            for batch in c.poll_columns(timeout_ms=5000).values():
                got += len(batch)
        return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="secbench-"))
    pki = make_pki(work / "pki")
    (work / "secure").mkdir()
    admin_token = UserStore.open(str(work / "secure")).create("admin")
    brokers: dict[str, BrokerProcess] = {
        "plain": start_broker(work / "plain"),
        "secure": start_broker(
            work / "secure",
            "--tls-cert",
            str(pki.server.cert),
            "--tls-key",
            str(pki.server.key),
            "--auth",
            "token",
            "--super-users",
            "admin",
        ),
    }
    creds: dict[str, Credentials | None] = {"plain": None}
    try:
        admin_creds = Credentials(token=admin_token, tls_ca=str(pki.ca))
        with Admin(brokers["secure"].grpc_address, credentials=admin_creds) as a:
            token = a.create_user("bench")
            acls = [
                AclBinding("bench", "topic", kind, f"other-{i}.", "read", "allow")
                for i, kind in enumerate(["prefix", "literal"] * 49)
            ]
            acls += [
                AclBinding("bench", "topic", "prefix", "w1-", "write", "allow"),
                AclBinding("bench", "topic", "prefix", "w1-", "read", "allow"),
            ]
            assert a.create_acls(acls) == 100
        creds["secure"] = Credentials(token=token, tls_ca=str(pki.ca))
        results: dict[tuple[str, str], list[float]] = {}
        for run in range(args.runs):
            for name, broker in brokers.items():
                topic = f"w1-{run}"
                with Admin(broker.grpc_address, credentials=admin_creds if name == "secure"
                           else None) as a:  # fmt: skip
                    a.create_topic(topic, 1)
                w1 = _produce(broker.grpc_address, creds[name], topic, args.records)
                w3 = _replay(broker.grpc_address, creds[name], topic, args.records)
                results.setdefault(("W1", name), []).append(w1)
                results.setdefault(("W3", name), []).append(w3)
                print(f"run {run} {name}: W1 {w1:,.0f}/s W3 {w3:,.0f}/s", flush=True)
    finally:
        for b in brokers.values():
            b.stop()
    print(f"\nload: {os.getloadavg()[0]:.1f} (1 min), {args.records:,} records of {SIZE} B, "
          f"median of {args.runs}\n")  # fmt: skip
    print("| workload | plain | TLS + token + 100 ACLs | cost |")
    print("|---|---|---|---|")
    for w, label in (("W1", "W1 produce 100 B, records/s"), ("W3", "W3 replay 100 B, records/s")):
        plain = statistics.median(results[(w, "plain")])
        secure = statistics.median(results[(w, "secure")])
        print(f"| {label} | {plain:,.0f} | {secure:,.0f} | {100 * (1 - secure / plain):+.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
