"""The hold rules of inventory.invariants on their own: plain values in, plain values or a typed
error out, no database. The state machine, expiry at an instant, a line against the available
stock, a delta against what holds set aside, and the checks of a hold's input."""

import datetime
import itertools
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inventory.errors import (
    Conflict,
    HoldNotActive,
    InvalidInput,
    NotEnoughStock,
    QtyAboveMax,
    QtyBelowReserved,
    QtyBelowZero,
)
from inventory.invariants import (
    ACTIVE,
    COMMIT,
    COMMITTED,
    EXPIRED,
    EXTEND,
    HOLD_MAX_LINES,
    HOLD_STATES,
    HOLD_TTL_DEFAULT_SECONDS,
    HOLD_TTL_MAX_SECONDS,
    QTY_MAX,
    REFERENCE_MAX_LENGTH,
    RELEASE,
    RELEASED,
    apply_delta,
    check_hold_lines,
    check_reference,
    check_ttl,
    hold_action,
    hold_state,
    line_fits,
)

ACTIONS = (COMMIT, RELEASE, EXTEND)
T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
NOT_INTEGERS = [True, False, 5.0, 1.0, float("nan"), float("inf"), "5", "1", None, [], {}, [1], {"qty": 1}]

states = st.sampled_from(HOLD_STATES)
actions = st.sampled_from(ACTIONS)
instants = st.datetimes(
    min_value=datetime.datetime(2000, 1, 1),
    max_value=datetime.datetime(2100, 1, 1),
    timezones=st.just(datetime.UTC),
)
# Integers clustered around the bounds, where off-by-one mistakes live, plus any integer at all.
bound_integers = st.builds(
    lambda base, offset: base + offset, st.sampled_from([0, 1, QTY_MAX, -QTY_MAX]), st.integers(-3, 3)
)


def test_the_contract_fixes_the_hold_bounds():
    assert HOLD_STATES == ("active", "committed", "released", "expired")
    assert HOLD_MAX_LINES == 100
    assert HOLD_TTL_DEFAULT_SECONDS == 900
    assert HOLD_TTL_MAX_SECONDS == 7 * 24 * 3600 == 604800


# The state machine ---------------------------------------------------------------------------------

# (state, action) -> (state after, whether anything changes), or the state a 409 names.
MACHINE = {
    (ACTIVE, COMMIT): (COMMITTED, True),
    (ACTIVE, RELEASE): (RELEASED, True),
    (ACTIVE, EXTEND): (ACTIVE, True),
    (COMMITTED, COMMIT): (COMMITTED, False),  # committing again takes nothing more
    (COMMITTED, RELEASE): COMMITTED,
    (COMMITTED, EXTEND): COMMITTED,
    (RELEASED, COMMIT): RELEASED,
    (RELEASED, RELEASE): (RELEASED, False),
    (RELEASED, EXTEND): RELEASED,
    (EXPIRED, COMMIT): EXPIRED,
    (EXPIRED, RELEASE): (EXPIRED, False),  # an expired hold stays expired
    (EXPIRED, EXTEND): EXPIRED,
}


def test_the_table_covers_every_state_and_every_action():
    assert set(MACHINE) == set(itertools.product(HOLD_STATES, ACTIONS))


@pytest.mark.parametrize(
    ("state", "action"),
    [pair for pair, outcome in MACHINE.items() if isinstance(outcome, tuple)],
    ids=lambda value: value,
)
def test_hold_action_accepted_gives_the_state_after_and_whether_it_changes(state, action):
    assert hold_action(state, action) == MACHINE[state, action]


@pytest.mark.parametrize(
    ("state", "action"),
    [pair for pair, outcome in MACHINE.items() if isinstance(outcome, str)],
    ids=lambda value: value,
)
def test_hold_action_refused_is_a_conflict_naming_the_state(state, action):
    with pytest.raises(HoldNotActive) as excinfo:
        hold_action(state, action)

    assert excinfo.value.message == f"hold is {state}"
    assert excinfo.value.state == state
    assert isinstance(excinfo.value, Conflict)  # mapped to 409


@given(state=states, action=actions)
def test_only_an_active_hold_changes(state, action):
    try:
        _, changes = hold_action(state, action)
    except HoldNotActive:
        assert state != ACTIVE
    else:
        assert changes == (state == ACTIVE)


@given(start=states, steps=st.lists(actions, max_size=12))
def test_no_sequence_of_actions_leads_back_to_active(start, steps):
    state, left = start, start != ACTIVE
    for action in steps:
        try:
            state, _ = hold_action(state, action)
        except HoldNotActive:
            continue
        left = left or state != ACTIVE
        assert state in HOLD_STATES
        assert not (left and state == ACTIVE)


@given(state=states, action=st.sampled_from([COMMIT, RELEASE]))
def test_repeating_an_accepted_commit_or_release_is_a_no_op(state, action):
    try:
        after, _ = hold_action(state, action)
    except HoldNotActive:
        return
    assert hold_action(after, action) == (after, False)


@given(state=states)
def test_an_active_hold_can_be_extended_again_and_again(state):
    if state == ACTIVE:
        assert hold_action(hold_action(ACTIVE, EXTEND)[0], EXTEND) == (ACTIVE, True)
    else:
        with pytest.raises(HoldNotActive):
            hold_action(state, EXTEND)


# Expiry at an instant ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "state"),
    [
        pytest.param(datetime.timedelta(seconds=-1), ACTIVE, id="a-second-before"),
        pytest.param(datetime.timedelta(microseconds=-1), ACTIVE, id="a-microsecond-before"),
        pytest.param(datetime.timedelta(0), EXPIRED, id="at-expires_at"),
        pytest.param(datetime.timedelta(microseconds=1), EXPIRED, id="a-microsecond-after"),
        pytest.param(datetime.timedelta(days=30), EXPIRED, id="long-after"),
    ],
)
def test_an_active_hold_is_expired_from_the_instant_of_expires_at(offset, state):
    assert hold_state(ACTIVE, T0, T0 + offset) == state


@pytest.mark.parametrize("stored", [COMMITTED, RELEASED, EXPIRED])
@pytest.mark.parametrize("offset", [-1, 0, 1], ids=["before", "at", "after"])
def test_a_hold_that_left_active_keeps_its_state_at_any_time(stored, offset):
    assert hold_state(stored, T0, T0 + datetime.timedelta(seconds=offset)) == stored


def test_hold_state_compares_instants_not_time_zones():
    # 01:00 in UTC+1 is midnight UTC: the same instant.
    plus_one = datetime.timezone(datetime.timedelta(hours=1))
    at = datetime.datetime(2030, 1, 1, 1, tzinfo=plus_one)
    assert hold_state(ACTIVE, T0, at) == EXPIRED
    assert hold_state(ACTIVE, T0, at - datetime.timedelta(microseconds=1)) == ACTIVE


@given(stored=states, expires_at=instants, now=instants)
def test_hold_state_is_expired_exactly_when_active_and_due(stored, expires_at, now):
    seen = hold_state(stored, expires_at, now)
    if stored == ACTIVE:
        assert seen == (EXPIRED if now >= expires_at else ACTIVE)
    else:
        assert seen == stored


@given(stored=states, expires_at=instants, earlier=instants, later=instants)
def test_once_expired_a_hold_stays_expired_as_time_passes(stored, expires_at, earlier, later):
    earlier, later = sorted([earlier, later])
    if hold_state(stored, expires_at, earlier) != ACTIVE:
        assert hold_state(stored, expires_at, later) == hold_state(stored, expires_at, earlier)


# A line against the available stock ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("available", "qty"), [(5, 1), (5, 5), (1, 1), (QTY_MAX, QTY_MAX)], ids=["some", "all", "last", "max"]
)
def test_a_line_fits_up_to_what_is_available(available, qty):
    assert line_fits(available, qty) is None


@pytest.mark.parametrize(("available", "qty"), [(5, 6), (0, 1), (QTY_MAX - 1, QTY_MAX)])
def test_a_line_over_what_is_available_is_refused_with_the_available_stock(available, qty):
    item_id = uuid.uuid4()

    with pytest.raises(NotEnoughStock) as excinfo:
        line_fits(available, qty, item_id)

    assert excinfo.value.message == "not enough available stock"
    assert excinfo.value.details() == {"available": available}
    assert excinfo.value.item_id == item_id
    assert isinstance(excinfo.value, Conflict)  # mapped to 409


@given(
    available=st.integers(0, QTY_MAX), qty=st.integers(1, QTY_MAX) | bound_integers.filter(lambda q: q >= 1)
)
def test_a_line_is_refused_exactly_when_it_asks_for_more_than_is_available(available, qty):
    try:
        line_fits(available, qty)
    except NotEnoughStock as exc:
        assert qty > available
        assert exc.available == available
    else:
        assert qty <= available


# A delta against what holds set aside --------------------------------------------------------------


@pytest.mark.parametrize(
    ("qty", "reserved", "delta", "after"),
    [
        pytest.param(5, 3, -2, 3, id="down-to-reserved"),
        pytest.param(5, 5, 0, 5, id="zero-when-all-reserved"),
        pytest.param(5, 5, 3, 8, id="up-when-all-reserved"),
        pytest.param(5, 0, -5, 0, id="down-to-0-when-nothing-reserved"),
        pytest.param(QTY_MAX, QTY_MAX, 0, QTY_MAX, id="max-all-reserved"),
        pytest.param(QTY_MAX - 1, 1, 1, QTY_MAX, id="up-to-the-bound-with-reserved"),
    ],
)
def test_apply_delta_with_reserved_accepts_down_to_reserved(qty, reserved, delta, after):
    assert apply_delta(qty, delta, reserved) == after


@pytest.mark.parametrize(
    ("qty", "reserved", "delta"), [(5, 3, -3), (5, 5, -1), (5, 1, -5), (QTY_MAX, QTY_MAX, -1)]
)
def test_apply_delta_below_reserved_is_refused_naming_reserved(qty, reserved, delta):
    with pytest.raises(QtyBelowReserved) as excinfo:
        apply_delta(qty, delta, reserved)

    assert excinfo.value.message == "qty cannot go below reserved"
    assert excinfo.value.details() == {"reserved": reserved}
    assert isinstance(excinfo.value, InvalidInput)  # the seed's refusals of a delta stay 400


@pytest.mark.parametrize(("qty", "reserved", "delta"), [(5, 3, -6), (5, 5, -6), (0, 0, -1), (5, 5, -QTY_MAX)])
def test_apply_delta_below_0_comes_before_below_reserved(qty, reserved, delta):
    with pytest.raises(QtyBelowZero) as excinfo:
        apply_delta(qty, delta, reserved)
    assert excinfo.value.message == "qty cannot go below 0"


def test_apply_delta_above_the_bound_is_refused_whatever_is_reserved():
    # Below reserved and above the bound never apply together (reserved <= qty <= QTY_MAX), so
    # the last of the contract's order shows only on its own.
    with pytest.raises(QtyAboveMax):
        apply_delta(QTY_MAX, 1, QTY_MAX)
    with pytest.raises(QtyAboveMax):
        apply_delta(3, QTY_MAX, 2)


@given(qty=st.integers(0, 10), delta=st.integers(-12, 12))
def test_apply_delta_without_reserved_is_the_seed_rule(qty, delta):
    try:
        assert apply_delta(qty, delta) == apply_delta(qty, delta, 0) == qty + delta
    except QtyBelowZero:
        assert qty + delta < 0


@given(
    data=st.data(),
    qty=st.integers(0, QTY_MAX) | bound_integers.filter(lambda q: 0 <= q <= QTY_MAX),
    delta=st.integers(-QTY_MAX, QTY_MAX) | bound_integers,
)
def test_apply_delta_refuses_in_the_contract_order(data, qty, delta):
    reserved = data.draw(st.integers(0, qty) | st.sampled_from([0, qty]))
    new_qty = qty + delta
    if new_qty < 0:
        expected = QtyBelowZero
    elif new_qty < reserved:
        expected = QtyBelowReserved
    elif new_qty > QTY_MAX:
        expected = QtyAboveMax
    else:
        expected = None

    if expected is None:
        after = apply_delta(qty, delta, reserved)
        assert after == new_qty
        assert 0 <= reserved <= after <= QTY_MAX
    else:
        with pytest.raises(expected):
            apply_delta(qty, delta, reserved)


# A hold's lines ------------------------------------------------------------------------------------


def lines_of(*qtys) -> list[dict]:
    return [{"id": uuid.uuid4(), "qty": qty} for qty in qtys]


@pytest.mark.parametrize("count", [1, 2, HOLD_MAX_LINES])
def test_check_hold_lines_accepts_1_to_100_lines_in_request_order(count):
    lines = lines_of(*range(1, count + 1))
    assert check_hold_lines(lines) == lines


@pytest.mark.parametrize("count", [0, HOLD_MAX_LINES + 1, 1000])
def test_check_hold_lines_refuses_no_lines_or_more_than_100(count):
    with pytest.raises(InvalidInput) as excinfo:
        check_hold_lines(lines_of(*[1] * count))
    assert excinfo.value.field == "lines"


@pytest.mark.parametrize("qty", [1, 2, QTY_MAX])
def test_check_hold_lines_accepts_qty_from_1_to_the_bound(qty):
    assert check_hold_lines(lines_of(qty))[0]["qty"] == qty


@pytest.mark.parametrize("qty", [0, -1, -QTY_MAX, QTY_MAX + 1, 2**64])
def test_check_hold_lines_refuses_qty_out_of_range_naming_the_line(qty):
    lines = lines_of(1, 2, 3)
    lines[1]["qty"] = qty

    with pytest.raises(InvalidInput) as excinfo:
        check_hold_lines(lines)

    assert excinfo.value.field == "lines.1.qty"
    assert excinfo.value.item_id == lines[1]["id"]


@pytest.mark.parametrize("qty", NOT_INTEGERS, ids=repr)
def test_check_hold_lines_refuses_a_qty_that_is_not_a_json_integer(qty):
    lines = lines_of(1, 1, 1, 1)
    lines[3]["qty"] = qty

    with pytest.raises(InvalidInput) as excinfo:
        check_hold_lines(lines)

    assert excinfo.value.field == "lines.3.qty"


def test_check_hold_lines_refuses_an_item_named_twice_at_its_second_line():
    lines = lines_of(1, 2, 3)
    lines.append({"id": lines[1]["id"], "qty": 4})

    with pytest.raises(InvalidInput) as excinfo:
        check_hold_lines(lines)

    assert excinfo.value.field == "lines.3.id"
    assert excinfo.value.item_id == lines[1]["id"]
    assert str(lines[1]["id"]) in excinfo.value.message


@given(
    qtys=st.lists(st.integers(1, QTY_MAX), min_size=1, max_size=HOLD_MAX_LINES),
    data=st.data(),
)
def test_check_hold_lines_names_the_position_of_the_bad_line(qtys, data):
    lines = lines_of(*qtys)
    assert check_hold_lines(lines) == lines

    position = data.draw(st.integers(0, len(lines) - 1))
    bad = data.draw(
        st.integers(max_value=0) | st.integers(min_value=QTY_MAX + 1) | st.sampled_from(NOT_INTEGERS)
    )
    lines[position]["qty"] = bad
    with pytest.raises(InvalidInput) as excinfo:
        check_hold_lines(lines)
    assert excinfo.value.field == f"lines.{position}.qty"


# A hold's time to live -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ttl", [1, 2, HOLD_TTL_DEFAULT_SECONDS, HOLD_TTL_MAX_SECONDS - 1, HOLD_TTL_MAX_SECONDS]
)
def test_check_ttl_accepts_1_to_604800_seconds(ttl):
    assert check_ttl(ttl) == ttl


@pytest.mark.parametrize("ttl", [0, -1, HOLD_TTL_MAX_SECONDS + 1, QTY_MAX, 2**64, *NOT_INTEGERS], ids=repr)
def test_check_ttl_refuses_what_is_not_an_integer_in_range(ttl):
    with pytest.raises(InvalidInput) as excinfo:
        check_ttl(ttl)
    assert excinfo.value.field == "ttl_seconds"


@given(
    ttl=st.integers() | st.integers(-2, 2) | st.integers(HOLD_TTL_MAX_SECONDS - 2, HOLD_TTL_MAX_SECONDS + 2)
)
def test_check_ttl_accepts_exactly_the_range(ttl):
    try:
        assert check_ttl(ttl) == ttl
    except InvalidInput:
        assert not 1 <= ttl <= HOLD_TTL_MAX_SECONDS
    else:
        assert 1 <= ttl <= HOLD_TTL_MAX_SECONDS


# A hold's reference --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        None,
        "",
        "order 1234",
        "https://shop.example/orders/1234?x=1",
        "r" * REFERENCE_MAX_LENGTH,
        "Bestellung \u00fc \u2014 \U0001f4e6",
        "a\u200db",
    ],
    ids=["none", "empty", "plain", "uri", "exactly-200", "unicode", "zero-width-joiner"],
)
def test_check_reference_accepts_storable_text_up_to_200_characters(reference):
    assert check_reference(reference) == reference


@pytest.mark.parametrize(
    "reference",
    [
        "r" * (REFERENCE_MAX_LENGTH + 1),
        "nul\x00",
        "bell\x07",
        "line\nbreak",
        "tab\t",
        "del\x7f",
        "next-line\x85",
        "lone-surrogate\ud800",
        5,
        True,
        ["order"],
        {"order": 1},
    ],
    ids=repr,
)
def test_check_reference_refuses_what_is_not_storable_text(reference):
    with pytest.raises(InvalidInput) as excinfo:
        check_reference(reference)
    assert excinfo.value.field == "reference"


@given(reference=st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=REFERENCE_MAX_LENGTH))
def test_check_reference_returns_storable_text_unchanged(reference):
    assert check_reference(reference) == reference
