"""Every read. No selector opens a transaction: on SQLite that would take the write lock."""

import uuid

from inventory.models import Item


def item_get(*, item_id: uuid.UUID) -> Item | None:
    return Item.objects.filter(pk=item_id).first()


def item_list(*, limit: int, after_name: str | None = None) -> tuple[list[Item], bool]:
    """A page of items ordered by name (keyset: a deep page costs what the first does).

    Returns the page and whether more items follow it.
    """
    items = Item.objects.order_by("name")
    if after_name is not None:
        items = items.filter(name__gt=after_name)
    page = list(items[: limit + 1])
    return page[:limit], len(page) > limit
