"""`manage.py backup PATH`: a consistent copy of the live database, verified (inventory/backup.py)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from inventory import backup


class Command(BaseCommand):
    help = (
        "Copy the live database to PATH while it serves writes (SQLite: a database file;"
        " PostgreSQL: a pg_dump archive in custom format), then check the copy with verify."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path, help="where the copy goes; must not exist")

    def handle(self, *args, path: Path, **options):
        try:
            checked = backup.backup(path)
        except backup.BackupFailed as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"backup written to {path.resolve()}; verify: {checked}")
