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


class Movement(models.Model):
    """One change of an item's qty: the ledger. Kept after the item is deleted, so no foreign key."""

    CREATE, ADJUST, DELETE = "create", "adjust", "delete"
    KINDS = [(CREATE, "create"), (ADJUST, "adjust"), (DELETE, "delete")]

    id = models.BigAutoField(primary_key=True)  # the order of the ledger
    item_id = models.UUIDField()
    kind = models.CharField(max_length=6, choices=KINDS)
    delta = models.BigIntegerField()
    qty_after = models.BigIntegerField()
    # null is "no reason given", which the contract tells apart from "".
    reason = models.CharField(max_length=invariants.REASON_MAX_LENGTH, null=True)  # noqa: DJ001
    request_id = models.CharField(max_length=128)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["item_id", "id"], name="movement_item_order")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(qty_after__gte=0, qty_after__lte=invariants.QTY_MAX),
                name="movement_qty_after_in_range",
            ),
        ]

    def __str__(self):
        return f"{self.kind} {self.delta:+d} -> {self.qty_after}"


class IdempotencyKey(models.Model):
    """The stored answer to the first request with a key, written in the effect's transaction."""

    token = models.ForeignKey("Token", on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)  # sha256 of method, path and body
    status = models.PositiveSmallIntegerField()
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["token", "key"], name="idempotency_key_per_token")]

    def __str__(self):
        return self.key


class Token(models.Model):
    """An API token. Only a hash of its secret is stored; the token is shown once, when made."""

    READ, WRITE = "read", "write"
    SCOPES = [(READ, "read: GET only"), (WRITE, "write: everything")]

    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=5, choices=SCOPES)
    key = models.CharField(max_length=32, unique=True)  # the public part: finds the row
    digest = models.CharField(max_length=64)  # sha256 of the secret part, hex
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["name"], condition=models.Q(revoked_at__isnull=True), name="token_name_unique_active"
            ),
            models.CheckConstraint(condition=models.Q(scope__in=["read", "write"]), name="token_scope_known"),
        ]

    def __str__(self):
        return f"{self.name} ({self.scope})"
