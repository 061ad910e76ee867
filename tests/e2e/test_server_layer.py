"""The server layer: what the production server (`make serve`, granian) and the proxy it runs
behind (deploy/nginx.conf) do on their own, before the service sees a request or after it
has stopped."""

import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Client, Server, free_port

pytestmark = pytest.mark.e2e

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
WORKERS = 2
SLOW_BODIES = 2 * WORKERS  # more than the workers: each could hold one
ANSWER_TIMEOUT = 5  # seconds: what "still answers" means while slow clients hang on


# -- the metrics folder -----------------------------------------------------------------------


def metrics_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("inventory-metrics-*"))


def wait_until_gone(tmp: Path, seconds: float = 20) -> list[Path]:
    """The metrics folders still there after `seconds`: make exits on SIGTERM without waiting
    for the server it started, so the server may still be cleaning up when stop() returns."""
    deadline = time.monotonic() + seconds
    while metrics_dirs(tmp) and time.monotonic() < deadline:
        time.sleep(0.1)
    return metrics_dirs(tmp)


@pytest.fixture
def tmp(tmp_path) -> Path:
    """The server's temporary folder (TMPDIR), empty and ours alone."""
    path = tmp_path / "tmp"
    path.mkdir()
    return path


def test_a_stopped_server_leaves_no_metrics_folder(database_url, tmp_path, tmp):
    server = Server(database_url, tmp_path)
    server.extra_env = {"TMPDIR": str(tmp), "WEB_CONCURRENCY": "1"}
    try:
        server.start()
        assert len(metrics_dirs(tmp)) == 1  # where the workers write their samples
    finally:
        # A loaded machine may take longer than the usual allowance to stop the server, and a
        # kill -9 then would leave the folder this test is about.
        server.stop(timeout=120)
    assert wait_until_gone(tmp) == []


def test_a_folder_left_by_kill_9_is_removed_by_the_next_start(database_url, tmp_path, tmp):
    first = Server(database_url, tmp_path)
    first.extra_env = {"TMPDIR": str(tmp), "WEB_CONCURRENCY": "1"}
    first.start()
    first.kill()
    left = metrics_dirs(tmp)
    assert len(left) == 1  # kill -9: nobody could clean up

    second = Server(database_url, tmp_path)
    second.extra_env = first.extra_env
    try:
        second.start()
        assert left[0] not in metrics_dirs(tmp)
        assert len(metrics_dirs(tmp)) == 1  # its own
    finally:
        second.stop()
    assert wait_until_gone(tmp) == []


# -- nginx in front ---------------------------------------------------------------------------


def conf_seconds(directive: str) -> float:
    """A timeout as deploy/nginx.conf sets it, so that the tests follow the file."""
    found = re.search(rf"^\s*{directive}\s+(\d+)s;", NGINX_CONF.read_text(), re.MULTILINE)
    assert found, f"deploy/nginx.conf sets no {directive}"
    return float(found.group(1))


@pytest.fixture(scope="session")
def nginx() -> str:
    """The nginx binary. Installed from Debian's packages when missing and we are root, as CI
    runs (as scripts/with-postgres does for PostgreSQL); skipped only where that cannot be."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("nginx", path=path)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("nginx is not installed, and installing it needs root and apt-get: apt-get install nginx")
    # Debian starts a service when its package is installed unless policy-rc.d says no:
    # this nginx would take port 80 and outlive the tests.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nginx"]):
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}{result.stderr}"
    finally:
        if made_policy:
            policy.unlink()
    found = shutil.which("nginx", path=path)
    assert found, "apt-get installed nginx, yet there is no nginx binary"
    return found


class Proxy:
    """deploy/nginx.conf, as shipped but for its two addresses, in front of a server."""

    def __init__(self, binary: str, workdir: Path, upstream: int):
        self.binary = binary
        self.dir = workdir / "nginx"
        self.dir.mkdir()
        self.upstream = upstream
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def site(self) -> str:
        text = NGINX_CONF.read_text()
        for shipped, here in (
            ("listen 80;", f"listen 127.0.0.1:{self.port};"),
            ("server 127.0.0.1:8000;", f"server 127.0.0.1:{self.upstream};"),
        ):
            assert text.count(shipped) == 1, f"deploy/nginx.conf should say {shipped!r} once"
            text = text.replace(shipped, here)
        return text

    def main_conf(self) -> str:
        """What Debian's /etc/nginx/nginx.conf would be, with every path in our folder."""
        d = self.dir
        return f"""
            daemon off;
            # As root, nginx's workers would otherwise run as nobody, who cannot enter our
            # folder to write the bodies it buffers.
            {"user root;" if os.geteuid() == 0 else ""}
            worker_processes 1;
            pid {d}/nginx.pid;
            events {{ worker_connections 256; }}
            http {{
                access_log {d}/access.log;
                client_body_temp_path {d}/body;
                proxy_temp_path {d}/proxy;
                fastcgi_temp_path {d}/fastcgi;
                uwsgi_temp_path {d}/uwsgi;
                scgi_temp_path {d}/scgi;
                include {d}/inventory.conf;
            }}
        """

    def start(self) -> None:
        for _ in range(5):  # free_port() was free a moment ago; another process may take it
            (self.dir / "inventory.conf").write_text(self.site())
            (self.dir / "nginx.conf").write_text(self.main_conf())
            log = self.dir / "error.log"
            self.process = subprocess.Popen(
                [self.binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-e", str(log)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if raw(self.port, request("GET", "/healthz"))[0] == 200:
                        return
                except OSError:
                    time.sleep(0.1)
            self.stop()
            if "Address already in use" not in log.read_text():
                raise AssertionError(f"nginx did not start:\n{log.read_text()[-3000:]}")
            self.port = free_port()
        raise AssertionError("every port tried was taken")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)


@pytest.fixture
def two_workers(database_url, tmp_path):
    """`make serve` with two workers, and a write token."""
    server = Server(database_url, tmp_path)
    server.extra_env = {"WEB_CONCURRENCY": str(WORKERS)}
    try:
        server.start()
        server.client.token = server.manage("token", "create", "e2e", "--scope", "write").strip()
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxied(nginx, two_workers, tmp_path):
    """The server with nginx in front: (server, proxy)."""
    proxy = Proxy(nginx, tmp_path, two_workers.port)
    try:
        proxy.start()
        yield two_workers, proxy
    finally:
        proxy.stop()


# -- raw HTTP ---------------------------------------------------------------------------------


def request(method: str, target: str, headers: dict | None = None, body: bytes = b"") -> bytes:
    head = {"Host": "127.0.0.1", "Connection": "close", **(headers or {})}
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in head.items())]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def raw(port: int, data: bytes, timeout: float = ANSWER_TIMEOUT) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of the answer to bytes sent as they are.
    Reads until the server closes: every request here says `Connection: close` or is refused."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    if not answer:
        raise ConnectionError("closed without an answer")
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    if headers.get("transfer-encoding") == "chunked":
        body = dechunked(body)
    return int(status_line.split()[1]), headers, body


def dechunked(data: bytes) -> bytes:
    body = b""
    while True:
        size, _, data = data.partition(b"\r\n")
        if int(size, 16) == 0:
            return body
        body, data = body + data[: int(size, 16)], data[int(size, 16) + 2 :]


def chunked(body: bytes, size: int = 65536) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


# -- slow clients -----------------------------------------------------------------------------


def slow_body(port: int, token: str) -> socket.socket:
    """A write that announces 1000 bytes of body, sends 10 and then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        request(
            "POST",
            "/items",
            {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Content-Length": "1000",
            },
        )
        + b'{"name": "'
    )
    return sock


def slow_headers(port: int) -> socket.socket:
    """A request line and one header, then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return sock


def seconds_until_answered_or_closed(sock: socket.socket, since: float, limit: float) -> float:
    """Seconds from `since` until the server answered the connection or closed it (inf if
    neither within `limit`)."""
    sock.settimeout(max(0.0, since + limit - time.monotonic()))
    try:
        sock.recv(4096)  # an answer's first bytes, or b"" once closed
    except TimeoutError:
        return math.inf
    except ConnectionError:
        pass  # reset: closed too
    return time.monotonic() - since


def test_slow_clients_hold_no_worker_and_are_cut_off(proxied):
    server, proxy = proxied
    token = server.client.token
    opened = time.monotonic()
    bodies = [slow_body(proxy.port, token) for _ in range(SLOW_BODIES)]
    heads = [slow_headers(proxy.port), socket.create_connection(("127.0.0.1", proxy.port))]
    try:
        time.sleep(0.5)  # each has reached whatever reads its request
        client = Client(proxy.port, timeout=ANSWER_TIMEOUT)
        client.token = token
        assert client.request("GET", "/healthz")[0] == 200
        status, item = client.request("POST", "/items", {"name": "apple", "qty": 5})
        assert status == 201, item
        assert client.request("GET", f"/items/{item['id']}") == (200, item)

        # Cut off once they have been silent for the proxy's timeouts (with room for a
        # loaded machine), never left to hang.
        margin = 5
        body_limit = conf_seconds("client_body_timeout") + margin
        head_limit = conf_seconds("client_header_timeout") + margin
        waited = [seconds_until_answered_or_closed(sock, opened, body_limit) for sock in bodies]
        assert max(waited) < body_limit, waited
        waited = [seconds_until_answered_or_closed(sock, opened, head_limit) for sock in heads]
        assert max(waited) < head_limit, waited
    finally:
        for sock in bodies + heads:
            sock.close()


# -- what the server layer answers itself -----------------------------------------------------

URL_70_KB = "/healthz?" + "a" * 70_000
MANY_HEADERS = {f"X-Header-{i}": "a" for i in range(200)}
CONTENT_LENGTH_ABC = {"Content-Type": "application/json", "Content-Length": "abc"}


def test_granian_answers_what_it_cannot_take_with_a_bare_status(two_workers):
    server = two_workers
    within = [
        request("GET", "/healthz?" + "a" * 60_000),
        request("GET", "/healthz", {f"X-Header-{i}": "a" for i in range(98)}),  # 100 with Host
        request("GET", "/healthz", {"X-Big": "a" * 100_000}),
    ]
    for data in within:
        assert raw(server.port, data)[0] == 200
    beyond = [
        (request("GET", URL_70_KB), 414),  # request target over 65534 bytes
        (request("GET", "/healthz", MANY_HEADERS), 431),  # over 100 header fields
        (request("GET", "/healthz", {"X-Big": "a" * 300_000}), 431),  # headers over 2 x 128 KiB
        (request("POST", "/items", CONTENT_LENGTH_ABC), 400),
        (b"HELLO\r\n\r\n", 400),
    ]
    for data, status in beyond:
        assert raw(server.port, data)[::2] == (status, b""), data[:60]  # at once, no body


def test_the_proxy_answers_its_own_refusals_in_json(proxied):
    server, proxy = proxied
    auth = {"Authorization": f"Bearer {server.client.token}", "Content-Type": "application/json"}
    over_1_mib = b" " * (1024 * 1024 + 1)
    refusals = [
        (request("GET", URL_70_KB), 414, "uri_too_long"),
        (request("GET", "/healthz", {"X-Big": "a" * 9000}), 431, "request_header_fields_too_large"),
        (request("POST", "/items", CONTENT_LENGTH_ABC), 400, "bad_request"),
        (b"HELLO\r\n\r\n", 400, "bad_request"),
        (request("TRACE", "/healthz"), 405, "method_not_allowed"),
        (request("GET", "/.proxy-error"), 404, "not_found"),
        # The service's own limit, with its message, whatever the framing.
        (request("POST", "/items", {**auth, "Content-Length": str(len(over_1_mib))}, over_1_mib), 413,
         "the body is larger than 1 MiB"),
        (request("POST", "/items", {**auth, "Transfer-Encoding": "chunked"}, chunked(over_1_mib)), 413,
         "the body is larger than 1 MiB"),
    ]  # fmt: skip
    for data, status, error in refusals:
        got, headers, body = raw(proxy.port, data)
        assert headers["content-type"] == "application/json", (status, body[:200])
        assert (got, json.loads(body)) == (status, {"error": error})

    # More header fields than granian takes (nginx adds two of its own) pass through nginx:
    # granian's bare 431 is what the client gets.
    assert raw(proxy.port, request("GET", "/healthz", MANY_HEADERS))[::2] == (431, b"")

    # A chunked body reaches the service whole.
    item = json.dumps({"name": "pear", "qty": 2}).encode()
    status, _, body = raw(
        proxy.port, request("POST", "/items", {**auth, "Transfer-Encoding": "chunked"}, chunked(item))
    )
    assert status == 201, body
    assert json.loads(body)["name"] == "pear"

    server.stop()
    got, headers, body = raw(proxy.port, request("GET", "/healthz"))
    assert (got, headers["content-type"], json.loads(body)) == (
        502,
        "application/json",
        {"error": "bad_gateway"},
    )


# -- make run ---------------------------------------------------------------------------------


def test_make_run_answers_its_curl_line_and_a_chunked_body(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}",
    }
    env.pop("SECRET_KEY", None)  # development needs none
    log = tmp_path / "run.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if raw(port, request("GET", "/healthz"))[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)

        # The line it printed: curl -s -X POST URL -H ... -H ... -d BODY
        line = next(line for line in log.read_text().splitlines() if line.strip().startswith("curl "))
        words = iter(shlex.split(line)[1:])
        method, url, headers, body = "GET", "", {}, b""
        for word in words:
            if word == "-X":
                method = next(words)
            elif word == "-H":
                name, value = next(words).split(": ", 1)
                headers[name] = value
            elif word == "-d":
                body = next(words).encode()
            elif not word.startswith("-"):
                url = word
        assert url.startswith(f"http://127.0.0.1:{port}/"), line
        path = url.removeprefix(f"http://127.0.0.1:{port}")
        status, _, answer = raw(port, request(method, path, {**headers, "Content-Length": len(body)}, body))
        assert status == 201, answer

        headers["Transfer-Encoding"] = "chunked"
        pear = json.dumps({"name": "pear", "qty": 2}).encode()
        status, _, answer = raw(port, request("POST", "/items", headers, chunked(pear)))
        assert status == 201, answer
        assert json.loads(answer)["name"] == "pear"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise AssertionError("make run did not stop on SIGTERM") from None
