"""Django's SQLite backend, with writers queued on a lock file instead of on SQLite's busy
handler.

A writer that finds the database locked sleeps in SQLite's busy handler (1, 2, 5 ... up to
100 ms) and tries again, so under contention the write lock sits idle while the next writer
sleeps, and a few unlucky ones wait hundreds of ms. A blocking flock() on a file beside the
database wakes the next writer the moment the lock is released. It is held from BEGIN
IMMEDIATE to COMMIT or ROLLBACK; the kernel releases it if the process dies.
"""

import fcntl

from django.db.backends.sqlite3 import base


class DatabaseWrapper(base.DatabaseWrapper):
    _writer_lock = None

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        if not self.is_in_memory_db():  # no other process can reach an in-memory database
            self._writer_lock = open(f"{self.settings_dict['NAME']}-writer", "a")  # noqa: SIM115
        return connection

    def _start_transaction_under_autocommit(self):
        if self._writer_lock is not None:
            fcntl.flock(self._writer_lock, fcntl.LOCK_EX)
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_writer_lock()
            raise

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
            if self._writer_lock is not None:
                self._writer_lock.close()  # closing the file releases its lock too
                self._writer_lock = None

    def _release_writer_lock(self):
        if self._writer_lock is not None:
            fcntl.flock(self._writer_lock, fcntl.LOCK_UN)
