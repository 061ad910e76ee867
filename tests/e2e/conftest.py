"""A real production server (`make serve`: granian, several worker processes) on a fresh
database of the engine under test, and a plain HTTP client for parallel callers."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Client:
    """One HTTP/1.1 request per connection, like many independent callers."""

    def __init__(self, port: int, timeout: float = 30):
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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if self.client.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"server did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """kill -9 of every server process: no chance to finish or clean up anything."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
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

    def verify(self) -> str:
        return self.manage("verify")


@pytest.fixture
def database_url(tmp_path):
    """A fresh, empty database of the engine DATABASE_URL names (SQLite when unset)."""
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        yield f"sqlite:///{tmp_path / 'e2e.sqlite3'}"
        return
    import psycopg

    name = f"e2e_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(base)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def server(database_url, tmp_path):
    server = Server(database_url, tmp_path)
    server.start()
    server.client.token = server.manage("token", "create", "e2e", "--scope", "write").strip()
    yield server
    server.stop()
