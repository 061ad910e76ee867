import uuid

from django.db import models

from inventory import invariants


class CodePointCharField(models.CharField):
    """Text that compares and sorts by Unicode code point on every database.

    SQLite's default BINARY collation already does; PostgreSQL's default collation
    follows the locale, so the column gets the "C" collation there.
    """

    def db_parameters(self, connection):
        params = super().db_parameters(connection)
        if connection.vendor == "postgresql":
            params["collation"] = "C"
        return params


class Item(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = CodePointCharField(max_length=invariants.NAME_MAX_LENGTH)
    qty = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["name"], name="item_name_unique"),
            models.CheckConstraint(
                condition=models.Q(qty__gte=0, qty__lte=invariants.QTY_MAX), name="item_qty_in_range"
            ),
            models.CheckConstraint(condition=~models.Q(name=""), name="item_name_not_blank"),
        ]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        # The model boundary: nothing reaches the database without passing the invariants.
        valid = invariants.validate_item({"name": self.name, "qty": self.qty})
        self.name, self.qty = valid["name"], valid["qty"]
        super().save(*args, **kwargs)
