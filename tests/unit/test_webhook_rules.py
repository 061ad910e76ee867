"""The rules of webhooks, without a database: which addresses and URLs the service may call,
which event types a webhook's patterns name, the back-off schedule, the signature of an
attempt, and the request an attempt makes (to the address checked, redirects not followed)."""

import base64
import datetime
import ipaddress
import json
import uuid

import pytest
import standardwebhooks
from standardwebhooks import WebhookVerificationError

from inventory import outbound, webhooks
from inventory.errors import InvalidInput, WebhookUrlRefused
from inventory.events import TYPES

# Addresses the service must never connect to, by the class that refuses them (RFC 6890 and
# its updates; IANA's special-purpose address registries).
REFUSED = {
    "0.0.0.0": "unspecified",  # noqa: S104 (an address refused, not one bound)
    "0.1.2.3": "private",  # "this network", 0/8
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "10.0.0.1": "private",
    "10.255.255.255": "private",
    "172.16.0.1": "private",
    "172.31.255.255": "private",
    "192.168.0.1": "private",
    "169.254.0.1": "link-local",
    "169.254.169.254": "metadata",
    "169.254.170.2": "metadata",
    "100.64.0.1": "shared",
    "100.127.255.255": "shared",
    "100.100.100.200": "metadata",
    "168.63.129.16": "metadata",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "192.0.0.1": "private",  # IETF protocol assignments
    "192.0.2.1": "private",  # documentation (TEST-NET-1)
    "198.18.0.1": "private",  # benchmarking
    "198.51.100.1": "private",  # documentation (TEST-NET-2)
    "203.0.113.1": "private",  # documentation (TEST-NET-3)
    "::": "unspecified",
    "::1": "loopback",
    "fe80::1": "link-local",
    "fe80::1%eth0": "link-local",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "fd00:ec2::254": "metadata",
    "ff02::1": "multicast",
    "ff0e::1": "multicast",
    "fec0::1": "site-local",
    "100::1": "reserved",  # discard-only
    "2001:db8::1": "private",  # documentation
    "2001::1": "private",  # Teredo
    "2001:10::1": "private",  # ORCHID
    "::7f00:1": "reserved",  # IPv4-compatible (deprecated)
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "metadata",
    "::ffff:100.64.0.1": "shared",
    "::ffff:0.0.0.0": "unspecified",
    "::ffff:224.0.0.1": "multicast",
    "64:ff9b::7f00:1": "loopback",  # NAT64 of 127.0.0.1
    "64:ff9b::a00:1": "private",  # NAT64 of 10.0.0.1
    "64:ff9b::a9fe:a9fe": "metadata",  # NAT64 of 169.254.169.254
    "64:ff9b:1::1": "reserved",  # local-use NAT64
    "2002:7f00:1::1": "loopback",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1": "metadata",  # 6to4 of 169.254.169.254
    "2002:c0a8:1::1": "private",  # 6to4 of 192.168.0.1
}
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "100.63.255.255",  # just below the shared space
    "100.128.0.0",  # just above it
    "172.15.255.255",
    "172.32.0.0",
    "192.167.255.255",
    "192.169.0.0",
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]
REASON_WORDS = {
    "unspecified": "unspecified",
    "loopback": "loopback",
    "private": "private",
    "link-local": "link-local",
    "metadata": "metadata",
    "shared": "shared",
    "multicast": "multicast",
    "reserved": "reserved",
    "site-local": "site-local",
}


@pytest.mark.parametrize(("address", "kind"), REFUSED.items(), ids=REFUSED.keys())
def test_an_address_that_is_not_public_is_refused_with_its_class(address, kind):
    refusal = outbound.address_refusal(ipaddress.ip_address(address))

    assert refusal is not None
    assert REASON_WORDS[kind] in refusal


@pytest.mark.parametrize("address", PUBLIC)
def test_a_public_address_is_allowed(address):
    assert outbound.address_refusal(ipaddress.ip_address(address)) is None


def test_a_name_is_refused_if_any_of_its_addresses_is_not_public():
    addresses = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1")]

    with pytest.raises(WebhookUrlRefused, match=r"hooks\.example resolves to 10\.0\.0\.1, a private"):
        outbound.check_addresses("hooks.example", addresses)


# URLs refused whatever the address rules, and without resolving anything.
MALFORMED = {
    "not a string": 42,
    "null": None,
    "a list": ["https://hooks.example/"],
    "empty": "",
    "no scheme": "hooks.example/in",
    "scheme-relative": "//hooks.example/in",
    "ftp": "ftp://hooks.example/in",
    "javascript": "javascript:alert(1)",
    "file": "file:///etc/passwd",
    "no host": "https:///in",
    "bare scheme": "https://",
    "credentials": "https://user:secret@hooks.example/in",
    "user only": "https://user@hooks.example/in",
    "backslash and at": "https://evil.example\\@hooks.example/in",
    "fragment": "https://hooks.example/in#top",
    "empty fragment": "https://hooks.example/in#",
    "space in host": "https://hooks .example/in",
    "space in path": "https://hooks.example/in put",
    "tab": "https://hooks.example/\tin",
    "newline": "https://hooks.example/in\n",
    "CRLF injection": "https://hooks.example/in\r\nX-Injected: 1",
    "NUL": "https://hooks.example/in\x00",
    "lone surrogate": "https://hooks.example/\ud800",
    "port 0": "https://hooks.example:0/in",
    "port too large": "https://hooks.example:65536/in",
    "port not a number": "https://hooks.example:https/in",
    "unclosed IPv6": "https://[2606:4700:4700::1111/in",
    "IPv6 not bracketed content": "https://[hooks.example]/in",
    "underscore in name": "https://hooks_in.example/in",
    "label starting with a hyphen": "https://-hooks.example/in",
    "label of 64": "https://" + "a" * 64 + ".example/in",
    "decimal IPv4": "https://2130706433/in",
    "hex IPv4": "https://0x7f.1/in",
    "short IPv4": "https://127.1/in",
    "octal IPv4": "https://017700000001/in",
    "numeric last label": "https://hooks.123/in",
    "non-ASCII path": "https://hooks.example/é",
    "too long": "https://hooks.example/" + "a" * 2000,
}


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize("url", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_url_is_refused(url, allow_private):
    with pytest.raises(WebhookUrlRefused) as refused:
        outbound.parse_url(url, allow_private=allow_private)

    assert refused.value.field == "url"
    assert len(refused.value.message) < 200  # never the whole URL echoed back


NOT_PUBLIC_LITERALS = [
    "https://127.0.0.1/in",
    "https://10.1.2.3:8443/in",
    "https://169.254.169.254/latest/meta-data/",
    "https://100.64.0.1/in",
    "https://[::1]/in",
    "https://[::ffff:127.0.0.1]/in",
    "https://[::ffff:7f00:1]/in",
    "https://[fe80::1%25eth0]/in",
    "https://[fd00:ec2::254]/in",
    "https://[64:ff9b::a9fe:a9fe]/in",
    "https://0.0.0.0/in",
]


@pytest.mark.parametrize("url", NOT_PUBLIC_LITERALS)
def test_a_url_with_an_address_that_is_not_public_is_refused_unless_private_is_allowed(url):
    with pytest.raises(WebhookUrlRefused):
        outbound.parse_url(url, allow_private=False)

    assert outbound.parse_url(url.replace("https", "http", 1), allow_private=True).scheme == "http"


def test_http_is_refused_unless_private_addresses_are_allowed():
    with pytest.raises(WebhookUrlRefused, match="https"):
        outbound.parse_url("http://hooks.example/in", allow_private=False)

    assert outbound.parse_url("http://hooks.example/in", allow_private=True).port == 80


PARSED = {
    "https://hooks.example/in": ("hooks.example", 443, "/in", "hooks.example"),
    "https://HOOKS.Example./in": ("hooks.example.", 443, "/in", "hooks.example."),
    "https://hooks.example": ("hooks.example", 443, "/", "hooks.example"),
    "https://hooks.example:8443/a/b?c=d&e": ("hooks.example", 8443, "/a/b?c=d&e", "hooks.example:8443"),
    "https://hooks.example:443/in?": ("hooks.example", 443, "/in?", "hooks.example"),
    "HTTPS://hooks.example/%C3%A9": ("hooks.example", 443, "/%C3%A9", "hooks.example"),
    "https://bücher.example/in": ("xn--bcher-kva.example", 443, "/in", "xn--bcher-kva.example"),
    "https://8.8.8.8/in": ("8.8.8.8", 443, "/in", "8.8.8.8"),
    "https://[2606:4700:4700::1111]:8443/in": (
        "2606:4700:4700::1111",
        8443,
        "/in",
        "[2606:4700:4700::1111]:8443",
    ),
}


@pytest.mark.parametrize(("url", "expected"), PARSED.items(), ids=PARSED.keys())
def test_a_valid_url_gives_host_port_request_target_and_host_header(url, expected):
    target = outbound.parse_url(url, allow_private=False)

    assert (target.host, target.port, target.path, target.host_header) == expected
    assert target.scheme == "https"


def test_a_name_is_checked_on_every_address_it_resolves_to(monkeypatch):
    answers = {
        "good.example": ["93.184.215.14", "2606:4700:4700::1111"],
        "rebind.example": ["93.184.215.14", "127.0.0.1"],
    }
    monkeypatch.setattr(
        outbound,
        "resolve",
        lambda host, port, *, timeout: [ipaddress.ip_address(a) for a in answers[host]],
    )

    assert outbound.check_url("https://good.example/in", allow_private=False).host == "good.example"
    with pytest.raises(WebhookUrlRefused, match=r"127\.0\.0\.1, a loopback"):
        outbound.check_url("https://rebind.example/in", allow_private=False)


def test_a_name_that_does_not_resolve_is_refused(monkeypatch):
    def resolve(host, port, *, timeout):
        raise outbound.Unreachable(f"{host} does not resolve")

    monkeypatch.setattr(outbound, "resolve", resolve)

    with pytest.raises(WebhookUrlRefused, match="does not resolve"):
        outbound.check_url("https://nowhere.example/in", allow_private=False)


# Patterns ---------------------------------------------------------------------------------------

VALID_PATTERNS = [["*"], ["item.*"], ["hold.*"], ["item.*", "hold.*"], ["item.created"], list(TYPES)]
INVALID_PATTERNS = {
    "empty": [],
    "not a list": "item.*",
    "null": None,
    "an object": {"item.*": True},
    "unknown type": ["item.exploded"],
    "prefix wildcard": ["*.created"],
    "bare prefix": ["item"],
    "other case": ["Item.Created"],
    "padded": [" item.created"],
    "a number": [1],
    "null inside": [None],
    "twice": ["item.*", "item.*"],
    "huge": ["x" * 100_000],
}


@pytest.mark.parametrize("patterns", VALID_PATTERNS)
def test_valid_patterns_are_kept_as_given(patterns):
    assert webhooks.check_patterns(patterns) == patterns


@pytest.mark.parametrize("patterns", INVALID_PATTERNS.values(), ids=INVALID_PATTERNS.keys())
def test_invalid_patterns_are_refused(patterns):
    with pytest.raises(InvalidInput) as refused:
        webhooks.check_patterns(patterns)

    assert refused.value.field == "events"
    assert len(refused.value.message) < 200


@pytest.mark.parametrize("type_", TYPES)
def test_each_type_matches_itself_its_family_and_star_and_nothing_else(type_):
    family = type_.split(".")[0] + ".*"
    others = [t for t in TYPES if t != type_]

    assert webhooks.pattern_matches(["*"], type_)
    assert webhooks.pattern_matches([family], type_)
    assert webhooks.pattern_matches([type_], type_)
    assert not webhooks.pattern_matches(others, type_)
    assert not webhooks.pattern_matches([{"item.*": "hold.*", "hold.*": "item.*"}[family]], type_)


def test_the_contract_types_are_all_known():
    assert set(TYPES) == {
        "item.created",
        "item.updated",
        "item.deleted",
        "item.qty_changed",
        "item.low_stock",
        "item.out_of_stock",
        "item.back_in_stock",
        "hold.created",
        "hold.committed",
        "hold.released",
        "hold.extended",
        "hold.expired",
    }


# Back-off ---------------------------------------------------------------------------------------


def test_back_off_doubles_from_two_seconds_up_to_an_hour():
    delays = [webhooks.backoff_seconds(attempts, jitter=0.0) for attempts in range(1, 16)]

    assert delays[:5] == [2, 4, 8, 16, 32]
    assert delays[10] == 2048
    assert delays[11:] == [3600] * 4
    assert webhooks.backoff_seconds(10_000, jitter=0.0) == 3600


@pytest.mark.parametrize("attempts", [1, 5, 11, 12, 40])
def test_jitter_lengthens_a_delay_by_at_most_ten_percent(attempts):
    base = webhooks.backoff_seconds(attempts, jitter=0.0)

    assert webhooks.backoff_seconds(attempts, jitter=0.999) <= base * 1.1
    assert webhooks.backoff_seconds(attempts, jitter=0.5) == pytest.approx(base * 1.05)


def test_a_webhook_failing_from_the_first_second_is_tried_some_thirty_times_in_its_24_hours():
    # The attempts a webhook that never answers gets before it is disabled, at the longest jitter.
    elapsed, attempts = 0.0, 0
    while elapsed < 24 * 3600:
        attempts += 1
        elapsed += webhooks.backoff_seconds(attempts, jitter=0.999)
    assert 25 <= attempts <= 40


# Signature (Standard Webhooks) ----------------------------------------------------------------------

BODY = b'{"id":"5d9b6f0e-3c1c-4b7a-9d59-4d3a2b1c0f00","type":"item.created","data":{"name":"pear"}}'


def _headers(secret: str, body: bytes = BODY, at: datetime.datetime | None = None) -> dict[str, str]:
    at = at or datetime.datetime.now(datetime.UTC)
    return webhooks.signed_headers(secret=secret, msg_id=str(uuid.uuid4()), timestamp=at, body=body)


def test_a_new_secret_is_whsec_and_base64_of_32_random_bytes():
    secrets_made = {webhooks._new_secret() for _ in range(50)}

    assert len(secrets_made) == 50
    for secret in secrets_made:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32


def test_an_attempt_verifies_with_the_webhooks_secret():
    secret = webhooks._new_secret()
    headers = _headers(secret)

    assert standardwebhooks.Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    assert headers["content-type"] == "application/json"
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["webhook-timestamp"].isdigit()


def test_an_attempt_does_not_verify_with_another_secret():
    headers = _headers(webhooks._new_secret())

    with pytest.raises(WebhookVerificationError):
        standardwebhooks.Webhook(webhooks._new_secret()).verify(BODY, headers)


@pytest.mark.parametrize(
    "changed",
    [BODY.replace(b"pear", b"peas"), BODY + b" ", BODY[:-1], b"{}"],
    ids=["a value", "trailing space", "truncated", "another body"],
)
def test_an_attempt_does_not_verify_with_a_changed_body(changed):
    secret = webhooks._new_secret()
    headers = _headers(secret)

    with pytest.raises(WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(changed, headers)


def test_an_attempt_does_not_verify_with_a_changed_id_or_timestamp():
    secret = webhooks._new_secret()
    headers = _headers(secret)

    for field, value in (
        ("webhook-id", str(uuid.uuid4())),
        ("webhook-timestamp", str(int(headers["webhook-timestamp"]) - 1)),
    ):
        with pytest.raises(WebhookVerificationError):
            standardwebhooks.Webhook(secret).verify(BODY, {**headers, field: value})


def test_each_attempt_is_signed_with_its_own_timestamp():
    secret = webhooks._new_secret()
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    first = webhooks.signed_headers(secret=secret, msg_id="e1", timestamp=now, body=BODY)
    later = webhooks.signed_headers(
        secret=secret, msg_id="e1", timestamp=now + datetime.timedelta(seconds=2), body=BODY
    )

    assert int(later["webhook-timestamp"]) - int(first["webhook-timestamp"]) == 2
    assert later["webhook-signature"] != first["webhook-signature"]
    assert first["webhook-timestamp"] == str(int(now.timestamp()))


# The request an attempt makes -----------------------------------------------------------------------


class FakePool:
    """urllib3's connection pool, recording how it was made and used."""

    made: list[dict] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        FakePool.made.append({"pool": kwargs})

    def urlopen(self, method, url, **kwargs):
        FakePool.made[-1].update(method=method, url=url, **kwargs)
        return FakeResponse(self.status)

    def close(self):
        pass


class FakeResponse:
    def __init__(self, status: int):
        self.status = status

    def read(self, amount):
        return ("x" * 1000 + "\x00\n").encode()[:amount]

    def close(self):
        pass


@pytest.fixture
def pool(monkeypatch):
    FakePool.made = []
    FakePool.status = 204
    monkeypatch.setattr(outbound, "_HTTPSPool", FakePool)
    monkeypatch.setattr(outbound, "_HTTPPool", FakePool)
    return FakePool


def test_an_attempt_connects_to_the_address_checked_with_the_name_for_tls_and_host(pool, monkeypatch):
    lookups = iter([["93.184.215.14"], ["10.0.0.1"]])  # a second lookup would say otherwise
    monkeypatch.setattr(
        outbound, "resolve", lambda host, port, *, timeout: [ipaddress.ip_address(a) for a in next(lookups)]
    )

    answer = outbound.post(
        "https://hooks.example:8443/in?x=1", body=b"{}", headers={"webhook-id": "e1"}, allow_private=False
    )

    assert (answer.status, answer.error) == (204, None)
    [used] = pool.made
    assert used["pool"]["host"] == "93.184.215.14"
    assert used["pool"]["port"] == 8443
    assert used["pool"]["server_hostname"] == "hooks.example"
    assert used["pool"]["assert_hostname"] == "hooks.example"
    assert used["pool"]["retries"] is False
    assert used["pool"]["timeout"].connect_timeout == pytest.approx(5, abs=0.1)
    assert used["pool"]["timeout"].total <= 10
    assert (used["method"], used["url"]) == ("POST", "/in?x=1")
    assert used["headers"]["Host"] == "hooks.example:8443"
    assert used["headers"]["webhook-id"] == "e1"
    assert used["redirect"] is False
    assert used["retries"] is False


def test_an_attempt_to_a_name_that_now_resolves_to_a_private_address_sends_nothing(pool, monkeypatch):
    monkeypatch.setattr(
        outbound, "resolve", lambda host, port, *, timeout: [ipaddress.ip_address("10.0.0.1")]
    )

    answer = outbound.post("https://hooks.example/in", body=b"{}", headers={}, allow_private=False)

    assert answer.status is None
    assert answer.error.startswith("refused: hooks.example resolves to 10.0.0.1")
    assert pool.made == []


def test_an_attempt_to_an_address_literal_is_checked_again_and_sends_nothing(pool):
    answer = outbound.post("https://169.254.169.254/latest", body=b"{}", headers={}, allow_private=False)

    assert answer.status is None
    assert "metadata" in answer.error
    assert pool.made == []


def test_with_private_addresses_allowed_an_attempt_goes_to_any_address(pool):
    answer = outbound.post("http://127.0.0.1:9/in", body=b"{}", headers={}, allow_private=True)

    assert answer.status == 204
    assert pool.made[0]["pool"]["host"] == "127.0.0.1"


@pytest.mark.parametrize(("status", "error"), [(301, "redirects are not followed"), (500, "x" * 200)])
def test_a_refusing_answer_keeps_at_most_200_characters_of_the_body(pool, status, error):
    pool.status = status

    answer = outbound.post("http://127.0.0.1:9/in", body=b"{}", headers={}, allow_private=True)

    assert (answer.status, answer.error) == (status, error)


def test_a_name_that_does_not_resolve_is_a_failed_attempt(monkeypatch, pool):
    def resolve(host, port, *, timeout):
        raise outbound.Unreachable(f"{host} did not resolve within 10 s")

    monkeypatch.setattr(outbound, "resolve", resolve)

    answer = outbound.post("https://hooks.example/in", body=b"{}", headers={}, allow_private=False)

    assert (answer.status, answer.error) == (None, "hooks.example did not resolve within 10 s")
    assert pool.made == []
