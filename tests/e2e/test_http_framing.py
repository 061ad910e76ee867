"""Framing through the real server (`make serve`, granian): a body sent with
`Transfer-Encoding: chunked` is read whole and held to the same 1 MiB limit as one framed by
Content-Length, and HEAD goes over the wire with GET's headers and without a body."""

import contextlib
import http.client
import json
import re
import socket
import threading

import pytest

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
TIMEOUT = 60


def send(server, method: str, path: str, body: bytes | list[bytes] | None = None, headers=None):
    """(status, headers, body) of one request. A list body goes out chunked, a chunk per
    element (http.client's encode_chunked)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        sent = {"Authorization": f"Bearer {server.client.token}", **(headers or {})}
        if isinstance(body, list):
            sent |= {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
            connection.request(method, path, body=iter(body), headers=sent, encode_chunked=True)
        else:
            if body is not None:
                sent["Content-Type"] = "application/json"
            connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def head_on_the_wire(server, path: str, headers=None) -> tuple[int, dict, bytes]:
    """HEAD over a plain socket: (status, headers, every byte after them until the server
    closes). http.client reads no body after HEAD, so it could not see one that was sent."""
    sent = {"Authorization": f"Bearer {server.client.token}", **(headers or {})}
    request = (
        f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in sent.items())
        + "Connection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request.encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    answered = {}
    for line in lines:
        name, _, value = line.partition(":")
        answered[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), answered, rest


def core(item: dict) -> dict:
    """The fields every item has had since the first version: what these tests look at."""
    return {key: item[key] for key in ("id", "name", "qty")}


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def stored_items(server) -> dict[str, dict]:
    status, _, body = send(server, "GET", "/items?limit=1000")
    assert status == 200, body
    page = json.loads(body)
    assert page["next"] is None
    return {item["id"]: item for item in page["items"]}


def movements(server, item_id: str) -> list[dict]:
    status, _, body = send(server, "GET", f"/items/{item_id}/movements?limit=1000")
    assert status == 200, body
    return json.loads(body)["movements"]


# How a body is cut into chunks: name -> chunk size in bytes.
CHUNKINGS = {"one chunk": 1 << 20, "several chunks": 7, "a byte a chunk": 1}


def test_a_chunked_create_is_read_whole_and_stores_the_item(server):
    for number, (chunking, size) in enumerate(CHUNKINGS.items()):
        name = f"chunked {chunking}"
        body = json.dumps({"name": name, "qty": 10 + number}).encode()

        status, headers, answer = send(server, "POST", "/items", chunks(body, size))

        assert status == 201, (chunking, answer)
        item = core(json.loads(answer))
        assert item == {"id": item["id"], "name": name, "qty": 10 + number}
        assert headers["location"] == f"/items/{item['id']}"
        assert core(stored_items(server)[item["id"]]) == item
        assert [(m["kind"], m["delta"]) for m in movements(server, item["id"])] == [("create", 10 + number)]


def test_a_chunked_qty_change_applies_its_delta_once_and_its_repeat_is_replayed(server):
    created = core(
        json.loads(send(server, "POST", "/items", json.dumps({"name": "apple", "qty": 5}).encode())[2])
    )
    body = json.dumps({"delta": -2, "expected_qty": 5, "reason": "sale"}).encode()
    path, key = f"/items/{created['id']}/qty", {"Idempotency-Key": "chunked-sale"}

    status, _, answer = send(server, "PATCH", path, chunks(body, 4), headers=key)
    # The same request cut differently: the key's fingerprint is of the body, not its framing.
    again_status, again_headers, again = send(server, "PATCH", path, chunks(body, 9), headers=key)

    assert status == 200, answer
    assert core(json.loads(answer)) == {**created, "qty": 3}
    assert (again_status, again, again_headers["idempotent-replayed"]) == (200, answer, "true")
    assert [core(item) for item in stored_items(server).values()] == [{**created, "qty": 3}]
    assert [(m["kind"], m["delta"], m["reason"]) for m in movements(server, created["id"])] == [
        ("create", 5, None),
        ("adjust", -2, "sale"),
    ]


def padded(body: dict, size: int) -> bytes:
    """The JSON of `body`, with trailing white space up to `size` bytes."""
    text = json.dumps(body).encode()
    return text + b" " * (size - len(text))


def test_a_chunked_body_of_1_mib_is_read_and_one_byte_more_is_413_storing_nothing(server):
    over = padded({"name": "one byte too many", "qty": 1}, MIB + 1)
    at_limit = padded({"name": "just fits", "qty": 1}, MIB)

    refused_status, refused_headers, refused = send(server, "POST", "/items", chunks(over, 64 * 1024))

    assert refused_status == 413, refused
    assert refused_headers["content-type"] == "application/json"
    assert isinstance(json.loads(refused)["error"], str)
    assert stored_items(server) == {}

    status, _, answer = send(server, "POST", "/items", chunks(at_limit, 64 * 1024))

    assert status == 201, answer
    assert [item["name"] for item in stored_items(server).values()] == ["just fits"]


def test_a_64_mib_chunked_body_gets_a_json_413_and_stores_nothing(server):
    # The service reads 1 MiB and a byte of it and answers; the server may close before the
    # rest is sent, so the body goes from a thread of its own, as a client that reads while
    # it writes.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    head = (
        f"POST /items HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {server.client.token}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    block = b"10000\r\n" + b" " * 0x10000 + b"\r\n"  # a chunk of 64 KiB

    def write():
        with contextlib.suppress(OSError):  # the server may close once it has answered
            sock.sendall(head.encode() + b"1\r\n{\r\n")
            for _ in range(1024):
                sock.sendall(block)
            sock.sendall(b"0\r\n\r\n")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        response = http.client.HTTPResponse(sock)
        response.begin()
        status, content_type, answer = response.status, response.getheader("Content-Type"), response.read()
    finally:
        sock.close()
        writer.join()

    assert status == 413, answer
    assert content_type == "application/json"
    assert isinstance(json.loads(answer)["error"], str)
    assert stored_items(server) == {}


# Framing and per-request headers, which differ between any two answers by design: a GET's
# body goes chunked, a HEAD announces the length it would have.
PER_ANSWER = {"date", "connection", "transfer-encoding", "content-length"}


def test_head_through_the_server_has_the_get_headers_and_no_body(server):
    created = send(server, "POST", "/items", json.dumps({"name": "apple", "qty": 5}).encode())
    item = json.loads(created[2])
    paths = [
        "/healthz",
        "/readyz",
        "/items",
        f"/items/{item['id']}",
        f"/items/{item['id']}/movements",
        "/openapi.json",
        "/docs",
        "/no/such/route",
    ]
    # The static files the /docs page loads, served by the service too.
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', send(server, "GET", "/docs")[2].decode())
    assert assets

    for path in [*paths, *assets]:
        get_status, get_headers, get_body = send(server, "GET", path, headers={"X-Request-ID": "same"})
        status, headers, rest = head_on_the_wire(server, path, headers={"X-Request-ID": "same"})

        assert (status, rest) == (get_status, b""), path
        assert headers["content-length"] == str(len(get_body)), path
        assert {k: v for k, v in headers.items() if k not in PER_ANSWER} == {
            k: v for k, v in get_headers.items() if k not in PER_ANSWER
        }, path
