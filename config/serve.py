"""The production server (`make serve`): granian running the WSGI app in WEB_CONCURRENCY
worker processes, chosen by measurement (bench/servers.py, README "Performance").

Settings from the environment: HOST, PORT, WEB_CONCURRENCY (default: one worker per CPU
core), THREADS (threads per worker running the app, default 1).
"""

import os
import shutil
import sys
import tempfile

from granian.constants import Interfaces
from granian.server import Server


def main() -> None:
    if not os.environ.get("SECRET_KEY"):
        # Production never invents a credential: refuse to start without one.
        sys.exit(
            "SECRET_KEY is not set. Make one with:\n"
            "  python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    # Each worker writes its metric samples here and /metrics adds them up. Emptied at every
    # start, so samples of a previous run (or of workers killed with -9) are not counted.
    metrics = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics:
        shutil.rmtree(metrics, ignore_errors=True)
        os.makedirs(metrics)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="inventory-metrics-")
    Server(
        "config.wsgi:application",
        address=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        interface=Interfaces.WSGI,
        workers=int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1),
        blocking_threads=int(os.environ.get("THREADS", "1")),
        websockets=False,
        log_access=False,  # the service writes its own JSON line per request
        respawn_failed_workers=True,  # a worker that dies is replaced
        # A worker stopped mid-request loses nothing: a write is one transaction or none.
        workers_kill_timeout=10,
    ).serve()


if __name__ == "__main__":
    main()
