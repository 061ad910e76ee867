"""The production server (`make serve`): granian running the WSGI app in WEB_CONCURRENCY
worker processes, chosen by measurement (bench/servers.py, README "Performance"). With
--reload, the development server (`make run`).

Settings from the environment: HOST, PORT, WEB_CONCURRENCY (default: one worker per CPU
core), THREADS (threads per worker running the app, default 1).

granian reads a request body in the app thread with no timeout, so a client that stops in
the middle of its body holds a worker: in production this server runs behind the buffering
proxy of deploy/nginx.conf, which hands it whole requests only.

What granian answers itself, with an empty body and no log line (hyper's HTTP/1 parser):
414 for a request target over 65534 bytes and 431 for more than 100 header fields (both fixed
in granian 2.8.9), 431 for a request line and headers over HTTP1_BUFFER_SIZE, 400 for a
request it cannot parse (a bad request line, header or Content-Length). A connection that
has not sent its headers within HTTP1_HEADER_READ_TIMEOUT is closed without an answer.
"""

import argparse
import fcntl
import os
import shutil
import sys
import tempfile
from pathlib import Path

from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.server import Server

# Bytes a connection may buffer while reading a request line and headers (granian's default:
# 408 KiB); more is 431. hyper checks it between two reads, so up to this much is always
# taken and over twice this never (measured: 160 KiB taken, 256 KiB refused).
HTTP1_BUFFER_SIZE = 128 * 1024
# Milliseconds granian waits for a request's headers, from the connection's start or from
# the previous answer on it (granian allows 1..60 s; default 30 s): a connection that sends
# nothing, or stops within its headers, is closed. deploy/nginx.conf closes its idle
# connections to us sooner than this, so it never sends on one being closed.
HTTP1_HEADER_READ_TIMEOUT = 10_000

ROOT = Path(__file__).resolve().parent.parent
METRICS_PREFIX = "inventory-metrics-"
# Held (flock) by a running server on the file inside its metrics folder. The kernel lets go
# of it when the last process holding it ends, however it ends, so a free lock is a folder
# nobody will write to again.
METRICS_LOCK = ".owner.lock"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reload",
        action="store_true",
        help="development (make run): one worker, restarted when a file under config/ or "
        "inventory/ changes; no SECRET_KEY needed",
    )
    if parser.parse_args().reload:
        develop()
    else:
        production()


def production() -> None:
    if not os.environ.get("SECRET_KEY"):
        # Production never invents a credential: refuse to start without one.
        sys.exit(
            "SECRET_KEY is not set. Make one with:\n"
            "  python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    # Each worker writes its metric samples here and /metrics adds them up. A folder the
    # operator names is emptied at every start, so samples of a previous run (or of workers
    # killed with -9) are not counted; otherwise the server makes its own and removes it.
    metrics = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    own = None
    if metrics:
        shutil.rmtree(metrics, ignore_errors=True)
        os.makedirs(metrics)
    else:
        own = own_metrics_dir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(own)
    try:
        server(
            workers=int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1),
            respawn_failed_workers=True,  # a worker that dies is replaced
        ).serve()
    finally:
        # serve() returns (or exits) after SIGTERM or SIGINT, once every worker has stopped.
        if own:
            shutil.rmtree(own, ignore_errors=True)


def develop() -> None:
    """The same server with one worker (so its metrics need no shared folder), started anew
    when the code changes. Only config/ and inventory/ are watched: the embedded SQLite
    database and its lock file sit in the project's root and change with every write."""
    server(
        workers=1,
        reload=True,
        reload_paths=[ROOT / "config", ROOT / "inventory"],
        # A change that breaks the import waits for the next change, as runserver does.
        reload_ignore_worker_failure=True,
    ).serve()


def server(**settings) -> Server:
    """granian with this service's settings, and `settings` on top."""
    return Server(
        "config.wsgi:application",
        address=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8000")),
        interface=Interfaces.WSGI,
        # HTTP/1.1 only. To tell HTTP/2 without TLS (h2c) from HTTP/1, granian waits for a
        # new connection's first bytes with no timeout (measured: a silent connection was
        # still open after 100 s); h2c also has limits of its own (16 MiB of headers). No
        # client of this API needs it.
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(
            header_read_timeout=HTTP1_HEADER_READ_TIMEOUT,
            max_buffer_size=HTTP1_BUFFER_SIZE,
        ),
        blocking_threads=int(os.environ.get("THREADS", "1")),
        websockets=False,
        log_access=False,  # the service writes its own JSON line per request
        # A worker stopped mid-request loses nothing: a write is one transaction or none.
        workers_kill_timeout=10,
        **settings,
    )


def own_metrics_dir() -> Path:
    """A new folder in the temporary directory for this server's metric samples, locked for
    as long as the server runs. Folders that earlier servers left behind (stopped by kill -9,
    so nobody removed them) are removed first; those of running servers are left alone."""
    tmp = Path(tempfile.gettempdir())
    for folder in tmp.glob(METRICS_PREFIX + "*"):
        remove_if_abandoned(folder)
    folder = Path(tempfile.mkdtemp(prefix=METRICS_PREFIX))
    # Locked before it takes its name, so that no other server's sweep finds it unlocked.
    # The descriptor stays open (and the lock held) until this process ends.
    lock = os.open(folder / (METRICS_LOCK + ".new"), os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.rename(folder / (METRICS_LOCK + ".new"), folder / METRICS_LOCK)
    return folder


def remove_if_abandoned(folder: Path) -> None:
    """Remove a metrics folder whose lock nobody holds. A folder without a lock file (being
    made right now, or by another version of this file) or of another user is left alone."""
    try:
        if folder.stat().st_uid != os.geteuid():
            return
        lock = os.open(folder / METRICS_LOCK, os.O_WRONLY)
    except OSError:
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        return  # its server is running
    shutil.rmtree(folder, ignore_errors=True)
    os.close(lock)


if __name__ == "__main__":
    main()
