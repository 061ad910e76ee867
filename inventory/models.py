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
    """An item. `qty` is on hand. `reserved` is the stored sum of its hold lines that still
    count (HoldLine.reserving): it may still count lines whose hold has expired until a write
    collects them (inventory.reservations), and every read leaves those out, so a client
    sees the exact figure at every instant. `holds_expire_at` is the earliest expiry among
    the lines it counts: until then the stored figure is exact, and reads need no subquery."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = CodePointCharField(max_length=invariants.NAME_MAX_LENGTH)
    qty = models.BigIntegerField()
    reserved = models.BigIntegerField(default=0, db_default=0)
    holds_expire_at = models.DateTimeField(null=True)
    low_stock_threshold = models.BigIntegerField(null=True)

    class Meta:
        indexes = [
            # The sweep's question: which items still count a hold that has expired.
            models.Index(
                fields=["holds_expire_at"],
                condition=models.Q(holds_expire_at__isnull=False),
                name="item_holds_expire_at",
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["name"], name="item_name_unique"),
            models.CheckConstraint(
                condition=models.Q(qty__gte=0, qty__lte=invariants.QTY_MAX), name="item_qty_in_range"
            ),
            models.CheckConstraint(condition=~models.Q(name=""), name="item_name_not_blank"),
            models.CheckConstraint(
                condition=models.Q(reserved__gte=0, reserved__lte=models.F("qty")),
                name="item_reserved_in_range",
            ),
            models.CheckConstraint(
                condition=models.Q(low_stock_threshold__isnull=True)
                | models.Q(low_stock_threshold__gte=0, low_stock_threshold__lte=invariants.QTY_MAX),
                name="item_threshold_in_range",
            ),
        ]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        # The model boundary: nothing reaches the database without passing the invariants.
        valid = invariants.validate_item(
            {"name": self.name, "qty": self.qty, "low_stock_threshold": self.low_stock_threshold}
        )
        self.name, self.qty = valid["name"], valid["qty"]
        self.low_stock_threshold = valid["low_stock_threshold"]
        super().save(*args, **kwargs)


class Movement(models.Model):
    """One change of an item's qty: the ledger. Kept after the item is deleted, so no foreign key."""

    CREATE, ADJUST, COMMIT, DELETE = "create", "adjust", "commit", "delete"
    KINDS = [(CREATE, "create"), (ADJUST, "adjust"), (COMMIT, "commit"), (DELETE, "delete")]

    id = models.BigAutoField(primary_key=True)  # the order of the ledger
    item_id = models.UUIDField()
    kind = models.CharField(max_length=6, choices=KINDS)
    delta = models.BigIntegerField()
    qty_after = models.BigIntegerField()
    # null is "no reason given", which the contract tells apart from "".
    reason = models.CharField(max_length=invariants.REASON_MAX_LENGTH, null=True)  # noqa: DJ001
    reference = models.CharField(max_length=invariants.REFERENCE_MAX_LENGTH, null=True)  # noqa: DJ001
    hold_id = models.UUIDField(null=True)
    actor = models.CharField(max_length=100, default="", db_default="")  # the token's name
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


class Hold(models.Model):
    """Stock set aside for a while. The stored state is active, committed, released or
    expired; an active hold whose expires_at has passed is expired to every reader
    (invariants.hold_state) before any process writes so."""

    ACTIVE, COMMITTED, RELEASED, EXPIRED = invariants.HOLD_STATES
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    state = models.CharField(max_length=9, default=ACTIVE)
    reference = models.CharField(max_length=invariants.REFERENCE_MAX_LENGTH, null=True)  # noqa: DJ001
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField()
    actor = models.CharField(max_length=100)

    class Meta:
        indexes = [
            # The sweep's question: which holds are stored active past their expiry.
            models.Index(
                fields=["expires_at"], condition=models.Q(state="active"), name="hold_active_expiry"
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(state__in=invariants.HOLD_STATES), name="hold_state_known"
            ),
        ]

    def __str__(self):
        return f"hold {self.id} ({self.state})"


class HoldLine(models.Model):
    """One item's qty in a hold. `reserving` says whether the item's stored `reserved`
    counts it; `expires_at` repeats the hold's, so an item's lines are read without a join.
    No foreign key to the item: a committed hold outlives the item, as movements do."""

    id = models.BigAutoField(primary_key=True)  # creation order: an item's holds, oldest first
    hold = models.ForeignKey(Hold, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveSmallIntegerField()  # the line's place in the request
    item_id = models.UUIDField()
    qty = models.BigIntegerField()
    reserving = models.BooleanField(default=True)
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(
                fields=["item_id", "expires_at"],
                condition=models.Q(reserving=True),
                name="holdline_reserving",
            ),
        ]
        constraints = [
            models.UniqueConstraint(fields=["hold", "item_id"], name="holdline_item_once"),
            models.CheckConstraint(
                condition=models.Q(qty__gte=1, qty__lte=invariants.QTY_MAX), name="holdline_qty_in_range"
            ),
        ]

    def __str__(self):
        return f"{self.qty} of {self.item_id}"


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

    READ, WRITE, ADMIN = "read", "write", "admin"
    SCOPES = [
        (READ, "read: GET, but not webhooks"),
        (WRITE, "write: everything but webhooks"),
        (ADMIN, "admin: everything, webhooks included"),
    ]

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
            models.CheckConstraint(
                condition=models.Q(scope__in=["read", "write", "admin"]), name="token_scope_known"
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.scope})"


class Event(models.Model):
    """One event of the change feed, written in the transaction of the change it tells of
    (a transactional outbox). `seq` is the feed's order: events are written holding a lock
    taken just before them and kept to the commit (inventory.events), so seq order is commit
    order. `event_id` is what receivers deduplicate on: random, so never reused, not even
    after a restore or a copy to another database."""

    seq = models.BigAutoField(primary_key=True)
    event_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=32)
    at = models.DateTimeField(db_index=True)
    actor = models.CharField(max_length=100, null=True)  # noqa: DJ001
    request_id = models.CharField(max_length=128, null=True)  # noqa: DJ001
    item_id = models.UUIDField(null=True)
    hold_id = models.UUIDField(null=True)
    data = models.JSONField()

    def __str__(self):
        return f"{self.type} #{self.seq}"


class FeedState(models.Model):
    """One row: the highest seq pruned, so that a cursor before it is told 410."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    pruned_through = models.BigIntegerField(default=0)

    def __str__(self):
        return f"pruned through #{self.pruned_through}"


class Webhook(models.Model):
    """A receiver of the events of the types it names, delivered in feed order. `delivered_seq`
    is the seq of the last event it acknowledged (or passed over); a new webhook starts at the
    end of the feed."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    url = models.CharField(max_length=2000)
    events = models.JSONField()
    description = models.CharField(max_length=500, default="")
    secret = models.CharField(max_length=100)  # whsec_<base64>, kept to sign every attempt
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=200, null=True)  # noqa: DJ001
    created_at = models.DateTimeField()
    delivered_seq = models.BigIntegerField(default=0)
    failing_since = models.DateTimeField(null=True)
    attempts = models.PositiveIntegerField(default=0)  # of the event now due, so far
    next_attempt_at = models.DateTimeField(null=True)

    def __str__(self):
        return self.url


class Delivery(models.Model):
    """One attempt to deliver one event to one webhook: its log."""

    id = models.BigAutoField(primary_key=True)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event_id = models.UUIDField()
    status = models.PositiveSmallIntegerField(null=True)  # the receiver's HTTP status
    error = models.CharField(max_length=300, null=True)  # noqa: DJ001
    duration_ms = models.FloatField()
    at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["webhook", "-id"], name="delivery_newest_first")]

    def __str__(self):
        return f"{self.event_id}: {self.status or self.error}"


class Lease(models.Model):
    """Who may run a background duty (the worker): one holder at a time, until `expires_at`."""

    name = models.CharField(max_length=50, primary_key=True)
    holder = models.CharField(max_length=100)
    expires_at = models.DateTimeField()

    def __str__(self):
        return f"{self.name}: {self.holder}"
