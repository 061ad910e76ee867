import json

import hypothesis
import pytest
from django.test import Client

from inventory import tokens

# What these tests check is not time: a 200 ms deadline per example fails them on a slow or
# loaded machine. On top of the active profile (hypothesis's own on CI), so that only this changes.
hypothesis.settings.register_profile("no-deadline", hypothesis.settings.default, deadline=None)
hypothesis.settings.load_profile("no-deadline")


WRITER = "test writer"  # the name of write_token: the actor of every change `api` makes
READER = "test reader"


def expected_item(base: dict | None = None, /, **fields) -> dict:
    """An item as every response shows it: `base` (an item the API answered, or nothing) with
    `fields` set, and `available` worked out again as qty - reserved. A field that neither
    gives is as a new item has it: reserved 0, low_stock_threshold null."""
    assert "available" not in fields, "available follows from qty and reserved"
    values = {"reserved": 0, "low_stock_threshold": None, **(base or {}), **fields}
    values.pop("available", None)
    unknown = set(values) - {"id", "name", "qty", "reserved", "low_stock_threshold"}
    assert not unknown, f"not a field of an item: {sorted(unknown)}"
    return {
        "id": values["id"],
        "name": values["name"],
        "qty": values["qty"],
        "reserved": values["reserved"],
        "available": values["qty"] - values["reserved"],
        "low_stock_threshold": values["low_stock_threshold"],
    }


class Api:
    """The HTTP API through Django's test client, speaking JSON with a bearer token."""

    def __init__(self, client: Client, token: str | None = None):
        self.client = client
        self.token = token

    def request(
        self,
        method: str,
        path: str,
        body=None,
        *,
        raw: bytes | str | None = None,
        content_type: str = "application/json",
        **headers,
    ):
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        kwargs = {"content_type": content_type} if data is not None else {}
        if self.token is not None:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
        return self.client.generic(method, path, data=data or "", **kwargs, **extra)

    def get(self, path, **headers):
        return self.request("GET", path, **headers)

    def post(self, path, body=None, **kwargs):
        return self.request("POST", path, body, **kwargs)

    def patch(self, path, body=None, **kwargs):
        return self.request("PATCH", path, body, **kwargs)

    def delete(self, path, **headers):
        return self.request("DELETE", path, **headers)

    def create(self, name: str, qty: int = 0) -> dict:
        response = self.post("/items", {"name": name, "qty": qty})
        assert response.status_code == 201, response.content
        return response.json()

    def all_items(self) -> dict[str, dict]:
        """The whole state as the API shows it: {id: item}, every page followed."""
        items, cursor = {}, None
        while True:
            path = "/items?limit=1000" + (f"&cursor={cursor}" if cursor else "")
            page = self.get(path).json()
            items.update((item["id"], item) for item in page["items"])
            cursor = page["next"]
            if cursor is None:
                return items


@pytest.fixture
def write_token(db) -> str:
    return tokens.token_create(name=WRITER, scope="write")


@pytest.fixture
def read_token(db) -> str:
    return tokens.token_create(name=READER, scope="read")


@pytest.fixture
def api(client, write_token) -> Api:
    """The API as a client holding a write token."""
    return Api(client, write_token)
