"""`manage.py verify`: exit 0 iff every invariant holds for every row in the database."""

from django.core.management.base import BaseCommand, CommandError

from inventory import integrity


class Command(BaseCommand):
    help = "Scan the database; exit non-zero, naming the rows, if any invariant is broken."

    def handle(self, *args, **options):
        problems = integrity.invariant_violations()
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"{len(problems)} invariant violation(s)")
        self.stdout.write("ok: every invariant holds")
