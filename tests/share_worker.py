"""A Worker process for the worker tests: runs tasks of a share group and logs them.

Run as ``python -m tests.share_worker BOOTSTRAP GROUP TOPIC OUT_PATH TASK_MS CONCURRENCY``.

Each task sleeps ``TASK_MS`` ms, then appends ``D value delivery_count pid`` to
``OUT_PATH`` (flushed and fsynced before the task returns, so a line means the task
finished before its ACCEPT could be sent). A task starting writes ``S value`` first.
The first line is ``J member_id`` once the worker joined; after ``run()`` returns
(graceful shutdown by SIGTERM) the last line is ``X accepted released``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from logstore.client import ShareMessage, Worker


def main() -> None:
    bootstrap, group, topic, out_path, task_ms, concurrency = sys.argv[1:7]
    lock = threading.Lock()
    out = open(out_path, "a", buffering=1)  # noqa: SIM115 (closed at exit)

    def line(text: str) -> None:
        with lock:
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())

    worker = Worker(
        bootstrap,
        group,
        [topic],
        concurrency=int(concurrency),
        shutdown_timeout_ms=20_000,
        poll_timeout_ms=200,
    )

    @worker.task
    def run_task(msg: ShareMessage) -> None:
        value = (msg.value or b"").decode()
        line(f"S {value}")
        time.sleep(int(task_ms) / 1000)
        line(f"D {value} {msg.delivery_count} {os.getpid()}")

    def announce() -> None:
        while worker.consumer is None:
            time.sleep(0.01)
        line(f"J {worker.consumer.member_id}")

    threading.Thread(target=announce, daemon=True).start()
    worker.run()
    line(f"X {worker.stats['accepted']} {worker.stats['released']}")
    out.close()


if __name__ == "__main__":
    main()
