"""inventory.invariants on its own: plain values in, plain values or InvalidInput out."""

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inventory.errors import InvalidInput, QtyAboveMax, QtyBelowZero
from inventory.invariants import (
    NAME_MAX_LENGTH,
    QTY_MAX,
    apply_delta,
    check_delta,
    check_qty,
    normalize_name,
    validate_item,
)

# JSON-like values: what json.loads can hand to the invariants.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)

# Integers clustered around the bounds, where off-by-one mistakes live, plus any integer at all.
bound_integers = st.builds(
    lambda base, offset: base + offset,
    st.sampled_from([0, QTY_MAX, -QTY_MAX, 2**64, -(2**64)]),
    st.integers(-3, 3),
)
any_integers = st.integers() | bound_integers

NOT_INTEGERS = [True, False, 5.0, 0.0, float("nan"), float("inf"), "5", None, [], {}, [1], {"qty": 1}]


# normalize_name ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        pytest.param("apple", "apple", id="plain"),
        pytest.param("  apple  ", "apple", id="ascii-spaces"),
        pytest.param("\tapple\n", "apple", id="tab-and-newline"),
        pytest.param("\u00a0apple\u00a0", "apple", id="no-break-space"),
        pytest.param("\u2003apple\u3000", "apple", id="em-space-and-ideographic-space"),
        pytest.param("red  apple", "red  apple", id="inner-spaces-kept"),
        pytest.param("caf" + "e\u0301", "caf\u00e9", id="nfd-becomes-nfc"),
        pytest.param("\u00a0e\u0301\u3000", "\u00e9", id="nfd-with-unicode-spaces"),
        pytest.param("a" * NAME_MAX_LENGTH, "a" * NAME_MAX_LENGTH, id="exactly-200"),
        pytest.param(" " + "a" * NAME_MAX_LENGTH + " ", "a" * NAME_MAX_LENGTH, id="200-once-stripped"),
        pytest.param("a" * 199 + "e\u0301", "a" * 199 + "\u00e9", id="201-in-nfd-200-in-nfc"),
        pytest.param("\U0001f4e6 box", "\U0001f4e6 box", id="astral-emoji"),
        pytest.param("\U0001f469\u200d\U0001f467", "\U0001f469\u200d\U0001f467", id="zero-width-joiner"),
        pytest.param("a\u200db", "a\u200db", id="zwj-between-letters"),
        pytest.param("\u05e9\u05dc\u05d5\u05dd", "\u05e9\u05dc\u05d5\u05dd", id="rtl-hebrew"),
        pytest.param("\u0645\u0631\u062d\u0628\u0627", "\u0645\u0631\u062d\u0628\u0627", id="rtl-arabic"),
    ],
)
def test_accepts_name_and_returns_it_nfc_and_stripped(raw, stored):
    assert normalize_name(raw) == stored


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="ascii-spaces"),
        pytest.param("\t\n\r", id="ascii-control-white-space"),
        pytest.param("\u00a0", id="no-break-space"),
        pytest.param("\u2003\u3000", id="em-and-ideographic-space"),
        pytest.param(" \u00a0\u2003\u3000\t\n ", id="mixed"),
    ],
)
def test_rejects_name_that_is_only_white_space(raw):
    with pytest.raises(InvalidInput) as excinfo:
        normalize_name(raw)
    assert excinfo.value.field == "name"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\x01b", id="x01"),
        pytest.param("a\x1fb", id="x1f"),
        pytest.param("a\x7fb", id="del"),
        pytest.param("a\x85b", id="next-line-c1"),
        pytest.param("a\tb", id="tab-inside"),
        pytest.param("a\nb", id="newline-inside"),
        pytest.param(" a\x00 ", id="nul-inside-spaces"),
    ],
)
def test_rejects_name_with_a_control_character_inside(raw):
    with pytest.raises(InvalidInput) as excinfo:
        normalize_name(raw)
    assert excinfo.value.field == "name"


@pytest.mark.parametrize("raw", ["\ud800", "a\udfffb", " \ud800 "], ids=["alone", "inside", "spaced"])
def test_rejects_name_with_a_lone_surrogate(raw):
    with pytest.raises(InvalidInput) as excinfo:
        normalize_name(raw)
    assert excinfo.value.field == "name"


@pytest.mark.parametrize("length", [NAME_MAX_LENGTH + 1, 10_000])
def test_rejects_name_longer_than_200_characters_after_normalising(length):
    with pytest.raises(InvalidInput) as excinfo:
        normalize_name("a" * length)
    assert excinfo.value.field == "name"


def test_rejects_name_that_nfc_lengthens_past_200_characters():
    # U+0958 is excluded from composition: NFC turns it into two code points, not one.
    raw = "a" * 199 + "\u0958"
    assert len(raw) == NAME_MAX_LENGTH
    assert len(unicodedata.normalize("NFC", raw)) == NAME_MAX_LENGTH + 1
    with pytest.raises(InvalidInput):
        normalize_name(raw)


@pytest.mark.parametrize("raw", [None, True, False, 5, 5.0, [], {}, {"a": 1}, ["x"], b"apple"], ids=repr)
def test_rejects_name_that_is_not_a_string(raw):
    with pytest.raises(InvalidInput) as excinfo:
        normalize_name(raw)
    assert excinfo.value.field == "name"


@given(st.text())
def test_normalising_a_name_twice_changes_nothing(raw):
    try:
        name = normalize_name(raw)
    except InvalidInput:
        return
    assert normalize_name(name) == name


@given(st.text())
def test_normalised_name_is_nfc_stripped_short_and_free_of_control_characters(raw):
    try:
        name = normalize_name(raw)
    except InvalidInput:
        return
    assert unicodedata.is_normalized("NFC", name)
    assert name == name.strip()
    assert 1 <= len(name) <= NAME_MAX_LENGTH
    assert not any(unicodedata.category(char) in {"Cc", "Cs"} for char in name)


@given(st.text(st.characters(exclude_categories=["Cc", "Cs"]), max_size=NAME_MAX_LENGTH + 5))
def test_accepts_every_name_that_is_storable_once_normalised(raw):
    candidate = unicodedata.normalize("NFC", raw).strip()
    if 1 <= len(candidate) <= NAME_MAX_LENGTH:
        assert normalize_name(raw) == candidate
    else:
        with pytest.raises(InvalidInput):
            normalize_name(raw)


@given(st.text() | json_values)
def test_normalize_name_raises_nothing_but_invalid_input(value):
    try:
        normalize_name(value)
    except InvalidInput as exc:
        assert exc.field == "name"


# check_qty and check_delta -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, QTY_MAX])
def test_accepts_qty_that_is_an_integer_in_range(value):
    assert check_qty(value) == value


@pytest.mark.parametrize(
    "value", [*NOT_INTEGERS, -1, 2**63, -(2**63 - 1), -(2**63), 10**30, -(10**30)], ids=repr
)
def test_rejects_qty_that_is_not_an_integer_in_range(value):
    with pytest.raises(InvalidInput) as excinfo:
        check_qty(value)
    assert excinfo.value.field == "qty"


def test_names_the_field_it_was_asked_to_check():
    with pytest.raises(InvalidInput) as excinfo:
        check_qty(-1, field="expected_qty")
    assert excinfo.value.field == "expected_qty"


@pytest.mark.parametrize("value", [0, 1, -1, QTY_MAX, -QTY_MAX])
def test_accepts_delta_that_is_an_integer_in_range(value):
    assert check_delta(value) == value


@pytest.mark.parametrize("value", [*NOT_INTEGERS, 2**63, -(2**63), 10**30, -(10**30)], ids=repr)
def test_rejects_delta_that_is_not_an_integer_in_range(value):
    with pytest.raises(InvalidInput) as excinfo:
        check_delta(value)
    assert excinfo.value.field == "delta"


@given(any_integers)
def test_check_qty_accepts_exactly_the_integers_from_0_to_qty_max(value):
    if 0 <= value <= QTY_MAX:
        assert check_qty(value) == value
    else:
        with pytest.raises(InvalidInput):
            check_qty(value)


@given(any_integers)
def test_check_delta_accepts_exactly_the_integers_within_qty_max_of_0(value):
    if -QTY_MAX <= value <= QTY_MAX:
        assert check_delta(value) == value
    else:
        with pytest.raises(InvalidInput):
            check_delta(value)


@given(json_values.filter(lambda value: type(value) is not int))
def test_check_qty_and_check_delta_reject_every_value_that_is_not_an_integer(value):
    with pytest.raises(InvalidInput):
        check_qty(value)
    with pytest.raises(InvalidInput):
        check_delta(value)


# validate_item -------------------------------------------------------------------------------------


def test_validate_item_returns_a_new_dict_with_the_name_normalised():
    data = {"name": " cafe\u0301\u00a0", "qty": 3}
    original = dict(data)

    valid = validate_item(data)

    assert valid == {"name": "caf\u00e9", "qty": 3, "low_stock_threshold": None}
    assert valid is not data
    assert data == original  # the caller's dict is left alone


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param({"name": "a", "qty": 1, "colour": "red"}, "colour", id="unknown-field"),
        pytest.param({"name": "a", "qty": 1, "id": "x"}, "id", id="id-is-not-writable"),
        pytest.param({"qty": 1, "colour": "red"}, "colour", id="unknown-before-missing"),
        pytest.param({"qty": 1}, "name", id="missing-name"),
        pytest.param({"name": "a"}, "qty", id="missing-qty"),
        pytest.param({}, "name", id="empty"),
        pytest.param({"name": "", "qty": 1}, "name", id="blank-name"),
        pytest.param({"name": "a", "qty": True}, "qty", id="bool-qty"),
        pytest.param({"name": "a", "qty": -1}, "qty", id="negative-qty"),
        pytest.param(
            {"name": "a", "qty": 1, "low_stock_threshold": True}, "low_stock_threshold", id="threshold-true"
        ),
        pytest.param(
            {"name": "a", "qty": 1, "low_stock_threshold": 5.0}, "low_stock_threshold", id="threshold-float"
        ),
        pytest.param(
            {"name": "a", "qty": 1, "low_stock_threshold": "5"}, "low_stock_threshold", id="threshold-string"
        ),
        pytest.param(
            {"name": "a", "qty": 1, "low_stock_threshold": -1}, "low_stock_threshold", id="threshold-negative"
        ),
        pytest.param(
            {"name": "a", "qty": 1, "low_stock_threshold": 2**63}, "low_stock_threshold", id="threshold-2**63"
        ),
        pytest.param({"name": "a", "low_stock_threshold": 1}, "qty", id="threshold-without-qty"),
        pytest.param({"name": "a", "qty": 1, "reserved": 0}, "reserved", id="reserved-is-not-writable"),
    ],
)
def test_validate_item_rejects_and_names_the_bad_field(data, field):
    with pytest.raises(InvalidInput) as excinfo:
        validate_item(data)
    assert excinfo.value.field == field


@pytest.mark.parametrize("threshold", [None, 0, 1, QTY_MAX], ids=repr)
def test_validate_item_accepts_a_threshold_that_is_null_or_an_integer_in_range(threshold):
    valid = validate_item({"name": "a", "qty": 1, "low_stock_threshold": threshold})
    assert valid == {"name": "a", "qty": 1, "low_stock_threshold": threshold}


# apply_delta ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qty", "delta", "new_qty"),
    [(5, -5, 0), (5, 0, 5), (5, 3, 8), (0, QTY_MAX, QTY_MAX), (QTY_MAX, -QTY_MAX, 0), (QTY_MAX, 0, QTY_MAX)],
)
def test_apply_delta_adds_the_delta(qty, delta, new_qty):
    assert apply_delta(qty, delta) == new_qty


@pytest.mark.parametrize(("qty", "delta"), [(0, -1), (5, -6), (QTY_MAX - 1, -QTY_MAX)])
def test_apply_delta_refuses_to_go_below_0(qty, delta):
    with pytest.raises(QtyBelowZero):
        apply_delta(qty, delta)


@pytest.mark.parametrize(("qty", "delta"), [(QTY_MAX, 1), (1, QTY_MAX), (QTY_MAX, QTY_MAX)])
def test_apply_delta_refuses_to_go_above_qty_max(qty, delta):
    with pytest.raises(QtyAboveMax):
        apply_delta(qty, delta)


@given(
    st.integers(0, QTY_MAX) | bound_integers.filter(lambda n: 0 <= n <= QTY_MAX),
    st.integers(-QTY_MAX, QTY_MAX) | bound_integers.filter(lambda n: -QTY_MAX <= n <= QTY_MAX),
)
def test_apply_delta_agrees_with_integer_arithmetic_within_the_bounds(qty, delta):
    if qty + delta < 0:
        with pytest.raises(QtyBelowZero):
            apply_delta(qty, delta)
    elif qty + delta > QTY_MAX:
        with pytest.raises(QtyAboveMax):
            apply_delta(qty, delta)
    else:
        assert apply_delta(qty, delta) == qty + delta
