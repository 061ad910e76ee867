"""Backups: a consistent copy of the live database, taken while the service serves writes,
then checked with `verify` before the command says it is good.

- SQLite: `VACUUM INTO` a file beside the target. It reads inside one read transaction, so
  the copy is the database as of one commit; in WAL mode writers go on meanwhile (SQLite docs,
  "VACUUM INTO"). SQLite does not fsync that file, so it is synced here, then renamed into
  place: PATH never holds half a backup.
- PostgreSQL: `pg_dump --format=custom`, which reads from one snapshot (PostgreSQL docs,
  pg_dump: "consistent even if the database is being used concurrently"). To verify it, it
  is restored into a scratch database, checked there and dropped.
"""

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection
from psycopg import sql as pgsql

from inventory import integrity


class BackupFailed(Exception):
    """The backup could not be made or does not pass `verify`; the message says why."""


def backup(path: Path) -> str:
    """Write a consistent copy of the default database to `path` and verify it. Returns what
    `verify` said. Raises BackupFailed when `path` exists, the copy cannot be made, or it
    fails `verify` (a copy that fails is still written, for the operator to look at)."""
    path = Path(path).resolve()
    if path.exists():
        raise BackupFailed(f"{path} exists: a backup never overwrites a file")
    if not path.parent.is_dir():
        raise BackupFailed(f"{path.parent} is not a directory")
    if connection.vendor == "sqlite":
        return _sqlite_backup(path)
    if connection.vendor == "postgresql":
        if settings.DATABASE_POOLER == "transaction":
            raise BackupFailed(
                "pg_dump needs a session of its own, which a pooler in transaction mode does not"
                " give: run backup with DATABASE_URL naming PostgreSQL itself, DATABASE_POOLER unset"
            )
        return _postgres_backup(path)
    raise BackupFailed(f"no backup for a {connection.vendor} database")


def _verify(database_url: str) -> str:
    ok, output = integrity.verify_elsewhere(database_url)
    if not ok:
        raise BackupFailed(f"the copy fails verify:\n{output}")
    return output


def _sqlite_backup(path: Path) -> str:
    partial = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        try:
            with connection.cursor() as cursor:
                cursor.execute("VACUUM INTO %s", [str(partial)])
        except DatabaseError as exc:
            raise BackupFailed(f"SQLite could not write the copy: {exc}") from exc
        _fsync(partial)
        # The copy may not be in WAL mode; checking it opens it as the service would, with
        # its own -wal and -shm files, which SQLite removes again when the check closes it.
        checked = _verify(f"sqlite:///{partial}")
        partial.rename(path)
        _fsync(path.parent)
        return checked
    except BackupFailed:
        if partial.exists():  # written, but it fails verify: kept for the operator to look at
            partial.rename(path)
        raise
    finally:
        for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm"), Path(f"{partial}-writer")):
            leftover.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _libpq(settings_dict: dict, dbname: str | None = None) -> tuple[list[str], dict]:
    """Connection arguments for PostgreSQL's client programs: command-line options and the
    environment (the password goes in PGPASSWORD, never on a command line)."""
    options = {
        "host": settings_dict.get("HOST") or "",
        "port": str(settings_dict.get("PORT") or ""),
        "username": settings_dict.get("USER") or "",
        "dbname": dbname or settings_dict["NAME"],
    }
    env = dict(os.environ)
    if settings_dict.get("PASSWORD"):
        env["PGPASSWORD"] = settings_dict["PASSWORD"]
    return [f"--{name}={value}" for name, value in options.items() if value], env


def _client_program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupFailed(
            f"{name} not found: install PostgreSQL's client programs, of the server's major version"
            " or newer (Debian: apt-get install postgresql-client)"
        )
    return found


def _run(command: list[str], env: dict, failure: str) -> None:
    """Run one of PostgreSQL's client programs; raises BackupFailed with what it said."""
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603 (no shell)
    if result.returncode != 0:
        raise BackupFailed(f"{failure}: {result.stderr.strip()}")


def _postgres_backup(path: Path) -> str:
    pg_dump, pg_restore = _client_program("pg_dump"), _client_program("pg_restore")
    source = connection.settings_dict
    partial = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    arguments, env = _libpq(source)
    try:
        _run([pg_dump, "--format=custom", f"--file={partial}", *arguments], env, "pg_dump failed")
        _fsync(partial)
        partial.rename(path)
        _fsync(path.parent)
    finally:
        partial.unlink(missing_ok=True)
    return _verify_dump(path, pg_restore, source)


def _verify_dump(path: Path, pg_restore: str, source: dict) -> str:
    """Restore the dump into a scratch database beside the source, verify it, drop it."""
    scratch = f"{source['NAME']}_backup_check_{uuid.uuid4().hex[:8]}"
    _, env = _libpq(source)
    conninfo = psycopg.conninfo.make_conninfo(
        host=source.get("HOST") or None,
        port=source.get("PORT") or None,
        user=source.get("USER") or None,
        password=source.get("PASSWORD") or None,
        dbname=source["NAME"],
    )
    try:
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(scratch)))
    except psycopg.Error as exc:
        raise BackupFailed(
            f"the backup is at {path}, but it could not be verified: making a scratch database"
            f" to restore it into failed ({exc}). Restore it as the README says and run verify."
        ) from exc
    try:
        arguments, _ = _libpq(source, dbname=scratch)
        _run(
            [pg_restore, "--no-owner", "--exit-on-error", *arguments, str(path)],
            env,
            f"the backup at {path} does not restore",
        )
        return _verify(_postgres_url(source, scratch))
    finally:
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute(
                pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(scratch))
            )


def _postgres_url(source: dict, dbname: str) -> str:
    """A postgres:// URL for another database of the same server, as DATABASE_URL takes it."""
    user = quote(source.get("USER") or "", safe="")
    password = quote(source.get("PASSWORD") or "", safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = source.get("HOST") or ""
    if host.startswith("/"):  # a Unix-domain socket's directory
        return f"postgres://{credentials}/{quote(dbname, safe='')}?host={quote(host, safe='')}"
    port = f":{source['PORT']}" if source.get("PORT") else ""
    return f"postgres://{credentials}{host}{port}/{quote(dbname, safe='')}"
