"""DATABASE_POOLER, read at start-up (config/settings.py): what it switches off behind a pooler
in transaction mode, and the configurations it refuses. No database is reached."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POSTGRES = "postgres://app@db.example:5432/inventory"


def settings_with(**env: str) -> subprocess.CompletedProcess:
    """The default database's settings as a fresh process reads them from `env`."""
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "db = settings.DATABASES['default']; "
        "print(db['DISABLE_SERVER_SIDE_CURSORS'], db['OPTIONS'].get('prepare_threshold'))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_behind_a_transaction_pooler_server_side_cursors_and_prepared_statements_are_off():
    pooled = settings_with(DATABASE_URL=POSTGRES, DATABASE_POOLER="transaction")
    assert pooled.returncode == 0, pooled.stderr
    assert pooled.stdout.split() == ["True", "None"]
    direct = settings_with(DATABASE_URL=POSTGRES, DATABASE_POOLER="")
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout.split() == ["False", "None"]


def test_prepared_statements_asked_for_behind_a_transaction_pooler_are_refused_at_start():
    refused = settings_with(DATABASE_URL=POSTGRES + "?prepare_threshold=5", DATABASE_POOLER="transaction")
    assert refused.returncode != 0
    assert "ImproperlyConfigured" in refused.stderr and "prepare_threshold" in refused.stderr


def test_an_unknown_pooler_or_a_pooler_in_front_of_sqlite_is_refused_at_start():
    unknown = settings_with(DATABASE_URL=POSTGRES, DATABASE_POOLER="statement")
    assert unknown.returncode != 0 and "DATABASE_POOLER must be" in unknown.stderr
    sqlite = settings_with(DATABASE_URL="sqlite:////tmp/x.sqlite3", DATABASE_POOLER="transaction")
    assert sqlite.returncode != 0 and "in front of PostgreSQL" in sqlite.stderr
