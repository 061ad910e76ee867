"""`manage.py prune_idempotency_keys [--hours 24]`: forget stored answers older than that.
Run it daily (cron, a systemd timer); the contract keeps keys at least 24 hours."""

from django.core.management.base import BaseCommand, CommandError

from inventory import idempotency


class Command(BaseCommand):
    help = "Delete idempotency keys older than --hours (24 by default, the least the contract allows)."

    def add_arguments(self, parser):
        parser.add_argument("--hours", type=float, default=24.0)

    def handle(self, *args, hours, **options):
        if hours < 24:
            raise CommandError("keys are kept at least 24 hours")
        removed = idempotency.idempotency_keys_prune(older_than_hours=hours)
        self.stdout.write(f"pruned {removed} idempotency key(s) older than {hours:g} hours")
