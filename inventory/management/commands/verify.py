"""`manage.py verify`: exit 0 iff every invariant holds for every row in the database."""

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from inventory import integrity


class Command(BaseCommand):
    help = "Scan the database; exit non-zero, naming the rows, if any invariant is broken."

    def handle(self, *args, **options):
        try:
            problems = integrity.invariant_violations()
        except DatabaseError as exc:  # unreachable, or not a migrated database of the service
            raise CommandError(f"cannot read the database: {exc}") from exc
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"{len(problems)} invariant violation(s)")
        self.stdout.write("ok: every invariant holds")
