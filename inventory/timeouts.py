"""PostgreSQL's bounds on how long a session of the service waits, set as defaults of the
service's role in its database.

A SET per session, or `-c name=value` in the startup `options`, does not hold behind a pooler
in transaction mode such as PgBouncer: each transaction may run on another server session, and
PgBouncer does not pass startup options on. The server applies a role's defaults in a database
to every session it starts for that role there, however the client reached it (PostgreSQL docs,
ALTER ROLE; "Setting Parameters"). `migrate` sets them, and `make serve` migrates at every
start; sessions started after that get the new values (a pooler's open server sessions keep
theirs until it reconnects them: PgBouncer's server_lifetime). Behind a pooler in transaction
mode, the server session that ran the migrate is one of the pool's, started before the values
were set: it takes them too, so that no session the pool hands out lacks them.
"""

from django.conf import settings
from django.db import connections

# PostgreSQL parameter -> the setting (seconds) that gives its value; 0 turns it off.
PARAMETERS = {
    "lock_timeout": "DATABASE_LOCK_TIMEOUT",
    "statement_timeout": "DATABASE_STATEMENT_TIMEOUT",
    "idle_in_transaction_session_timeout": "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
}


def role_defaults() -> dict[str, int]:
    """Each parameter's value in milliseconds, its unit in PostgreSQL, from the settings."""
    return {parameter: round(getattr(settings, name) * 1000) for parameter, name in PARAMETERS.items()}


def role_defaults_apply(*, using: str = "default", **kwargs) -> None:
    """`ALTER ROLE CURRENT_USER IN DATABASE <current database> SET <parameter> = <ms>` for each
    of PARAMETERS. A post_migrate receiver; on another database than PostgreSQL, nothing.

    A role may always set its own defaults for these parameters, which any user may set
    (PostgreSQL docs, ALTER ROLE). Raises django.db.DatabaseError if the server refuses: the
    service must not run without its bounds. With DATABASE_POOLER=transaction the current
    server session takes the same values (set_config, session-wide): what any session the
    role starts from now on has, so it carries nothing from one client to the next.
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")  # the server's name, not a pooler's alias
        database = '"' + cursor.fetchone()[0].replace('"', '""') + '"'
        for parameter, milliseconds in role_defaults().items():
            # A utility statement takes no bind parameters: the name is quoted, the rest are
            # our constants and an integer.
            cursor.execute(
                f"ALTER ROLE CURRENT_USER IN DATABASE {database} SET {parameter} = {milliseconds:d}"
            )
            if settings.DATABASE_POOLER == "transaction":
                cursor.execute("SELECT set_config(%s, %s, false)", [parameter, str(milliseconds)])
