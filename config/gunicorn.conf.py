"""The production server's settings, read from the environment (see README, "Running it")."""

import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
threads = int(os.environ.get("THREADS", "1"))
worker_class = "gthread" if threads > 1 else "sync"
timeout = int(os.environ.get("TIMEOUT", "30"))
# A worker restarted mid-request loses nothing: a write is one transaction or none.
graceful_timeout = 10
accesslog = None  # the service writes its own structured line per request
