"""The HTTP API against the reference model: random runs of create, rename, delete and adjust.

After every step the whole state the API shows must equal the model's, in the contract's order.
"""

import uuid
from urllib.parse import urlencode

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from inventory.models import Item
from tests import reference_model as model

QTY_MAX = model.QTY_MAX

# A small pool, so that duplicates are common; each line is one name once normalised.
VALID_NAMES = [
    "apple",
    "  apple ",
    "\tapple\n",
    "\u00a0apple\u3000",  # no-break and ideographic spaces are white space too
    "Apple",  # case matters: a different name
    "caf\u00e9",  # NFC
    "cafe\u0301",  # NFD of the same name
    " cafe\u0301 ",
    "\u00c5ngstr\u00f6m",
    "\u212bngstro\u0308m",  # ANGSTROM SIGN and a combining diaeresis: NFC makes it the line above
    "\uff21",  # FULLWIDTH A: sorts before the astral one by code point, after it in UTF-16
    "\U0001f34e",
    "x" * 200,  # the longest name
    " " + "x" * 200 + " ",  # the same, once stripped
]
INVALID_NAMES = [
    "",
    "   ",
    "\t\n",
    "a\x00b",
    "bell\x07",
    "x" * 201,
    "\ud800",  # a lone surrogate: valid JSON, not storable text
    None,
    5,
    True,
    ["apple"],
    {"name": "apple"},
]
valid_names = st.sampled_from(VALID_NAMES)
any_names = st.one_of(
    valid_names,
    st.sampled_from(INVALID_NAMES),
    st.text(max_size=3),  # anything else, for storage and ordering of odd characters
)

NOT_INTEGERS = [True, False, 5.0, 0.0, "5", None, [1], {"n": 1}]
valid_qtys = st.one_of(st.integers(0, 10), st.sampled_from([0, 1, QTY_MAX - 1, QTY_MAX]))
any_qtys = st.one_of(valid_qtys, st.sampled_from([-1, -(2**63), QTY_MAX + 1, 2**64, *NOT_INTEGERS]))
deltas = st.one_of(
    st.integers(-5, 5),  # crosses 0 from small qtys and QTY_MAX from the top ones
    st.sampled_from([QTY_MAX, -QTY_MAX, QTY_MAX + 1, -QTY_MAX - 1, 2**64]),
    st.sampled_from(NOT_INTEGERS),
)


def check(response, status: int, body) -> None:
    """The response is the one the model expects."""
    assert response.status_code == status, response.content
    if status == 204:
        assert response.content == b""
    elif status >= 400:
        error = response.json()["error"]
        assert isinstance(error, str)
        assert error
        if body["error"] is not None:
            assert error == body["error"]
    else:
        assert response.json() == body


class InventoryMachine(RuleBasedStateMachine):
    ids = Bundle("ids")

    def __init__(self, api):
        super().__init__()
        self.api = api
        self.state = {}
        # Examples share one test's transaction: each starts from an empty table.
        Item.objects.all().delete()

    # Two rules for create, so that valid inputs, and with them live ids, are common.
    @rule(target=ids, name=valid_names, qty=valid_qtys)
    def create(self, name, qty):
        return self._create(name, qty)

    @rule(target=ids, name=any_names, qty=any_qtys)
    def create_from_any_input(self, name, qty):
        return self._create(name, qty)

    def _create(self, name, qty):
        response = self.api.post("/items", {"name": name, "qty": qty})
        new_id = response.json()["id"] if response.status_code == 201 else str(uuid.uuid4())
        assert new_id not in self.state
        self.state, status, body = model.create(self.state, name, qty, new_id)
        check(response, status, body)
        if status != 201:
            return multiple()
        assert response["Location"] == f"/items/{new_id}"
        return new_id

    @rule(target=ids, item_id=st.uuids())
    def unknown_id(self, item_id):
        # An id no item has, so the rules on ids also meet 404s (deleted ids join it).
        return str(item_id)

    @rule(item_id=ids, name=any_names)
    def rename(self, item_id, name):
        response = self.api.patch(f"/items/{item_id}", {"name": name})
        self.state, status, body = model.rename(self.state, item_id, name)
        check(response, status, body)

    @rule(item_id=ids)
    def delete(self, item_id):
        response = self.api.delete(f"/items/{item_id}")
        self.state, status, body = model.delete(self.state, item_id)
        check(response, status, body)

    @rule(item_id=ids, delta=deltas)
    def adjust(self, item_id, delta):
        self._adjust(item_id, delta)

    @rule(item_id=ids, offset=st.sampled_from([-1, 0, 1]), bound=st.sampled_from([0, QTY_MAX]))
    def adjust_to_a_bound(self, item_id, offset, bound):
        # The exact delta that lands on 0 or QTY_MAX, or one past it: random deltas rarely do.
        qty = self.state[item_id]["qty"] if item_id in self.state else 0
        self._adjust(item_id, bound - qty + offset)

    def _adjust(self, item_id, delta):
        response = self.api.patch(f"/items/{item_id}/qty", {"delta": delta})
        self.state, status, body = model.adjust(self.state, item_id, delta)
        check(response, status, body)

    @rule(item_id=ids)
    def get(self, item_id):
        response = self.api.get(f"/items/{item_id}")
        if item_id in self.state:
            check(response, 200, self.state[item_id])
        else:
            check(response, 404, model.NOT_FOUND)

    @rule(limit=st.integers(1, 5))
    def page_through(self, limit):
        items, cursor = [], None
        for _ in range(len(self.state) + 1):  # bounded: a cursor that never ends fails below
            query = {"limit": limit} | ({"cursor": cursor} if cursor else {})
            response = self.api.get(f"/items?{urlencode(query)}")
            assert response.status_code == 200, response.content
            page = response.json()
            assert len(page["items"]) <= limit
            items += page["items"]
            cursor = page["next"]
            if cursor is None:
                break
        assert cursor is None
        assert items == model.listing(self.state)

    @invariant()
    def api_state_is_the_model_state(self):
        assert self.api.all_items() == self.state
        # One page holds them all: its order must be the model's, by name in code-point order.
        page = self.api.get("/items?limit=1000").json()
        assert page["items"] == model.listing(self.state)


@pytest.mark.django_db
def test_the_api_follows_the_reference_model(api):
    run_state_machine_as_test(
        lambda: InventoryMachine(api),
        settings=settings(
            max_examples=200,
            stateful_step_count=25,
            deadline=None,
        ),
    )
