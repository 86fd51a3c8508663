"""Offline maintenance of a data directory (the broker must be stopped).

    python -m logstore.storage rebuild-catalog DATA_DIR

rebuilds ``topics.json`` from the partition directories when it is missing,
damaged, or lists fewer partitions than there are directories (the store
refuses to open then, rather than delete data): every topic found gets as many
partitions as its highest directory number plus one, and the default config
where the file has none. Prints one line per topic and exits 0; on an error,
one line on stderr and exit 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import sys

from logstore.errors import LogStoreError

from ._store import Store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logstore.storage")
    sub = parser.add_subparsers(dest="command", required=True)
    rebuild = sub.add_parser("rebuild-catalog", help="rebuild topics.json from the directories")
    rebuild.add_argument("data_dir")
    args = parser.parse_args(argv)
    try:
        with Store.open(args.data_dir, rebuild_catalog=True) as store:
            for t in store.topics(include_internal=True):
                print(f"{t.name}\tpartitions={t.partitions}")
    except LogStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
