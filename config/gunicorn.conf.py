"""The production server's settings, read from the environment (README, "Running it")."""

import os
import shutil
import tempfile

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
threads = int(os.environ.get("THREADS", "1"))
worker_class = "gthread" if threads > 1 else "sync"
timeout = int(os.environ.get("TIMEOUT", "30"))
# A worker stopped mid-request loses nothing: a write is one transaction or none.
graceful_timeout = 10
accesslog = None  # the service writes its own JSON line per request


def on_starting(server):
    if not os.environ.get("SECRET_KEY"):
        # Production never invents a credential: refuse to start without one.
        raise SystemExit(
            "SECRET_KEY is not set. Make one with:\n"
            "  python3 -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    # Each worker writes its metric samples here; /metrics adds them up. Emptied at every
    # start, so samples of a previous run (or of workers killed with -9) are not counted.
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="inventory-metrics-")


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
