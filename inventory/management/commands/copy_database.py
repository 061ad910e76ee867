"""`manage.py copy_database --to URL`: every table into another, empty database, checked
(inventory/copying.py)."""

from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from tqdm import tqdm

from config.settings import database
from inventory import copying, integrity

TARGET = "copy_target"


class Command(BaseCommand):
    help = (
        "Copy every table of the database (DATABASE_URL) into the empty database at --to URL,"
        " from one consistent snapshot, then compare both sides and verify the copy."
    )

    def add_arguments(self, parser):
        parser.add_argument("--to", required=True, metavar="URL", help="sqlite:////path or postgres://...")

    def handle(self, *args, to: str, **options):
        try:
            config = database(to)
        except Exception as exc:  # dj-database-url raises several kinds for a bad URL
            raise CommandError(f"--to is not a database URL: {exc}") from exc
        if config["ENGINE"] == "config.sqlite" and config["NAME"] in ("", ":memory:"):
            raise CommandError("--to names an in-memory SQLite database: the copy would end with the command")
        source = connections[DEFAULT_DB_ALIAS].settings_dict
        if (config["ENGINE"], config["NAME"], config["HOST"], str(config["PORT"])) == (
            source["ENGINE"],
            source["NAME"],
            source["HOST"],
            str(source["PORT"]),
        ):
            raise CommandError("--to names the database being copied")
        connections.settings[TARGET] = connections.configure_settings(
            {DEFAULT_DB_ALIAS: source, TARGET: config}
        )[TARGET]
        try:
            call_command("migrate", database=TARGET, interactive=False, verbosity=0)
            total = sum(model.objects.count() for model in copying.models_in_order())
            # A bar on a terminal only (disable=None), on stderr: the summary stays on stdout.
            with tqdm(total=total, unit="rows", unit_scale=True, disable=None) as bar:
                report = copying.copy_database(
                    DEFAULT_DB_ALIAS, TARGET, progress=lambda model, rows: bar.update(rows)
                )
        except copying.CopyRefused as exc:
            raise CommandError(str(exc)) from exc
        except (ImproperlyConfigured, DatabaseError) as exc:
            raise CommandError(f"nothing was copied: {exc}") from exc
        finally:
            connections[TARGET].close()
        passed, said = integrity.verify_elsewhere(to)
        if not passed:
            raise CommandError(f"the copy fails verify:\n{said}")
        rows = sum(report.rows.values())
        self.stdout.write(
            f"copied {rows} rows in {report.seconds:.1f} s ({report.rows_per_second:.0f} rows/s),"
            f" peak memory {report.peak_memory_mib:.0f} MiB; counts, items and ledgers equal; verify: {said}"
        )
        for table, count in report.rows.items():
            self.stdout.write(f"  {table}: {count}")
        if report.events_after_snapshot:
            self.stderr.write(
                f"the source committed {report.events_after_snapshot} more events while the copy ran:"
                " they are not in the copy. Stop every writer before a move, then copy again."
            )
