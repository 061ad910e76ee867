"""Settings, each read from the environment with a safe default."""

import math
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean, not {value!r}")


def env_list(name: str, default: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, default).split(",") if part.strip()]


DEBUG = env_bool("DEBUG", False)
# Nothing here signs data a client keeps (no sessions, no cookies), but Django needs a key.
# The production server (make serve) refuses to start without SECRET_KEY in the environment.
SECRET_KEY = os.environ.get("SECRET_KEY") or "development-only-" + "x" * 50
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")

# Security headers on every response. HSTS tells browsers to use HTTPS only; behind a proxy
# that terminates TLS, SECURE_PROXY_SSL_HEADER lets Django see the request was secure.
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
if env_bool("BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"
SILENCED_SYSTEM_CHECKS = [
    # No CSRF middleware: the API has no cookies or sessions, so a browser has no ambient
    # credential to forge a request with; bearer tokens are never sent on their own, and a
    # write needs Content-Type: application/json, which no cross-site form can send.
    "security.W003",
    # Redirecting http -> https is the TLS proxy's job: here it would also redirect the
    # plain-HTTP health checks and loopback clients. Set SECURE_SSL_REDIRECT=1 to turn it on.
    "security.W008",
    # Preloading is a decision for the domain's owner, not for the service.
    "security.W021",
]

INSTALLED_APPS = [
    "django.contrib.staticfiles",  # serves the /docs page's assets
    "ninja",
    "inventory",
]

MIDDLEWARE = [
    "inventory.middleware.request_id",
    "inventory.middleware.access_log",
    "inventory.middleware.http_semantics",
    # Outside json_errors, so that the JSON errors it makes get the security headers too.
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "inventory.middleware.json_errors",
    "whitenoise.middleware.WhiteNoiseMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
APPEND_SLASH = False  # paths have no trailing slash; "/items/" is a 404, not a redirect

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
    }
]

STATIC_URL = "/static/"
WHITENOISE_USE_FINDERS = True  # no collectstatic step needed to serve /docs


def env_seconds(name: str, default: float) -> float:
    """A duration in seconds from the environment: a finite number >= 0."""
    value = os.environ.get(name, "").strip()
    try:
        seconds = float(value) if value else float(default)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ImproperlyConfigured(f"{name} must be a number of seconds >= 0, not {value!r}")
    return seconds


# The database: DATABASE_URL, or the embedded SQLite file beside the code; and how long the
# service may wait for it.
# How long a write waits for the database before it is answered 503 database_unavailable.
# On SQLite, the turn at the writer lock and then SQLite's busy handler, together (config/sqlite).
SQLITE_BUSY_TIMEOUT = env_seconds("SQLITE_BUSY_TIMEOUT", 10)
# On PostgreSQL, as the role's defaults in the database, set at every migrate
# (inventory/timeouts.py): they hold behind a pooler in transaction mode, where a per-session
# SET or a startup option would not. 0 turns a bound off.
# - lock_timeout cancels a statement that waits longer for one lock (SQLSTATE 55P03). It counts
#   each lock on its own, and a writer queued behind another for the same row waits for two
#   (the row's queue, then its holder): 4 s keeps that within the contract's 10 s.
# - statement_timeout cancels a statement that takes longer in all (57014): runaway work, and
#   the last bound on lock waits. Maintenance commands on a large database may need it lifted
#   for their own session: PGOPTIONS="-c statement_timeout=0" manage.py verify
# - idle_in_transaction_session_timeout ends a session left idle inside a transaction (a
#   stopped or stuck client), which frees the rows it had locked; the service's own
#   transactions are never idle for more than milliseconds.
DATABASE_LOCK_TIMEOUT = env_seconds("DATABASE_LOCK_TIMEOUT", 4)
DATABASE_STATEMENT_TIMEOUT = env_seconds("DATABASE_STATEMENT_TIMEOUT", 30)
DATABASE_IDLE_IN_TRANSACTION_TIMEOUT = env_seconds("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", 10)
# How long opening a connection to PostgreSQL may take: libpq counts whole seconds, at least 2,
# per address tried (psycopg's own default is 130 s).
DATABASE_CONNECT_TIMEOUT = max(2, math.ceil(env_seconds("DATABASE_CONNECT_TIMEOUT", 5)))
# How long `migrate` waits for another migrate of the same database to finish (app servers
# started at once take turns: inventory/management/commands/migrate.py); 0 waits as long as it takes.
MIGRATE_LOCK_TIMEOUT = env_seconds("MIGRATE_LOCK_TIMEOUT", 300)


def database(url: str) -> dict:
    """Django's DATABASES entry for a database URL (sqlite:///path, postgres://...), configured
    as the service runs on it. Also what `copy_database --to URL` connects to."""
    config = dj_database_url.parse(
        url, conn_max_age=int(os.environ.get("CONN_MAX_AGE", "600")), conn_health_checks=True
    )
    if config["ENGINE"] == "django.db.backends.sqlite3":
        config["ENGINE"] = "config.sqlite"  # writers queue on a lock file: see there
        config["OPTIONS"] = {
            # IMMEDIATE: a write transaction takes the write lock when it begins, so two
            # writers queue on the busy timeout instead of one failing mid-transaction.
            "transaction_mode": "IMMEDIATE",
            "timeout": SQLITE_BUSY_TIMEOUT,
            # WAL lets readers run beside the writer; FULL makes every commit durable.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL",
        }
    elif config["ENGINE"] == "django.db.backends.postgresql":
        # libpq connection parameters; any given in the URL's query string win.
        config["OPTIONS"] = {
            "connect_timeout": DATABASE_CONNECT_TIMEOUT,
            # A server that vanished mid-statement (host down, network cut) sends nothing: the
            # client would wait for its answer forever, or some 15 minutes of retransmissions
            # if the query was not yet acknowledged. TCP keepalives find a silent peer within
            # 5 + 3 * 2 s, and data unacknowledged for 10 s fails the connection (libpq docs,
            # "Parameter Key Words"). Unix-domain sockets ignore these.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 10_000,  # ms
            **config.get("OPTIONS", {}),
        }
    return config


DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
DATABASES = {"default": database(DATABASE_URL)}

# DATABASE_POOLER=transaction: DATABASE_URL is a pooler in transaction mode (PgBouncer), where
# each transaction may run on another server session, so nothing may outlive a transaction
# in one (README, "Several app servers behind PgBouncer"). The service sets no session state
# and takes only transaction-scoped advisory locks; `migrate` runs in one transaction. What
# is left to switch off is Django's: server-side cursors (.iterator() declares a cursor WITH
# HOLD outside a transaction), and prepared statements, which Django leaves off unless
# prepare_threshold is given (Django docs, "Transaction pooling and server-side cursors").
DATABASE_POOLER = os.environ.get("DATABASE_POOLER", "").strip().lower() or "none"
if DATABASE_POOLER not in {"none", "session", "transaction"}:
    raise ImproperlyConfigured(
        f"DATABASE_POOLER must be none, session or transaction, not {DATABASE_POOLER!r}"
    )
if DATABASE_POOLER != "none" and DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise ImproperlyConfigured(
        "DATABASE_POOLER is for a pooler in front of PostgreSQL; DATABASE_URL is not one"
    )
if DATABASE_POOLER == "transaction":
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
    if DATABASES["default"]["OPTIONS"].get("prepare_threshold") is not None:
        raise ImproperlyConfigured(
            "prepare_threshold in DATABASE_URL: PgBouncer 1.18 in transaction mode cannot carry "
            "prepared statements (DATABASE_POOLER=transaction)"
        )

# How long a process trusts a token it found active before asking the database again: the
# most a revocation takes to reach every process. 0 asks on every request.
TOKEN_CACHE_SECONDS = float(os.environ.get("TOKEN_CACHE_SECONDS", "2"))

# Days the change feed keeps an event; the worker (inventory/worker.py) prunes older ones every
# 10 minutes. The contract promises at least 7, so less is refused.
try:
    EVENTS_RETENTION_DAYS = float(os.environ.get("EVENTS_RETENTION_DAYS", "").strip() or 7)
except ValueError:
    EVENTS_RETENTION_DAYS = -1.0
if not 7 <= EVENTS_RETENTION_DAYS < float("inf"):
    raise ImproperlyConfigured(
        f"EVENTS_RETENTION_DAYS must be a number of days >= 7, not {os.environ['EVENTS_RETENTION_DAYS']!r}"
    )

# Webhooks (inventory/webhooks.py). A receiver's URL must be https and resolve only to public
# addresses; WEBHOOKS_ALLOW_PRIVATE=1 lifts both rules (http:// and any address), for tests and
# closed networks. A webhook failing for WEBHOOKS_DISABLE_AFTER_SECONDS (the contract's 24 hours)
# is disabled.
WEBHOOKS_ALLOW_PRIVATE = env_bool("WEBHOOKS_ALLOW_PRIVATE", False)
WEBHOOKS_DISABLE_AFTER_SECONDS = env_seconds("WEBHOOKS_DISABLE_AFTER_SECONDS", 24 * 3600)

USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = False

# Bodies are read in one piece, up to this size.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"bare": {"format": "%(message)s"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler"},
        "json_lines": {"class": "logging.StreamHandler", "formatter": "bare"},
    },
    "root": {"handlers": ["stderr"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        # One JSON line per request (inventory.middleware.access_log), on stderr.
        "inventory.request": {"handlers": ["json_lines"], "level": "INFO", "propagate": False},
        # Django logs every 4xx/5xx as a warning; the access log says it already.
        "django.request": {"level": "ERROR"},
    },
}

# `manage.py test` runs the pytest suite.
TEST_RUNNER = "config.test_runner.PytestTestRunner"
