"""A real :class:`narwhal.store.Store` whose writes fail on command the way they fail on a
full disk (a size-limited mount needs root; this needs nothing): the writer connection's
statements raise sqlite's own disk-full error, so the store's real error path runs."""

from __future__ import annotations

import sqlite3
from typing import Any

from narwhal.store import Store


class FullDisk:
    """Stands in for the store's writer connection; raises while ``store.full`` is set."""

    def __init__(self, conn: sqlite3.Connection, store: FaultyStore) -> None:
        self._conn, self._store = conn, store

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if self._store.full and sql.split(None, 1)[0].upper() not in ("ROLLBACK", "PRAGMA"):
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class FaultyStore(Store):
    full = False

    @classmethod
    def open(cls, *args: Any, **kwargs: Any) -> FaultyStore:  # type: ignore[override]
        store = super().open(*args, **kwargs)
        assert isinstance(store, FaultyStore)
        store._writer = FullDisk(store._writer, store)  # type: ignore[assignment]
        return store
