"""`manage.py backup` of a live server under 16 writers, and the README's restore, step by step:
the restored database passes `verify` and holds every write answered before the backup began."""

import shlex
import subprocess
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.e2e.conftest import REQUEST_TIMEOUT, ROOT, Progress, Server, create, parallel

pytestmark = pytest.mark.e2e

WRITERS = 16
ANSWERED_BEFORE = 20  # writes each writer has had answered before the backup begins


def run(command: str, env: dict) -> str:
    """One step of the README's restore, as an operator types it."""
    result = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    return result.stdout


def test_a_backup_under_16_writers_restores_every_write_answered_before_it(server, tmp_path, request):
    items = [create(server, f"backup-{i}", 0)["id"] for i in range(WRITERS)]
    answered: list[list[tuple[float, int]]] = [[] for _ in range(WRITERS)]  # (when, qty it left)
    stop, progress = threading.Event(), Progress()

    def write(i):
        while not stop.is_set():
            status, reply = server.client.request("PATCH", f"/items/{items[i]}/qty", {"delta": 1})
            if status == 503:  # wrote nothing: the database stayed busy past its bound
                progress.add("busy")
                continue
            assert status == 200, (status, reply)
            answered[i].append((time.monotonic(), reply["qty"]))
            progress.add("writes")
            progress.add(f"writer {i}")

    backup = tmp_path / "backup.copy"
    result: dict = {}

    def take_backup():
        progress.wait_until(
            lambda counts: all(counts[f"writer {i}"] >= ANSWERED_BEFORE for i in range(WRITERS)),
            f"{ANSWERED_BEFORE} writes answered to each writer",
        )
        result["began"] = time.monotonic()
        result["writes at start"] = progress["writes"]
        result["output"] = server.manage("backup", str(backup))
        result["took"] = time.monotonic() - result["began"]
        result["writes during"] = progress["writes"] - result["writes at start"]
        stop.set()

    try:
        parallel(WRITERS + 1, lambda i: take_backup() if i == WRITERS else write(i), progress)
    finally:
        stop.set()
    took, during = result["took"], result["writes during"]
    print(f"backup under {WRITERS} writers: {took:.2f} s, {during} writes answered during it")
    assert "verify: ok" in result["output"], result["output"]
    assert result["writes during"] > 0, "the writers were not served while the backup ran"
    final = {item_id: server.client.request("GET", f"/items/{item_id}")[1]["qty"] for item_id in items}

    restored = restore(server, backup, tmp_path, request)

    assert "ok" in restored.verify()
    restored.client.token = restored.manage("token", "create", "after-restore", "--scope", "write").strip()
    for i, item_id in enumerate(items):
        status, item = restored.client.request("GET", f"/items/{item_id}")
        assert status == 200, (status, item)
        before = max(qty for when, qty in answered[i] if when < result["began"])
        # Every answer before the backup began is in it; what came after may or may not be.
        assert before <= item["qty"] <= final[item_id], (i, before, item, final[item_id])
    # The restored service takes writes again.
    status, item = restored.client.request("PATCH", f"/items/{items[0]}/qty", {"delta": 1})
    assert status == 200, (status, item)


def restore(server: Server, backup, tmp_path, request) -> Server:
    """The README's restore: stop, put the copy in place, start (then the test verifies)."""
    server.stop(timeout=REQUEST_TIMEOUT)
    if server.database_url.startswith("sqlite:"):
        database = urlsplit(server.database_url).path[1:]
        # The old database's -wal and -shm files go too: SQLite would replay them over the copy.
        run(
            f"cp {shlex.quote(str(backup))} {shlex.quote(database)}"
            f" && rm -f {shlex.quote(database)}-wal {shlex.quote(database)}-shm",
            server.env,
        )
        server.start()
        return server
    # PostgreSQL: into a new, empty database (the README: createdb, then pg_restore).
    parts = urlsplit(server.database_url)
    name = f"restored_{uuid.uuid4().hex[:8]}"
    url = urlunsplit(parts._replace(path=f"/{name}"))
    admin = urlunsplit(parts._replace(path="/postgres"))
    run(f"psql {shlex.quote(admin)} -c 'CREATE DATABASE {name}'", server.env)
    request.addfinalizer(
        lambda: run(f"psql {shlex.quote(admin)} -c 'DROP DATABASE IF EXISTS {name} WITH (FORCE)'", server.env)
    )
    run(f"pg_restore --no-owner --dbname={shlex.quote(url)} {shlex.quote(str(backup))}", server.env)
    restored = Server(url, tmp_path)
    request.addfinalizer(restored.stop)
    restored.start()
    return restored
