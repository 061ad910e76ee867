"""The production server (`make serve`): granian running the WSGI app in WEB_CONCURRENCY
worker processes, chosen by measurement (bench/servers.py, README "Performance"). With
--reload, the development server (`make run`).

Settings from the environment: HOST, PORT, WEB_CONCURRENCY (default: one worker per CPU
core), THREADS (threads per worker running the app, default 1), WORKER (default 1).

Beside granian's workers runs the service's own worker, `manage.py worker` (inventory/worker.py:
hold expiry, webhook delivery, pruning), supervised here: granian restarts only its own
processes. WORKER=0 leaves it out, for app servers where another process runs it (several
may run against one database; one works at a time).

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
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
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

# The service's worker (`manage.py worker`) is started again this long after it exits, doubled
# at every exit that comes within WORKER_STEADY_SECONDS of its start, up to the maximum.
WORKER_RESTART_SECONDS = 1.0
WORKER_RESTART_MAX_SECONDS = 30.0
WORKER_STEADY_SECONDS = 60.0
# How long a stopping worker may finish its duty in progress (a webhook delivery waits up to
# 10 s for its receiver) before it is killed.
WORKER_STOP_TIMEOUT = 12.0

log = logging.getLogger("inventory.serve")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reload",
        action="store_true",
        help="development (make run): one worker, restarted when a file under config/ or "
        "inventory/ changes; no SECRET_KEY needed",
    )
    reload = parser.parse_args().reload
    if not log.handlers:  # in granian's format, beside its own lines
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    worker = WorkerSupervisor() if worker_wanted() else None
    if reload:
        develop(worker)
    else:
        production(worker)


def production(worker: "WorkerSupervisor | None") -> None:
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
        supervised(
            server(
                workers=int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 1),
                respawn_failed_workers=True,  # a worker that dies is replaced
            ),
            worker,
        ).serve()
    finally:
        # serve() returns (or exits) after SIGTERM or SIGINT, once every worker has stopped.
        # Its shutdown hook has stopped the service's worker, unless it ended by an exception.
        if worker is not None:
            worker.stop()
        if own:
            shutil.rmtree(own, ignore_errors=True)


def develop(worker: "WorkerSupervisor | None") -> None:
    """The same server with one worker (so its metrics need no shared folder), started anew
    when the code changes, and the service's worker with it. Only config/ and inventory/ are
    watched: the embedded SQLite database and its lock file sit in the project's root and
    change with every write."""
    try:
        supervised(
            server(
                workers=1,
                reload=True,
                reload_paths=[ROOT / "config", ROOT / "inventory"],
                # A change that breaks the import waits for the next change, as runserver does.
                reload_ignore_worker_failure=True,
            ),
            worker,
        ).serve()
    finally:
        if worker is not None:
            worker.stop()


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


def worker_wanted() -> bool:
    """WORKER: 1 (the default) runs the service's worker beside the server, 0 does not."""
    value = os.environ.get("WORKER", "1").strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    sys.exit(f"WORKER must be 1 or 0, not {value!r}")


def supervised(granian: Server, worker: "WorkerSupervisor | None") -> Server:
    """granian that starts the worker once it is listening, starts it anew when it reloads its
    own (code changes, SIGHUP), and stops it when it stops."""
    if worker is None:
        return granian

    def startup() -> None:
        # granian has set its SIGINT and SIGTERM handlers by now. The worker is told at once,
        # so that it stops beside granian's workers, and is not started again meanwhile.
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)

            def stop_then(signum, frame, handler=handler):
                worker.stopping_soon()
                if callable(handler):
                    handler(signum, frame)

            signal.signal(signum, stop_then)
        worker.start()

    granian.on_startup(startup)
    granian.on_reload(worker.restart)
    granian.on_shutdown(worker.stop)
    return granian


class WorkerSupervisor:
    """Runs `python manage.py worker` as a child process and starts it again whenever it exits,
    after WORKER_RESTART_SECONDS, doubled while it keeps exiting soon after its start. The
    worker stops by itself if this process dies without stopping it (kill -9)."""

    def __init__(self):
        self._stopped = threading.Event()
        self._stopping = False  # set from a signal handler: a plain flag, no lock
        self._restart = False
        self._lock = threading.Lock()
        self._spawning = threading.Lock()  # held while a Popen runs; see start()
        self._process: subprocess.Popen | None = None
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        # granian forks its workers from the main thread (multiprocessing's fork), at its start
        # and whenever it replaces one. A fork while Popen runs in the supervising thread would
        # copy Popen's pipe into that granian worker, and Popen waits for the pipe to close:
        # until that worker exits. So a fork waits for a Popen in progress (milliseconds).
        os.register_at_fork(
            before=self._spawning.acquire,
            after_in_parent=self._spawning.release,
            after_in_child=self._spawning.release,
        )
        self._thread.start()

    def stopping_soon(self) -> None:
        """From a signal handler: ask the worker to stop, start no other."""
        if os.getpid() != self._pid:
            return  # a granian worker forked from this process, before it set its own handlers
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            # Not reaped yet, so the pid is still the worker's.
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)

    def restart(self) -> None:
        """Start the worker anew at once, to run changed code."""
        with self._lock:
            self._restart = True
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()

    def stop(self) -> None:
        """Stop the worker (SIGTERM, then SIGKILL after WORKER_STOP_TIMEOUT) and its supervision."""
        self._stopping = True
        self._stopped.set()
        with self._lock:
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(WORKER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("worker (pid %s) did not stop in %g s: killed", process.pid, WORKER_STOP_TIMEOUT)
                process.kill()
                process.wait()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(WORKER_STOP_TIMEOUT)

    def _supervise(self) -> None:
        quick_exits = 0
        while True:
            with self._lock:
                if self._stopping or self._stopped.is_set():
                    return
                self._restart = False
                started = time.monotonic()
                try:
                    with self._spawning:
                        self._process = subprocess.Popen(  # noqa: S603 (a fixed command)
                            [sys.executable, "manage.py", "worker", "--parent", str(os.getpid())],
                            cwd=ROOT,
                            stdin=subprocess.DEVNULL,
                        )
                except OSError:
                    log.exception("could not start the worker")
                    self._process = None
            code = self._process.wait() if self._process is not None else None
            if self._stopping or self._stopped.is_set():
                return
            if self._restart:
                quick_exits = 0
                continue
            quick_exits = quick_exits + 1 if time.monotonic() - started < WORKER_STEADY_SECONDS else 1
            delay = min(WORKER_RESTART_MAX_SECONDS, WORKER_RESTART_SECONDS * 2 ** (quick_exits - 1))
            log.warning("worker exited (status %s); starting it again in %g s", code, delay)
            self._stopped.wait(delay)


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
