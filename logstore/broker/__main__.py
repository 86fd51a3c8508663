"""``python -m logstore.broker``: the same flags as ``logctl serve``."""

from __future__ import annotations

import argparse
import sys

from ._server import serve_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m logstore.broker",
        description="Run the logstore gRPC broker. Every setting can also come from "
        "LOGSTORE_<NAME> environment variables or a TOML --config-file "
        "(flag > environment > file > default).",
    )
    parser.add_argument("--data-dir", help="data directory (default ./data)")
    parser.add_argument("--listen", help="gRPC HOST:PORT (default 127.0.0.1:7070; port 0 = any)")
    parser.add_argument(
        "--metrics-listen", help="Prometheus HOST:PORT (default 127.0.0.1:9464; port 0 = any)"
    )
    parser.add_argument("--config-file", help="TOML file with broker settings")
    parser.add_argument("--log-format", choices=("text", "json"), help="stderr log format")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        default=None,
        help="allow a non-loopback listen address (needs TLS and --auth, or --insecure)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="with --allow-remote: listen without TLS or authentication anyway",
    )
    parser.add_argument("--tls-cert", help="PEM certificate chain (TLS on gRPC and metrics)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", help="PEM CA of client certificates (mutual TLS)")
    parser.add_argument("--auth", choices=("none", "token", "mtls"), help="authentication")
    parser.add_argument("--super-users", help="comma-separated principals that pass every ACL")
    args = parser.parse_args(argv)
    return serve_main(
        data_dir=args.data_dir,
        listen=args.listen,
        metrics_listen=args.metrics_listen,
        config_file=args.config_file,
        log_format=args.log_format,
        allow_remote=args.allow_remote,
        insecure=args.insecure,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth=args.auth,
        super_users=args.super_users,
    )


if __name__ == "__main__":
    sys.exit(main())
