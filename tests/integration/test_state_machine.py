"""The HTTP API against the reference model: random runs of creates, updates, deletes, deltas,
batches, holds (create, commit, release, extend) and the clock moving past their expiries.

After every step the whole state the API shows must equal the model's: every item, read by
paging GET /items to the end, in the contract's order, and every hold the model knows.
"""

import datetime
import uuid
from urllib.parse import urlencode

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from inventory import clock
from inventory.models import Hold, Item, Movement
from tests import reference_model as model

QTY_MAX = model.QTY_MAX
ABSENT = model.ABSENT
ACTOR = "test writer"  # the name of the conftest's write token: holds record it
# A whole millisecond, as responses show times; the clock moves only forward from it.
START = datetime.datetime(2030, 1, 1, 12, 0, 0, 250000, tzinfo=datetime.UTC)

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
# Deltas for the changes of a batch: mostly valid, so that whole batches apply too.
batch_deltas = st.one_of(st.integers(-3, 3), deltas)
# ABSENT leaves the field out of the request; None sends null (no threshold).
valid_thresholds = st.sampled_from([ABSENT, None, 0, 1, 3, 10, QTY_MAX])
thresholds = st.one_of(valid_thresholds, st.sampled_from([-1, QTY_MAX + 1, True, 2.0, "3"]))
# A compare-and-set: left out, the qty the model holds now, or one it does not.
expectations = st.sampled_from([ABSENT, ABSENT, "current", "stale"])
# A hold line's qty, relative to the item's available stock now (all of it, one unit, one
# unit more than there is), or as is.
fitting_line_qtys = st.sampled_from(["available", "one", "one", "available + 1"])
line_qtys = st.one_of(
    fitting_line_qtys,
    st.integers(1, 4),
    st.sampled_from([QTY_MAX, 0, -1, QTY_MAX + 1, True, 1.0, "1", None]),
)
valid_ttls = st.sampled_from([1, 2, 60, 900, model.TTL_MAX])
ttls = st.one_of(valid_ttls, st.sampled_from([0, -1, model.TTL_MAX + 1, True, 1.5, "60", None]))
references = st.sampled_from([ABSENT, None, "order 1", "r" * 200, ABSENT, "r" * 201, "bell\x07"])
new_ids = st.uuids(version=4)
# Steps of the clock, in milliseconds: one tick, under and over a second, past a default ttl.
clock_steps = st.sampled_from([1, 999, 1000, 59_000, 900_000])


def present(**fields) -> dict:
    """A request body without the fields left ABSENT."""
    return {key: value for key, value in fields.items() if value is not ABSENT}


def parsed(body):
    """A response body with its times as datetimes, as the model keeps them."""
    if isinstance(body, list):
        return [parsed(value) for value in body]
    if isinstance(body, dict):
        return {
            key: datetime.datetime.fromisoformat(value)
            if key in {"expires_at", "created_at"}
            else parsed(value)
            for key, value in body.items()
        }
    return body


def check(response, status: int, body) -> None:
    """The response is the one the model expects."""
    assert response.status_code == status, response.content
    if status == 204:
        assert response.content == b""
    elif status >= 400:
        answer = response.json()
        assert isinstance(answer["error"], str)
        assert answer["error"]
        expected = dict(body)
        if expected.pop("error") is not None:
            assert answer["error"] == body["error"], answer
        # An error body may carry more fields than the contract promises, never other values.
        assert {key: answer.get(key) for key in expected} == expected, answer
    else:
        assert parsed(response.json()) == body


class InventoryMachine(RuleBasedStateMachine):
    ids = Bundle("ids")

    def __init__(self, api, monkeypatch):
        super().__init__()
        self.api = api
        self.state = model.empty(START)
        # The ids of new items and holds are drawn by hypothesis, like everything else: their
        # order decides which line of a batch or a hold is met first, so a run must not
        # depend on uuid4. The service takes the id from the primary key's default.
        self.new_id, self.used_ids = None, set()
        for table in (Item, Hold):
            monkeypatch.setattr(table._meta.pk, "_get_default", self._take_new_id)
        # The service reads the time the model is at; nothing else moves it.
        monkeypatch.setattr(clock, "now", lambda: self.state.now)
        # Examples share one test's transaction: each starts from empty tables.
        Hold.objects.all().delete()
        Item.objects.all().delete()
        Movement.objects.all().delete()

    def _take_new_id(self) -> uuid.UUID:
        new_id, self.new_id = self.new_id, None
        assert new_id is not None, "the service made a row no rule asked for"
        return new_id

    def _fresh(self, drawn: uuid.UUID) -> str:
        """The drawn id, or the next one no item or hold has had and no rule has used."""
        while str(drawn) in self.used_ids:
            drawn = uuid.UUID(int=(drawn.int + 1) % 2**128)
        self.used_ids.add(str(drawn))
        return str(drawn)

    # Every run starts with a few items, a hold on some of them, an id no item has and an id no
    # hold has, so that the rules on holds have stock and holds to act on from the first step,
    # and rules on ids meet 404s (deleted ids join them).

    @initialize(
        target=ids,
        items=st.lists(st.tuples(new_ids, valid_names, st.integers(1, 10)), min_size=1, max_size=3),
        hold_id=new_ids,
        line_qtys=st.lists(fitting_line_qtys, min_size=1, max_size=3),
        ttl_seconds=st.one_of(st.just(ABSENT), valid_ttls),
        unknown_item=new_ids,
        unknown_hold=new_ids,
    )
    def a_hold_on_some_items(self, items, hold_id, line_qtys, ttl_seconds, unknown_item, unknown_hold):
        created = [self._create(new_id, name, qty, ABSENT) for new_id, name, qty in items]
        created = [new_id for new_id in created if new_id is not None]
        if created:
            self._create_hold(hold_id, list(zip(created, line_qtys, strict=False)), ttl_seconds=ttl_seconds)
        self.unknown_hold = self._fresh(unknown_hold)
        return multiple(*created, self._fresh(unknown_item))

    # Two rules for create, so that valid inputs, and with them live ids, are common.

    @rule(target=ids, new_id=new_ids, name=valid_names, qty=valid_qtys)
    def create(self, new_id, name, qty):
        return self._create(new_id, name, qty, ABSENT) or multiple()

    @rule(target=ids, new_id=new_ids, name=any_names, qty=any_qtys, threshold=thresholds)
    def create_from_any_input(self, new_id, name, qty, threshold):
        return self._create(new_id, name, qty, threshold) or multiple()

    def _create(self, new_id, name, qty, threshold) -> str | None:
        """The new item's id, or None if the model refuses it."""
        new_id = self.new_id = self._fresh(new_id)
        response = self.api.post("/items", present(name=name, qty=qty, low_stock_threshold=threshold))
        self.state, status, body = model.create(self.state, name, qty, new_id, threshold)
        check(response, status, body)
        if status != 201:
            return None
        assert response["Location"] == f"/items/{new_id}"
        return new_id

    @rule(
        item_id=ids,
        name=st.one_of(st.just(ABSENT), valid_names, any_names),
        threshold=st.one_of(valid_thresholds, thresholds),
    )
    def update(self, item_id, name, threshold):
        response = self.api.patch(f"/items/{item_id}", present(name=name, low_stock_threshold=threshold))
        self.state, status, body = model.update(self.state, item_id, name, threshold)
        check(response, status, body)

    @rule(item_id=ids)
    def delete(self, item_id):
        response = self.api.delete(f"/items/{item_id}")
        self.state, status, body = model.delete(self.state, item_id)
        check(response, status, body)

    def _expected(self, item_id, expectation):
        if expectation is ABSENT:
            return ABSENT
        qty = self.state.items[item_id]["qty"] if item_id in self.state.items else 0
        return qty if expectation == "current" else qty + 1

    @rule(item_id=ids, delta=deltas, expectation=expectations)
    def adjust(self, item_id, delta, expectation):
        self._adjust(item_id, delta, self._expected(item_id, expectation))

    @rule(
        item_id=ids,
        offset=st.sampled_from([-1, 0, 1]),
        bound=st.sampled_from(["zero", "reserved", "max"]),
    )
    def adjust_to_a_bound(self, item_id, offset, bound):
        # The exact delta that lands on 0, reserved or QTY_MAX, or one past it: random deltas rarely do.
        qty, held = 0, 0
        if item_id in self.state.items:
            qty, held = self.state.items[item_id]["qty"], model.reserved(self.state, item_id)
        target = {"zero": 0, "reserved": held, "max": QTY_MAX}[bound]
        self._adjust(item_id, target - qty + offset, ABSENT)

    def _adjust(self, item_id, delta, expected_qty):
        response = self.api.patch(f"/items/{item_id}/qty", present(delta=delta, expected_qty=expected_qty))
        self.state, status, body = model.adjust(self.state, item_id, delta, expected_qty)
        check(response, status, body)

    @rule(
        changes=st.lists(st.tuples(ids, batch_deltas, expectations), min_size=1, max_size=3),
        unique=st.sampled_from([True] * 9 + [False]),
    )
    def batch(self, changes, unique):
        if unique:  # a repeated id is a 400: let it come only sometimes
            changes = list({item_id: (item_id, *rest) for item_id, *rest in changes}.values())
        body = [
            present(id=item_id, delta=delta, expected_qty=self._expected(item_id, expectation))
            for item_id, delta, expectation in changes
        ]
        response = self.api.post("/adjustments", {"changes": body})
        self.state, status, answer = model.batch(self.state, body)
        check(response, status, answer)

    @rule(item_id=ids)
    def get(self, item_id):
        response = self.api.get(f"/items/{item_id}")
        if item_id in self.state.items:
            check(response, 200, model.item(self.state, item_id))
        else:
            check(response, 404, model.NOT_FOUND)

    @rule(limit=st.integers(1, 5))
    def page_through(self, limit):
        items, cursor = [], None
        for _ in range(len(self.state.items) + 1):  # bounded: a cursor that never ends fails below
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

    # Holds. Two rules for create on items that exist, with valid input, so that holds that fit,
    # and with them live holds, are common; one on any ids with any input.

    @precondition(lambda self: self.state.items)
    @rule(new_id=new_ids, data=st.data(), ttl_seconds=st.one_of(st.just(ABSENT), valid_ttls))
    def create_hold(self, new_id, data, ttl_seconds):
        item_ids = st.sampled_from(sorted(self.state.items))
        lines = data.draw(st.lists(st.tuples(item_ids, fitting_line_qtys), min_size=1, max_size=3))
        self._create_hold(new_id, lines, ttl_seconds=ttl_seconds)

    @precondition(lambda self: self.state.items)
    @rule(new_id=new_ids, data=st.data(), ttl_seconds=valid_ttls)
    def create_hold_of_one_unit(self, new_id, data, ttl_seconds):
        # The commonest checkout: one unit of one item, which fits while any is available.
        item_id = data.draw(st.sampled_from(sorted(self.state.items)))
        self._create_hold(new_id, [(item_id, 1)], ttl_seconds=ttl_seconds)

    @rule(
        new_id=new_ids,
        lines=st.lists(st.tuples(ids, line_qtys), min_size=1, max_size=3),
        unique=st.sampled_from([True] * 9 + [False]),
        ttl_seconds=st.one_of(st.just(ABSENT), valid_ttls, ttls),
        reference=references,
    )
    def create_hold_from_any_input(self, new_id, lines, unique, ttl_seconds, reference):
        self._create_hold(new_id, lines, unique=unique, ttl_seconds=ttl_seconds, reference=reference)

    def _line_qty(self, item_id, qty):
        available = model.item(self.state, item_id)["available"] if item_id in self.state.items else 0
        relative = {"available": max(available, 1), "one": 1, "available + 1": available + 1}
        return relative.get(qty, qty) if isinstance(qty, str) else qty

    def _create_hold(self, new_id, lines, *, unique=True, ttl_seconds=ABSENT, reference=ABSENT):
        if unique:  # a repeated item is a 400: let it come only sometimes
            lines = list(dict(lines).items())
        lines = [{"id": item_id, "qty": self._line_qty(item_id, qty)} for item_id, qty in lines]
        new_id = self.new_id = self._fresh(new_id)
        response = self.api.post("/holds", present(lines=lines, ttl_seconds=ttl_seconds, reference=reference))
        self.state, status, body = model.hold_create(
            self.state, lines, new_id, ttl_seconds=ttl_seconds, reference=reference, actor=ACTOR
        )
        check(response, status, body)
        if status == 201:
            assert response["Location"] == f"/holds/{new_id}"

    def _a_hold(self, data) -> str:
        """One of the holds the model knows, oldest first, or the id no hold has."""
        return data.draw(st.sampled_from([*self.state.holds, self.unknown_hold]), label="hold_id")

    @rule(data=st.data())
    def commit(self, data):
        hold_id = self._a_hold(data)
        response = self.api.post(f"/holds/{hold_id}/commit")
        self.state, status, body = model.hold_commit(self.state, hold_id)
        check(response, status, body)

    @rule(data=st.data())
    def release(self, data):
        hold_id = self._a_hold(data)
        response = self.api.post(f"/holds/{hold_id}/release")
        self.state, status, body = model.hold_release(self.state, hold_id)
        check(response, status, body)

    @rule(data=st.data(), ttl_seconds=st.one_of(valid_ttls, ttls))
    def extend(self, data, ttl_seconds):
        hold_id = self._a_hold(data)
        response = self.api.post(f"/holds/{hold_id}/extend", {"ttl_seconds": ttl_seconds})
        self.state, status, body = model.hold_extend(self.state, hold_id, ttl_seconds)
        check(response, status, body)

    @rule(item_id=ids)
    def item_holds(self, item_id):
        response = self.api.get(f"/items/{item_id}/holds")
        _, status, body = model.item_holds(self.state, item_id)
        check(response, status, body)

    # The clock.

    @rule(milliseconds=clock_steps)
    def time_passes(self, milliseconds):
        self.state = model.advance(self.state, datetime.timedelta(milliseconds=milliseconds))

    @precondition(lambda self: self.state.holds)
    @rule(data=st.data(), offset=st.sampled_from([-1, 0, 1]))
    def time_reaches_an_expiry(self, data, offset):
        # To a millisecond before a hold's expires_at, the instant itself, or just after.
        hold_id = data.draw(st.sampled_from(list(self.state.holds)), label="hold_id")
        target = self.state.holds[hold_id]["expires_at"] + datetime.timedelta(milliseconds=offset)
        if target > self.state.now:
            self.state = model.advance(self.state, target - self.state.now)

    @invariant(check_during_init=False)
    def api_state_is_the_model_state(self):
        items, cursor = [], None
        while True:
            query = {"limit": 1000} | ({"cursor": cursor} if cursor else {})
            response = self.api.get(f"/items?{urlencode(query)}")
            assert response.status_code == 200, response.content
            items += response.json()["items"]
            cursor = response.json()["next"]
            if cursor is None:
                break
        assert items == model.listing(self.state)
        for hold_id in self.state.holds:
            check(self.api.get(f"/holds/{hold_id}"), 200, model.hold(self.state, hold_id))
        check(self.api.get(f"/holds/{self.unknown_hold}"), 404, model.NOT_FOUND)


@pytest.mark.django_db
def test_the_api_follows_the_reference_model(api, monkeypatch):
    run_state_machine_as_test(
        lambda: InventoryMachine(api, monkeypatch),
        settings=settings(
            max_examples=200,
            stateful_step_count=25,
            deadline=None,
        ),
    )
