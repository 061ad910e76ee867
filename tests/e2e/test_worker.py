"""The worker beside `make serve` (inventory/worker.py, supervised by config/serve.py): it runs,
it comes back after kill -9, one worker of several works, it stops with the server and does
not outlive it, and it writes the expiry of a hold that nobody touches within a minute.

Processes are found by their command line among the server's process group (the fixture
starts `make serve` in a session of its own). Every wait polls for its condition until a
deadline: no test sleeps for a fixed time."""

import datetime
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Server, create

pytestmark = pytest.mark.e2e

# Generous for a slow or loaded machine, yet finite.
RESTART_DEADLINE = 30  # s: the supervisor waits 1 s, then Django starts
LEASE_DEADLINE = 15 + 45  # s: a dead holder's lease lasts 15 s, then a round of the new one
EXPIRY_BOUND = 60  # s after expires_at: the contract's "within a minute"
POLL = 0.1  # s between looks


def wait_for(condition: Callable[[], object], what: str, timeout: float):
    """condition()'s first true value, looked for until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(POLL)


def group(pgid: int) -> dict[int, tuple[int, list[str]]]:
    """{pid: (parent pid, command line)} of the live processes of a process group."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # it has just exited
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        state, ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            found[int(entry.name)] = (int(ppid), cmdline)
    return found


def is_worker(cmdline: list[str]) -> bool:
    return any(part.endswith("manage.py") for part in cmdline) and "worker" in cmdline


def workers(server: Server) -> dict[int, int]:
    """{pid: parent pid} of the server's worker processes (manage.py worker)."""
    return {pid: ppid for pid, (ppid, cmdline) in group(server.process.pid).items() if is_worker(cmdline)}


def main_process(server: Server) -> int:
    """The pid of the server's main process: the `python -m config.serve` whose parent is not
    one (granian's workers are forked from it, so they share its command line)."""
    serve = {
        pid: ppid for pid, (ppid, cmdline) in group(server.process.pid).items() if "config.serve" in cmdline
    }
    (pid,) = [pid for pid, ppid in serve.items() if ppid not in serve]
    return pid


def the_worker(server: Server) -> int:
    """The pid of the server's one worker, once there is exactly one."""
    found = wait_for(lambda: len(pids := workers(server)) == 1 and pids, "one worker", RESTART_DEADLINE)
    return next(iter(found))


def lease_holder(server: Server) -> str:
    code = (
        "from inventory.models import Lease; "
        "lease = Lease.objects.filter(name='worker').first(); "
        "print(lease.holder if lease else '')"
    )
    return server.manage("shell", "--no-imports", "-c", code).strip()


def holder_pid(server: Server) -> int | None:
    """The pid in the lease's holder (hostname:pid:random), None while nobody holds it."""
    holder = lease_holder(server)
    return int(holder.split(":")[-2]) if holder else None


def test_a_worker_runs_beside_the_server_and_holds_the_lease(server):
    pid = the_worker(server)
    assert workers(server)[pid] == main_process(server), "the server's main process supervises it"
    wait_for(lambda: holder_pid(server) == pid, f"the worker {pid} holding the lease", LEASE_DEADLINE)


def test_a_worker_killed_with_9_is_replaced_and_the_new_one_takes_the_lease(server):
    old = the_worker(server)
    wait_for(lambda: holder_pid(server) == old, "the first worker holding the lease", LEASE_DEADLINE)
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: [pid for pid in workers(server) if pid != old], "a new worker", RESTART_DEADLINE)[
        0
    ]
    assert workers(server) == {new: main_process(server)}
    # The dead worker never gave the lease up: the new one takes it once it expires.
    wait_for(lambda: holder_pid(server) == new, f"the new worker {new} holding the lease", LEASE_DEADLINE)


def test_a_hold_nobody_touches_is_published_expired_within_a_minute(server):
    """Seen as a client sees it, on the change feed: a `hold.expired` event, written by the
    worker's sweep since nothing else touches the item; and the hold stored expired."""
    item = create(server, "swept", 5)
    status, hold = server.client.request(
        "POST", "/holds", {"lines": [{"id": item["id"], "qty": 2}], "ttl_seconds": 1}
    )
    assert status == 201, hold
    expires_at = datetime.datetime.fromisoformat(hold["expires_at"])
    # From here on only the feed is read: no request touches the item or the hold.
    after, expired = None, []
    while not expired:
        status, page = server.client.request("GET", "/events" + (f"?after={after}" if after else ""))
        assert status == 200, page
        expired = [e for e in page["events"] if e["type"] == "hold.expired" and e["hold_id"] == hold["id"]]
        after = page["next"]
        if not expired and not page["events"]:
            assert time.time() < expires_at.timestamp() + EXPIRY_BOUND, (
                f"no hold.expired event {EXPIRY_BOUND} s after the hold expired"
            )
            time.sleep(POLL)
    (event,) = expired
    assert (
        expires_at
        <= datetime.datetime.fromisoformat(event["at"])
        <= expires_at + datetime.timedelta(seconds=EXPIRY_BOUND)
    )
    code = (
        "from inventory.models import Hold, Item; "
        f"print(Hold.objects.get(pk='{hold['id']}').state, Item.objects.get(pk='{item['id']}').reserved)"
    )
    assert server.manage("shell", "--no-imports", "-c", code).split() == ["expired", "0"]
    server.verify()


def test_of_two_workers_on_one_database_one_works_and_a_stalled_holder_is_replaced(server, tmp_path):
    """A second app server's worker (here started by hand) waits while the first holds the
    lease; it takes the lease when the first stalls, and the first, back, does not take it back."""
    first = the_worker(server)
    wait_for(lambda: holder_pid(server) == first, "the first worker holding the lease", LEASE_DEADLINE)
    with (tmp_path / "second-worker.log").open("w") as log:
        second = subprocess.Popen(
            [sys.executable, "manage.py", "worker"], cwd=ROOT, env=server.env, stdout=log, stderr=log
        )
    try:
        wait_for(lambda: "started" in (tmp_path / "second-worker.log").read_text(), "the second", 60)
        assert holder_pid(server) == first
        os.kill(first, signal.SIGSTOP)  # stalled: alive, so not restarted, but not renewing
        try:
            wait_for(lambda: holder_pid(server) == second.pid, "the second taking over", LEASE_DEADLINE)
        finally:
            os.kill(first, signal.SIGCONT)
        wait_for(
            lambda: any(
                f":{first}:" in line and "lost the lease" in line
                for line in server.log.read_text().splitlines()
            ),
            "the first finding the lease lost",
            RESTART_DEADLINE,
        )
        assert holder_pid(server) == second.pid
    finally:
        second.terminate()
        assert second.wait(timeout=30) == 0


def test_the_worker_stops_with_the_server_and_gives_the_lease_up(server):
    pid = the_worker(server)
    wait_for(lambda: holder_pid(server) == pid, "the worker holding the lease", LEASE_DEADLINE)
    try:
        os.kill(main_process(server), signal.SIGTERM)  # the main process alone, as a service manager may
        assert server.process.wait(timeout=60) == 0
        wait_for(lambda: not workers(server), "the worker stopping", RESTART_DEADLINE)
    finally:
        server.kill()  # whatever is left of it
    assert holder_pid(server) is None


def test_the_worker_does_not_outlive_a_server_killed_with_9(server):
    pid = the_worker(server)
    try:
        os.kill(main_process(server), signal.SIGKILL)
        wait_for(
            lambda: pid not in group(server.process.pid), "the orphaned worker stopping", RESTART_DEADLINE
        )
    finally:
        server.kill()  # granian's workers, orphaned too


def test_worker_0_runs_no_worker_beside_the_server(database_url, tmp_path):
    server = Server(database_url, tmp_path)
    server.extra_env["WORKER"] = "0"
    try:
        server.start()
        # The worker would be started before granian's workers, so before the server answers.
        assert main_process(server)
        assert not workers(server)
    finally:
        server.stop()
