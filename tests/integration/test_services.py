"""The service contract: the item, None for not found, or a typed error with nothing written."""

import uuid

import pytest
from django.db import IntegrityError, transaction

from inventory import errors, items
from inventory.invariants import QTY_MAX
from inventory.models import Item

pytestmark = pytest.mark.django_db


def rows():
    return sorted(Item.objects.values_list("name", "qty"))


def thresholds():
    return sorted(Item.objects.values_list("name", "low_stock_threshold"))


def test_item_create_returns_the_stored_item():
    item = items.item_create(name=" caf\u0065\u0301 ", qty=3)
    assert (item.name, item.qty) == ("caf\u00e9", 3)
    assert rows() == [("caf\u00e9", 3)]


def test_item_create_refuses_a_duplicate_after_normalising():
    items.item_create(name="caf\u00e9", qty=1)
    with pytest.raises(errors.DuplicateName):
        items.item_create(name=" cafe\u0301", qty=2)
    assert rows() == [("caf\u00e9", 1)]


@pytest.mark.parametrize(
    ("name", "qty"), [("", 1), ("a\x00b", 1), ("x" * 201, 1), ("ok", -1), ("ok", QTY_MAX + 1), ("ok", True)]
)
def test_item_create_refuses_a_broken_invariant(name, qty):
    with pytest.raises(errors.InvalidInput):
        items.item_create(name=name, qty=qty)
    assert rows() == []


@pytest.mark.parametrize("threshold", [True, 5.0, "5", -1, QTY_MAX + 1])
def test_item_create_refuses_a_threshold_that_is_not_null_or_an_integer_in_range(threshold):
    with pytest.raises(errors.InvalidInput) as excinfo:
        items.item_create(name="apple", qty=1, low_stock_threshold=threshold)
    assert excinfo.value.field == "low_stock_threshold"
    assert rows() == []


def test_model_boundary_refuses_a_broken_invariant_outside_services():
    with pytest.raises(errors.InvalidInput):
        Item(name="  ", qty=1).save()
    assert rows() == []


def test_item_update_returns_none_for_unknown_item():
    assert items.item_update(item_id=uuid.uuid4(), name="x") is None
    assert items.item_update(item_id=uuid.uuid4(), low_stock_threshold=1) is None


def test_item_update_refuses_blank_before_looking_up():
    item = items.item_create(name="apple", qty=1)
    with pytest.raises(errors.InvalidInput):
        items.item_update(item_id=item.id, name=" \u3000 ")
    assert rows() == [("apple", 1)]


def test_item_update_keeps_the_fields_it_is_not_given():
    item = items.item_create(name="apple", qty=1, low_stock_threshold=2)

    renamed = items.item_update(item_id=item.id, name=" pear ")
    assert (renamed.name, renamed.qty, renamed.low_stock_threshold) == ("pear", 1, 2)
    assert thresholds() == [("pear", 2)]

    cleared = items.item_update(item_id=item.id, low_stock_threshold=None)
    assert (cleared.name, cleared.qty, cleared.low_stock_threshold) == ("pear", 1, None)
    assert thresholds() == [("pear", None)]


@pytest.mark.parametrize("threshold", [True, 5.0, "5", -1, QTY_MAX + 1])
def test_item_update_refuses_a_bad_threshold_and_changes_nothing(threshold):
    item = items.item_create(name="apple", qty=1, low_stock_threshold=2)
    with pytest.raises(errors.InvalidInput) as excinfo:
        items.item_update(item_id=item.id, name="pear", low_stock_threshold=threshold)
    assert excinfo.value.field == "low_stock_threshold"
    assert thresholds() == [("apple", 2)]


def test_item_delete_of_unknown_item_is_a_no_op():
    items.item_create(name="apple", qty=1)
    assert items.item_delete(item_id=uuid.uuid4()) is None
    assert rows() == [("apple", 1)]


def test_item_delete_returns_the_qty_it_removed_once():
    item = items.item_create(name="apple", qty=7)
    assert items.item_delete(item_id=item.id) == 7
    assert items.item_delete(item_id=item.id) is None
    assert rows() == []


def test_qty_adjust_returns_none_for_unknown_item():
    assert items.qty_adjust(item_id=uuid.uuid4(), delta=1) is None


@pytest.mark.parametrize(
    ("start", "delta", "error"),
    [(0, -1, errors.QtyBelowZero), (5, -6, errors.QtyBelowZero), (QTY_MAX, 1, errors.QtyAboveMax)],
)
def test_qty_adjust_refuses_to_leave_the_bounds(start, delta, error):
    item = items.item_create(name="apple", qty=start)
    with pytest.raises(error):
        items.qty_adjust(item_id=item.id, delta=delta)
    assert rows() == [("apple", start)]


@pytest.mark.parametrize("delta", [True, 1.0, "1", None, QTY_MAX + 1, -QTY_MAX - 1, 10**30])
def test_qty_adjust_refuses_a_delta_that_is_not_a_bounded_integer(delta):
    item = items.item_create(name="apple", qty=5)
    with pytest.raises(errors.InvalidInput):
        items.qty_adjust(item_id=item.id, delta=delta)
    assert rows() == [("apple", 5)]


def test_qty_adjust_of_the_largest_delta_from_zero_reaches_the_bound():
    item = items.item_create(name="apple", qty=0)
    assert items.qty_adjust(item_id=item.id, delta=QTY_MAX).qty == QTY_MAX
    assert items.qty_adjust(item_id=item.id, delta=-QTY_MAX).qty == 0


def test_database_refuses_negative_qty_even_past_the_model():
    item = items.item_create(name="apple", qty=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Item.objects.filter(pk=item.id).update(qty=-1)
    assert rows() == [("apple", 1)]


def test_database_refuses_a_duplicate_name_even_past_the_model():
    items.item_create(name="apple", qty=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Item.objects.bulk_create([Item(name="apple", qty=2)])
    assert rows() == [("apple", 1)]
