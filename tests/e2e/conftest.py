"""A real production server (`make serve`: granian, several worker processes) on a fresh
database of the engine under test, a plain HTTP client for parallel callers, and the means to
run a workload until it has done enough, however fast or slow the machine is."""

import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4
# Smaller than the states the tests build, so that following `next` is exercised, not assumed.
PAGE_LIMIT = 100
# Generous for a slow or loaded machine, yet finite: a hang fails with a message, not a stall.
START_TIMEOUT = 120  # `make serve`: migrations, then every worker answering
REQUEST_TIMEOUT = 60  # the busy timeout (10 s) and a queue of callers ahead
PROGRESS_TIMEOUT = 300  # for a workload to reach the counts a test waits for
START_ATTEMPTS = 5  # each on a new port, when the last one was taken before the server bound it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Client:
    """One HTTP/1.1 request per connection, like many independent callers."""

    def __init__(self, port: int, timeout: float = REQUEST_TIMEOUT):
        self.port = port
        self.timeout = timeout
        self.token: str | None = None

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict | None]:
        """(status, JSON body). Raises OSError when the server did not answer."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            payload = None if body is None else json.dumps(body)
            all_headers = {"Content-Type": "application/json", **(headers or {})}
            if self.token:
                all_headers.setdefault("Authorization", f"Bearer {self.token}")
            connection.request(method, path, body=payload, headers=all_headers)
            response = connection.getresponse()
            raw = response.read()
            content_type = response.getheader("Content-Type", "")
            if response.status != 204:
                assert content_type.startswith("application/json"), (response.status, raw[:200])
            return response.status, (json.loads(raw) if raw else None)
        finally:
            connection.close()

    def pages(self, path: str, key: str) -> Iterator[list[dict]]:
        """Every page of a listing, following `next` until it is null."""
        cursor, seen = None, set()
        while True:
            query = {"limit": PAGE_LIMIT} | ({"cursor": cursor} if cursor else {})
            status, page = self.request("GET", f"{path}?{urlencode(query)}")
            assert status == 200, (path, status, page)
            yield page[key]
            cursor = page["next"]
            if cursor is None:
                return
            assert cursor not in seen, f"{path}: cursor {cursor} came back; the listing never ends"
            seen.add(cursor)

    def all_items(self) -> list[dict]:
        """The whole state, in the listing's order (read it when no writer runs)."""
        return [item for page in self.pages("/items", "items") for item in page]

    def movements(self, item_id: str) -> list[dict]:
        """Every movement of an item, oldest first."""
        return [move for page in self.pages(f"/items/{item_id}/movements", "movements") for move in page]


class Server:
    def __init__(self, database_url: str, workdir: Path):
        self.database_url = database_url
        self.port = free_port()
        self.log = workdir / "server.log"
        self.process: subprocess.Popen | None = None
        self.client = Client(self.port)
        self.extra_env: dict[str, str] = {}

    @property
    def env(self) -> dict:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(WORKERS),
            "SECRET_KEY": "e2e-" + "k" * 60,
            **self.extra_env,
        }

    def start(self) -> None:
        """Start the server and wait until it answers. free_port() only finds a port that was
        free a moment ago: when another process took it first, start again on another."""
        for _ in range(START_ATTEMPTS):
            if self._start_on_port():
                return
            self.port = self.client.port = free_port()
        raise AssertionError(f"every port tried was taken:\n{self.log.read_text()[-3000:]}")

    def _start_on_port(self) -> bool:
        """True once the server answers on self.port; False if the port was already taken."""
        self.log.touch()
        offset = self.log.stat().st_size
        with self.log.open("a") as log:
            # A session of its own, so that kill() reaches make, the server and every worker.
            self.process = subprocess.Popen(
                ["make", "--no-print-directory", "-s", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Another server may be listening on the port: an answer is ours only if our log has it.
        probe = f"start-probe-{uuid.uuid4().hex}"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self._log_since(offset)
                if "Address already in use" in output:
                    return False
                raise AssertionError(f"server exited with {self.process.returncode}:\n{output[-3000:]}")
            if self._answers(probe) and probe in self._log_since(offset):
                return True
            time.sleep(0.1)
        self.kill()
        raise AssertionError(
            f"server did not answer in {START_TIMEOUT} s:\n{self._log_since(offset)[-3000:]}"
        )

    def _answers(self, probe: str) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            connection.request("GET", "/healthz", headers={"X-Request-ID": probe})
            response = connection.getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def _log_since(self, offset: int) -> str:
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def kill(self) -> None:
        """kill -9 of every server process: no chance to finish or clean up anything."""
        with contextlib.suppress(ProcessLookupError):  # every process of it has exited already
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, and kill -9 if the server has not stopped within `timeout` seconds."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def manage(self, *args: str) -> str:
        """`manage.py ARGS` against the server's database; fails the test if it fails."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def setting(self, name: str) -> str:
        """A Django setting as the server's processes see it."""
        code = f"from django.conf import settings; print(settings.{name})"
        return self.manage("shell", "--no-imports", "-c", code).strip()

    def verify(self) -> str:
        return self.manage("verify")


class Progress:
    """Counts shared by the threads of a workload, and waits on them: a run ends when enough
    was done, not after a time, so it does the same work on a fast machine and a slow one."""

    def __init__(self):
        self._counts = Counter()
        self._failed = False
        self._changed = threading.Condition()

    def add(self, name: str, n: int = 1) -> None:
        with self._changed:
            self._counts[name] += n
            self._changed.notify_all()

    def __getitem__(self, name: str) -> int:
        with self._changed:
            return self._counts[name]

    def counts(self) -> Counter:
        with self._changed:
            return Counter(self._counts)

    @property
    def failed(self) -> bool:
        with self._changed:
            return self._failed

    def fail(self) -> None:
        """A thread of the workload failed: nobody waits for it any longer."""
        with self._changed:
            self._failed = True
            self._changed.notify_all()

    def wait_until(self, reached: Callable[[Counter], bool], what: str) -> None:
        deadline = time.monotonic() + PROGRESS_TIMEOUT
        with self._changed:
            while not reached(self._counts):
                # The failed thread's own error is the one to read; this one only ends the wait.
                assert not self._failed, f"stopped waiting for {what}: another thread failed"
                left = deadline - time.monotonic()
                assert left > 0, f"{what}: not reached in {PROGRESS_TIMEOUT} s, {dict(self._counts)}"
                self._changed.wait(left)


def parallel(clients: int, work, progress: Progress | None = None) -> list:
    """Run work(i) for i in range(clients), each in its own thread, started together. A thread
    that fails marks `progress` failed, so that the others stop waiting on it."""
    barrier = threading.Barrier(clients)

    def run(i):
        barrier.wait()
        try:
            return work(i)
        except BaseException:
            if progress is not None:
                progress.fail()
            raise

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(run, range(clients)))


def create(server, name: str, qty: int) -> dict:
    status, item = server.client.request("POST", "/items", {"name": name, "qty": qty})
    assert status == 201, item
    return item


# What the tests that take `database_url` through the parametrisation below reach the database
# through: PostgreSQL itself, or the PgBouncer in transaction mode that scripts/with-postgres
# starts in front of it (TEST_PGBOUNCER_URL).
DIRECT, PGBOUNCER = "direct", "pgbouncer"
direct_and_pooled = pytest.mark.parametrize("database_url", [DIRECT, PGBOUNCER], indirect=True)


def through_pgbouncer(url: str) -> bool:
    """Whether `url` reaches the database through TEST_PGBOUNCER_URL's PgBouncer."""
    pooler = os.environ.get("TEST_PGBOUNCER_URL")
    return bool(pooler) and urlsplit(url).netloc == urlsplit(pooler).netloc


@pytest.fixture
def database_url(request, tmp_path):
    """A fresh, empty database of the engine DATABASE_URL names (SQLite when unset), reached
    directly or, parametrised with PGBOUNCER, through PgBouncer in transaction mode."""
    route = getattr(request, "param", DIRECT)
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        if route == PGBOUNCER:
            pytest.skip("PgBouncer runs in front of PostgreSQL only (DATABASE_URL is SQLite)")
        yield f"sqlite:///{tmp_path / 'e2e.sqlite3'}"
        return
    pooler = os.environ.get("TEST_PGBOUNCER_URL")
    if route == PGBOUNCER and not pooler:
        pytest.skip("TEST_PGBOUNCER_URL is not set (scripts/with-postgres sets it when PgBouncer is there)")
    import psycopg

    name = f"e2e_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(base)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    reach = urlsplit(pooler) if route == PGBOUNCER else parts
    yield urlunsplit(reach._replace(path=f"/{name}"))
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def server(database_url, tmp_path):
    server = Server(database_url, tmp_path)
    if through_pgbouncer(database_url):
        server.extra_env["DATABASE_POOLER"] = "transaction"
    try:
        server.start()
        server.client.token = server.manage("token", "create", "e2e", "--scope", "write").strip()
        yield server
    finally:
        server.stop()


def keyed_request(server: Server, method: str, path: str, body, key: str, *, abandon: bool = False):
    """One request with an Idempotency-Key: (status, body, replayed), or None when the client
    gave up without reading the answer (as a client whose timeout expired does)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT)
    try:
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {server.client.token}",
            "Idempotency-Key": key,
        }
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        if abandon:
            return None
        response = connection.getresponse()
        answer = json.loads(response.read())
        return response.status, answer, response.getheader("Idempotent-Replayed") == "true"
    finally:
        connection.close()


def kill_between(
    server: Server,
    progress: Progress,
    counted: str,
    between: tuple[int, int],
    kills: int,
    stop: threading.Event,
    also: Callable[[Counter], bool] = lambda counts: True,
    also_says: str = "",
) -> None:
    """kill -9 of every server process, and a restart, `kills` times, each after a random
    number (in `between`) more of `counted` in `progress`; then as many more once again (and
    `also` of the counts), and `stop` set, also when a wait or a restart failed."""
    rng = random.Random(99)
    try:
        for _ in range(kills):
            target = progress[counted] + rng.randint(*between)
            progress.wait_until(lambda c, t=target: c[counted] >= t, f"{target} {counted}")
            server.kill()
            server.start()
        target = progress[counted] + rng.randint(*between)
        progress.wait_until(lambda c: c[counted] >= target and also(c), f"{target} {counted}{also_says}")
    finally:
        stop.set()
