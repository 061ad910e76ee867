"""Every state transition: validate -> commit -> return.

A service returns the item, returns None when the item does not exist, or raises a
typed error from inventory.errors; in every failing case nothing has been written.
"""

import uuid

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from inventory import auth, invariants, metrics
from inventory.errors import DuplicateName, TokenNameTaken
from inventory.models import Item, Token


def item_create(*, name: object, qty: object) -> Item:
    item = Item(name=name, qty=qty)
    try:
        with transaction.atomic():
            item.save(force_insert=True)
            transaction.on_commit(metrics.QTY_TRANSITIONS.labels("create").inc)
    except IntegrityError as exc:
        # The invariants passed, so the constraint that failed is the unique name:
        # a racing create of the same name won.
        raise DuplicateName(field="name") from exc
    return item


def item_rename(*, item_id: uuid.UUID, name: object) -> Item | None:
    new_name = invariants.normalize_name(name)
    try:
        with transaction.atomic():
            item = Item.objects.select_for_update().filter(pk=item_id).first()
            if item is None:
                return None
            item.name = new_name
            item.save(update_fields=["name"])
    except IntegrityError as exc:
        raise DuplicateName(field="name") from exc
    return item


def item_delete(*, item_id: uuid.UUID) -> None:
    with transaction.atomic():
        if Item.objects.filter(pk=item_id).delete()[0]:
            transaction.on_commit(metrics.QTY_TRANSITIONS.labels("delete").inc)


def _guarded_add(item_id: uuid.UUID, delta: int) -> bool:
    """qty += delta in one UPDATE whose guard keeps qty in [0, QTY_MAX].

    The bound is written so that no intermediate value leaves the 64-bit range:
    SQLite would turn an overflowing sum into a REAL and PostgreSQL would raise.
    """
    if delta < 0:
        guard = {"qty__gte": -delta}
    else:
        guard = {"qty__lte": invariants.QTY_MAX - delta}
    return Item.objects.filter(pk=item_id, **guard).update(qty=F("qty") + delta) == 1


def qty_adjust(*, item_id: uuid.UUID, delta: object) -> Item | None:
    delta = invariants.check_delta(delta)
    with transaction.atomic():
        if not _guarded_add(item_id, delta):
            # Refused or missing. Lock the row so the reason we give is the true one:
            # another writer may have moved qty since the guard ran.
            current = (
                Item.objects.select_for_update().filter(pk=item_id).values_list("qty", flat=True).first()
            )
            if current is None:
                return None
            invariants.apply_delta(current, delta)  # raises the reason it is refused
            # qty moved in between and the delta now fits; the row is locked, so this applies.
            _guarded_add(item_id, delta)
        transaction.on_commit(metrics.QTY_TRANSITIONS.labels("adjust").inc)
        return Item.objects.get(pk=item_id)


def token_create(*, name: str, scope: str) -> str:
    """Make a token; return it. Only its digest is stored, so this is the one time it is seen."""
    shown, key, digest = auth.new_token()
    try:
        with transaction.atomic():
            Token.objects.create(name=name, scope=scope, key=key, digest=digest)
    except IntegrityError as exc:
        raise TokenNameTaken(field="name") from exc
    return shown


def token_revoke(*, name: str) -> bool:
    """Revoke the active token with this name; False if there is none."""
    with transaction.atomic():
        return Token.objects.filter(name=name, revoked_at__isnull=True).update(revoked_at=timezone.now()) == 1
