"""Django's SQLite backend, with writers queued on a lock file instead of on SQLite's busy
handler, and no writer waiting longer than the busy timeout.

A writer that finds the database locked sleeps in SQLite's busy handler (1, 2, 5 ... up to
100 ms) and tries again, so under contention the write lock sits idle while the next writer
sleeps, and a few unlucky ones wait hundreds of ms. A blocking flock() on a file beside the
database wakes the next writer the moment the lock is released. It is held from BEGIN
IMMEDIATE to COMMIT or ROLLBACK; the kernel releases it if the process dies.

flock() has no timeout, and a signal cannot interrupt it in a thread other than the main one
(Python retries the call, PEP 475). So a writer first tries without blocking, which is all it
takes without contention; when the lock is taken, a helper thread blocks in flock() on a file
description of its own while the writer waits for it with the timeout. A writer that gives up
leaves the wait running: the next write on the connection takes it over, and if none wants it
when it gets the lock, the helper lets the lock go at once.
"""

import fcntl
import threading
import time
from typing import IO

from django.db import OperationalError
from django.db.backends.sqlite3 import base

# A writer that got the lock after waiting this long (seconds) gives SQLite's busy handler only
# what is left of the timeout, so that the two waits together stay within it. Shorter waits,
# the usual turns of a busy queue, do not pay the two PRAGMAs this costs.
_SHORTEN_BUSY_HANDLER_AFTER = 0.05


class DatabaseWrapper(base.DatabaseWrapper):
    _writer_lock: IO | None = None  # this connection's own file description of the lock file
    _held: IO | None = None  # the description that holds the lock now, if any
    _waiter: "_LockWaiter | None" = None
    _busy_timeout_shortened = False

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        if not self.is_in_memory_db():  # no other process can reach an in-memory database
            self._writer_lock = open(self._writer_lock_path, "a")  # noqa: SIM115
        return connection

    @property
    def _writer_lock_path(self) -> str:
        return f"{self.settings_dict['NAME']}-writer"

    @property
    def _busy_timeout(self) -> float:
        # The `timeout` of sqlite3.connect(), in seconds; 5 is its default.
        return float(self.settings_dict["OPTIONS"].get("timeout", 5.0))

    def _start_transaction_under_autocommit(self):
        if self._writer_lock is not None:
            self._lock_writer()
        try:
            if self.queries_logged or self.execute_wrappers or self.transaction_mode is None:
                super()._start_transaction_under_autocommit()
            else:
                # Django's cursor wrapper costs more than the BEGIN itself (see inventory.sql.execute).
                with self.wrap_database_errors:
                    self.connection.execute(f"BEGIN {self.transaction_mode}")
        except BaseException:
            self._release_writer_lock()
            raise

    def _lock_writer(self) -> None:
        """Take the writer lock, waiting at most the busy timeout (seconds) for it.

        Raises django.db.OperationalError ("database is locked", as SQLite says it) when the
        lock did not come within the timeout: then nothing was begun, and the caller may try
        again later.
        """
        try:
            fcntl.flock(self._writer_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._held = self._writer_lock
            return
        except BlockingIOError:
            pass
        timeout = self._busy_timeout
        started = time.monotonic()
        if self._waiter is None:
            self._waiter = _LockWaiter(self._writer_lock_path)
        self._held = self._waiter.take(timeout)
        if self._held is None:
            raise OperationalError(
                f"database is locked: no turn at the writer lock {self._writer_lock_path} "
                f"within {timeout:g} s"
            )
        waited = time.monotonic() - started
        if waited > _SHORTEN_BUSY_HANDLER_AFTER:
            left_ms = max(1, round((timeout - waited) * 1000))
            self.connection.execute(f"PRAGMA busy_timeout = {left_ms}")
            self._busy_timeout_shortened = True

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release_writer_lock()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_writer_lock()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._held = None
            self._busy_timeout_shortened = False  # a new connection starts with the whole timeout
            if self._waiter is not None:
                self._waiter.stop()
                self._waiter = None
            if self._writer_lock is not None:
                self._writer_lock.close()  # closing the file releases its lock too
                self._writer_lock = None

    def _release_writer_lock(self):
        if self._held is not None:
            fcntl.flock(self._held, fcntl.LOCK_UN)
            self._held = None
        if self._busy_timeout_shortened and self.connection is not None:
            self.connection.execute(f"PRAGMA busy_timeout = {round(self._busy_timeout * 1000)}")
            self._busy_timeout_shortened = False


class _LockWaiter:
    """A daemon thread that waits in a blocking flock(LOCK_EX) for one connection, on a file
    description of its own, so that the connection's thread can stop waiting when it wants.

    flock(2): a lock belongs to the open file description, so the lock this thread takes is
    held, and later released with LOCK_UN, through its file, from whichever thread.
    """

    def __init__(self, path: str):
        self._file = open(path, "a")  # noqa: SIM115 (closed when the thread ends)
        self._changed = threading.Condition()
        self._wanted = False  # a writer waits in take() now
        self._waiting = False  # a flock() is asked for or under way
        self._locked = False  # the flock() came, for the writer that wanted it
        self._stopped = False
        self._error: OSError | None = None
        threading.Thread(target=self._run, name="sqlite-writer-lock", daemon=True).start()

    def take(self, timeout: float) -> IO | None:
        """The file holding the writer lock once it comes, or None after `timeout` seconds;
        a wait already under way, given up on by an earlier call, is carried on. Raises the
        OSError flock() raised, if it failed."""
        with self._changed:
            self._wanted = True
            if not (self._waiting or self._locked):
                self._waiting = True
                self._changed.notify_all()
            came = self._changed.wait_for(lambda: self._locked or self._error, timeout)
            self._wanted = False
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if not came:
                return None
            self._locked = False
            return self._file

    def stop(self) -> None:
        """End the thread, now if it is idle, else once its flock() returns."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def _run(self) -> None:
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._waiting or self._stopped)
                    if self._stopped:
                        return
                try:
                    fcntl.flock(self._file, fcntl.LOCK_EX)
                except OSError as exc:
                    with self._changed:
                        self._waiting, self._error = False, exc
                        self._changed.notify_all()
                    continue
                with self._changed:
                    self._waiting = False
                    if self._wanted and not self._stopped:
                        self._locked = True
                        self._changed.notify_all()
                    else:
                        # Nobody waits for it any more: the next writer must not wait for us.
                        fcntl.flock(self._file, fcntl.LOCK_UN)
        finally:
            self._file.close()
