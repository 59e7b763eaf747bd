"""Durable embedded key-value store for an asyncio node: sqlite3 (WAL), one table per family.

Model: named **column families**, each an ordered map ``bytes -> bytes`` (keys compare
byte-wise, like Python ``bytes``). :data:`DEFAULT_FAMILIES` are the node's; pass
``families=`` to :meth:`Store.open` to add more (tables are created when missing; tables
not named are left alone).

Guarantees:

- **Durable when the await returns.** ``await store.write(ops)`` returns only after the
  transaction holding those ops has committed at the configured level:
  ``synchronous="FULL"`` (default) fsyncs the WAL on every commit, so a returned write
  survives power loss / kernel panic (given a disk that honours flushes);
  ``synchronous="NORMAL"`` fsyncs only at checkpoints, so a returned write survives the
  process crashing or being ``kill -9``'d (the OS still holds it) but the last commits may
  roll back on power loss. Neither level can corrupt the database.
- **Power loss.** ``write(ops, durable=True)`` survives power loss under ``NORMAL`` too:
  the writer fsyncs the value log (if the group appended to it) before the commit and the
  WAL file after it, for the whole group, so concurrent durable writers share one pair of
  fsyncs and everything committed before them becomes durable as well. The node uses it
  for what leaves it as a promise (votes, proposed headers, batch acknowledgements); what
  it can recompute or fetch again (certificates, output records) waits for a checkpoint.
- **Atomic.** One ``write(ops)`` call is all-or-nothing, including across families.
- **Read-your-writes.** A read started after an ``await write`` returned sees it.
- **Never blocks the loop on a write.** All writes go to ONE writer thread doing **group
  commit**: it takes everything queued (up to 32 MiB), commits it in one transaction (so
  concurrent writers share one fsync), then resolves every waiting future with one
  ``loop.call_soon_threadsafe``. Should the group fail, each write in it is retried in a
  transaction of its own so that one bad write fails only its own caller.
- **Bounded.** Queued-but-uncommitted writes hold at most ``max_pending_bytes`` (a single
  write larger than that is admitted alone); a writer that would exceed it waits, FIFO.
- **Errors.** Every failure is a :class:`StoreError`: bad family/type at call time, a
  sqlite error of a write in its future (the thread lives on), any use after close.
  A failed write may have been caused by the disk itself: treat it as fatal for the node.
- Cancelling ``await write(...)`` after it was queued does not unqueue it: it commits.
- One process per store: a lock file (``<path>.lock``, ``flock``) refuses a second opener.

**Large values are written once.** The values of the *value-log families*
(:data:`DEFAULT_VALUE_LOG_FAMILIES`: ``batches``) do not go into sqlite: the writer thread
appends them to ``<path>.vlog`` and the family's table holds a 16-byte locator (offset,
length, CRC-32) committed in the same transaction as the group's other ops. Why: sqlite's
WAL writes every page twice (WAL, then checkpoint into the database), so 500 KB batches
cost twice their size in disk bandwidth, and at 50,000 tx/s four workers on one disk
wrote ~280 MB/s, the disk's whole bandwidth (``dd`` here: ~278 MB/s); with the log they
write once. Order makes it crash-safe: the log bytes are written (and with ``FULL``
``fdatasync``'d) before the transaction holding their locators commits, so a committed
locator never points past what the log holds after a process crash; the CRC catches what
``NORMAL`` cannot promise after a power loss. A damaged value reads as **missing**
(``get`` returns None, ``contains`` False, the row is deleted, ``corrupt_values`` counts it):
the node only holds batches a quorum also stored, so a lost one is fetched again. At open,
the log's bytes past the last committed value are truncated, and the values in its last
:data:`VERIFY_TAIL_BYTES` (where a power cut loses data) are checked. Bytes of a failed transaction, of an overwritten or a deleted value
stay in the log as garbage: nothing compacts the log yet (the node never deletes or
overwrites a batch).

Reads run synchronously on the caller's (loop) thread on a second, read-only connection:
WAL lets it read concurrently with the writer, and ``get`` costs ~10-18 us for 100 B and
~130-180 us for a 500 KB batch from the OS cache, against ~110-145 us / ~260-320 us
through ``asyncio.to_thread`` (``bench/store.py``, this shared 2-core machine). Scans
return lists (no cursor left open to pin an old snapshot), so bound them with ``limit``.
Use the store from one event loop thread. Reads that answer *peers* must not run there
(a peer would choose how long our loop stalls): :meth:`Store.open_reader` gives a
:class:`Reader` with the same read methods on its own read-only connection, for one other
thread (sqlite connections are not shared between threads here);
:mod:`narwhal.serving_reads` runs those reads on a small bounded pool of such threads.

Choices, measured with ``bench/store.py`` (``group`` = 16/64 concurrent writers):

- Group commit: 100 B records get ~10-19x the writes/s of one commit per write (FULL);
  500 KB batches ~1.4-1.9x, the disk's bandwidth (~130-180 MB/s here) being the limit.
  A lone sequential writer pays a thread hop (~0.5-1 ms) over writing on the loop, which
  in exchange never stalls (a loop doing the commits itself stalled up to ~200 ms).
- ``page_size=4096``, fixed when the file is created. With batches inside sqlite, 64 KiB
  pages had made 500 KB values ~1.2-1.8x faster; with batches in the value log every row
  is small, and a commit rewrites each page it touches into the WAL: at 50,000 tx/s the
  64 KiB pages made a ~16x larger WAL, and the cluster's consensus latency went from
  ~0.7-1.3 s to ~0.37 s when they went (``bench/local.py``).
- **Checkpoints run on their own thread** (``wal_autocheckpoint=0`` and a checkpointer
  thread doing ``PRAGMA wal_checkpoint(PASSIVE)`` every :data:`CHECKPOINT_INTERVAL` when
  something was committed). A checkpoint calls ``fsync``: on a disk busy writing back the
  value log that can take hundreds of ms; run by the writer (sqlite's autocheckpoint), it
  held every write waiting behind it, so batch acks, votes and quorums stalled. A passive
  checkpoint never blocks the writer. (Before the value log: autocheckpoint at 64 / 256 /
  1000 pages gave worst 500 KB write latencies of ~80-100 / ~90-150 / ~200-270 ms.)
- Rowid tables with a ``BLOB PRIMARY KEY``: faster than ``WITHOUT ROWID`` at 64 KiB pages
  for 100 B and 500 KB values alike. LMDB (no WAL double write), as a raw engine with the
  same writes per synced transaction: ~1.3-2x sqlite for 500 KB values, ~0.7-1.0x for
  100 B; not adopted (not stdlib, and sqlite's group commit closes much of the gap).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, Self

from narwhal.errors import ErrorCode, NarwhalError
from narwhal.value_log import DEFAULT_SEGMENT_BYTES, LOCATOR, SEGMENT_SHIFT, CorruptValue, ValueLog

__all__ = ["DEFAULT_FAMILIES", "DEFAULT_VALUE_LOG_FAMILIES", "FORMAT_VERSION", "Op", "Reader", "StorageFailed",
           "Store", "StoreError", "read_family", "store_size", "u64"]

logger = logging.getLogger(__name__)

#: The node's column families and their key layouts (integers as :func:`u64`).
DEFAULT_FAMILIES: tuple[str, ...] = (
    "batches",  # batch digest -> serialized batch (~500 KB)
    "headers",  # header digest -> serialized header
    "certificates",  # certificate digest -> serialized certificate
    "certificates_by_round",  # u64(round) || author -> certificate digest
    "votes",  # author || u64(round) -> digest of the header we voted for
    "last_proposed",  # b"" -> our last proposed header (singleton)
    "payload",  # batch digest || u32(worker_id) -> b"" (batch available at that worker)
    "our_batches",  # batch digest || u32(worker_id) -> b"" (ours, not yet in a header)
    "reproposed",  # u64(round) -> b"" (our orphaned header of that round: batches proposed again)
    "consensus",  # name -> small state blob
    "output",  # u64(consensus index) -> committed item
    "evidence",  # equivocator || u64(round) || kind [|| header author] -> two signed messages
    "meta",  # name -> small value of the store itself (b"probe": see Store.failing)
)

#: Families whose values live in the append-only value log (see the module docstring).
DEFAULT_VALUE_LOG_FAMILIES: tuple[str, ...] = ("batches",)
#: ``PRAGMA user_version`` of this layout: 2 = value-log families hold locators.
FORMAT_VERSION = 2

Bytes = bytes | bytearray | memoryview
#: One operation of :meth:`Store.write`: ``(family, key, value)``; ``value=None`` deletes.
Op = tuple[str, Bytes, Bytes | None]
_Params = tuple[object, ...]

DEFAULT_MAX_PENDING_BYTES = 256 << 20
DEFAULT_PAGE_SIZE = 4096
#: Seconds between two background checkpoints (when something was committed in between).
CHECKPOINT_INTERVAL = 0.5
_OP_OVERHEAD = 64  # bytes charged per op on top of key and value
_MAX_GROUP_BYTES = 32 << 20  # one transaction stops taking writes past this (bounds the WAL)
_GET_MANY_CHUNK = 256
_FAMILY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class StoreError(NarwhalError):
    """The store failed or was misused: unknown family, bad type, sqlite error, closed."""


class StorageFailed(StoreError):
    """A write did not commit: the disk is full or failing (sqlite or the value log raised).

    Permanent for a peer whose request needed the write (``STORAGE_FAILED``): retrying at
    this node cannot help until an operator frees space, and the peer has others to ask;
    a store that is merely closed (shutdown) stays a transient ``INTERNAL``."""

    code = ErrorCode.STORAGE_FAILED


def u64(n: int) -> bytes:
    """Big-endian 8-byte encoding: integer keys that sort numerically."""
    return n.to_bytes(8, "big")


def _size(b: object) -> int:
    if isinstance(b, bytes | bytearray):
        return len(b)
    if isinstance(b, memoryview):
        return b.nbytes
    raise StoreError(f"keys and values must be bytes-like, not {type(b).__name__}")


class _Statements(NamedTuple):
    table: str  # quoted
    put: str
    delete: str
    get: str
    contains: str

    @classmethod
    def of(cls, family: str) -> _Statements:
        t = f'"{family}"'
        return cls(t, f"INSERT OR REPLACE INTO {t} (k, v) VALUES (?, ?)",
                   f"DELETE FROM {t} WHERE k = ?", f"SELECT v FROM {t} WHERE k = ?",
                   f"SELECT 1 FROM {t} WHERE k = ?")


#: Seconds between two probe writes while the store is failing (see ``Store.failing``).
PROBE_INTERVAL = 1.0
#: The op of :meth:`Store.prune_values` (not SQL: the writer thread runs it itself).
_PRUNE = "-- prune value log"


class _Append(NamedTuple):
    """A value for the value log, in place of the locator the writer thread puts there."""

    value: Bytes


class _Entry:
    """One queued write: normalized ops (sql, params), its byte charge, its future."""

    __slots__ = ("durable", "future", "nbytes", "ops")

    def __init__(self, ops: list[tuple[str, _Params]] | None, nbytes: int,
                 future: asyncio.Future[None], durable: bool = False) -> None:
        self.ops, self.nbytes, self.future, self.durable = ops, nbytes, future, durable


class Reader:
    """The reads of a store over one sqlite connection (see "Reads" in the module
    docstring). :class:`Store` is one, on the loop's thread; :meth:`Store.open_reader`
    makes more, each on its own read-only connection, for other threads."""

    def __init__(self, path: Path, conn: sqlite3.Connection, statements: dict[str, _Statements],
                 value_log: ValueLog, logged: frozenset[str],
                 corrupt: dict[tuple[str, bytes], bytes] | None = None,
                 on_damaged: Callable[[str, bytes, bytes, BaseException], None] | None = None) -> None:
        self.path = path
        self._reader: sqlite3.Connection | None = conn
        self._statements, self._log, self._logged = statements, value_log, logged
        #: Values found damaged since open, ``(family, key) -> locator`` (the store's, shared
        #: by its readers): they read as missing, ``contains`` too, until written again.
        self._corrupt = {} if corrupt is None else corrupt
        self._on_damaged = on_damaged

    def close_connection(self) -> None:
        """Close this reader's connection (a :class:`Store` closes its own in :meth:`Store.close`)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def get(self, family: str, key: Bytes) -> bytes | None:
        """The value of ``key``, or None if missing (a damaged value-log value counts as
        missing: see :meth:`_value`)."""
        rows = self._read(self._sql(family).get, (key,))
        if not rows:
            return None
        return self._value(family, key, rows[0][0]) if family in self._logged else rows[0][0]

    def get_many(self, family: str, keys: Sequence[Bytes]) -> list[bytes | None]:
        """Values of ``keys`` in order (``None`` where missing)."""
        table, found = self._sql(family).table, dict[bytes, bytes]()
        for i in range(0, len(keys), _GET_MANY_CHUNK):
            chunk = keys[i:i + _GET_MANY_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(self._read(f"SELECT k, v FROM {table} WHERE k IN ({marks})",
                                    tuple(chunk)))
        if family in self._logged:
            found = {k: value for k, v in found.items() if (value := self._value(family, k, v)) is not None}
        return [found.get(bytes(k)) for k in keys]

    def contains(self, family: str, key: Bytes) -> bool:
        if self._corrupt and (family, bytes(key)) in self._corrupt:
            return False
        return bool(self._read(self._sql(family).contains, (key,)))

    def items(self, family: str, start: Bytes | None = None, end: Bytes | None = None,
              limit: int | None = None, reverse: bool = False) -> list[tuple[bytes, bytes]]:
        """``(key, value)`` pairs with ``start <= key < end`` in key order (or reversed)."""
        rows = self._scan("k, v", family, start, end, limit, reverse)
        if family in self._logged:
            return [(k, value) for k, v in rows if (value := self._value(family, k, v)) is not None]
        return rows

    def keys(self, family: str, start: Bytes | None = None, end: Bytes | None = None,
             limit: int | None = None, reverse: bool = False) -> list[bytes]:
        """Like :meth:`items` without reading the values."""
        return [k for (k,) in self._scan("k", family, start, end, limit, reverse)]

    def last(self, family: str) -> tuple[bytes, bytes] | None:
        """The pair with the largest key, or ``None`` when the family is empty."""
        rows = self.items(family, limit=1, reverse=True)
        return rows[0] if rows else None

    def _scan(self, cols: str, family: str, start: Bytes | None, end: Bytes | None,
              limit: int | None, reverse: bool) -> list[Any]:
        where, params = _range(start, end)
        sql = f"SELECT {cols} FROM {self._sql(family).table}{where} ORDER BY k" + (
            " DESC" if reverse else "")
        if limit is not None:
            sql, params = sql + " LIMIT ?", params + (limit,)
        return self._read(sql, params)

    def _read(self, sql: str, params: _Params) -> list[Any]:
        if self._reader is None:
            raise StoreError("store is closed")
        try:
            # fetchall(): never leave a statement open, it would pin an old snapshot
            return self._reader.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc

    def _value(self, family: str, key: Bytes, locator: bytes) -> bytes | None:
        """The value a value-log family's row points at, or None if it is damaged (a power
        cut under ``NORMAL``, a bad sector). Why missing and not an error: the node holds
        a batch only as a copy of what a quorum stored, so a lost one is fetched again from
        a peer, while an error would wedge whatever reads it (a worker that cannot start,
        an output that retries for ever). The store deletes the row (only if it still
        holds that locator), logs and counts the damage (``corrupt_values``)."""
        try:
            return self._log.read(locator)
        except (CorruptValue, OSError) as exc:
            if self._on_damaged is not None:
                self._on_damaged(family, bytes(key), bytes(locator), exc)
            return None

    def _sql(self, family: str) -> _Statements:
        try:
            return self._statements[family]
        except KeyError:
            raise StoreError(f"unknown column family {family!r}") from None



class Store(Reader):
    """See the module docstring. Open with :meth:`Store.open`; ``await close()`` at the end."""

    def __init__(self, path: Path, families: tuple[str, ...], writer: sqlite3.Connection,
                 reader: sqlite3.Connection, lock_fd: int, max_pending_bytes: int,
                 value_log: ValueLog, logged: frozenset[str]) -> None:
        self.path, self.families = path, families
        self._log, self._logged = value_log, logged
        self._writer, self._lock_fd = writer, lock_fd
        self._reader: sqlite3.Connection | None = reader
        self._max_pending = max_pending_bytes
        self.page_size: int = reader.execute("PRAGMA page_size").fetchone()[0]
        self.synchronous: str = ("OFF", "NORMAL", "FULL", "EXTRA")[
            writer.execute("PRAGMA synchronous").fetchone()[0]]
        #: Counters: transactions committed, write() calls committed, backpressure waits,
        #: background checkpoints.
        self.commits = self.committed_writes = self.backpressure_waits = self.checkpoints = 0
        #: Whether ``write(durable=True)`` fsyncs under ``NORMAL`` (see :meth:`open`).
        self.fsync_durable = True
        #: Group commits fsynced because they held a durable write (``NORMAL`` only).
        self.durable_syncs = 0
        self._wal_fd: int | None = None
        #: True while the latest write failed (disk full, I/O error), until one succeeds:
        #: what callers check before taking on work they could not store.
        self.failing = False
        self.write_failures = 0
        self._probe: asyncio.Task[None] | None = None
        #: Retention (:meth:`prune_values`): segments dropped, their bytes, rows deleted.
        self.pruned_segments = self.pruned_bytes = self.pruned_values = 0
        self._statements = {f: _Statements.of(f) for f in families}
        #: Values found damaged by a read since open: ``(family, key) -> locator``. They
        #: read as missing (``contains`` too) until a new value is written for the key.
        self._corrupt: dict[tuple[str, bytes], bytes] = {}
        self._on_damaged: Callable[[str, bytes, bytes, BaseException], None] | None = self._forget_damaged
        #: Damaged values found (at open: the tail check; later: by reads).
        self.corrupt_values = 0
        self._pending_bytes = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._closed: asyncio.Task[None] | None = None
        self._queue: queue.SimpleQueue[_Entry] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"store-writer:{path.name}",
                                        daemon=True)
        self._thread.start()
        self._checkpoints_stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, daemon=True,
                                              name=f"store-checkpoint:{path.name}")
        self._checkpointer.start()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, families: Iterable[str] = DEFAULT_FAMILIES,
             synchronous: Literal["FULL", "NORMAL"] = "FULL",
             page_size: int = DEFAULT_PAGE_SIZE,
             max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
             value_log_families: Iterable[str] = DEFAULT_VALUE_LOG_FAMILIES,
             fsync_durable: bool = True, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> Store:
        """Open (creating if needed) the store in the sqlite file ``path`` and its value log
        ``<path>.vlog``.

        ``page_size`` only applies when the file is created; the values of the
        ``families`` named in ``value_log_families`` go to the value log (name the same ones
        at every open). ``fsync_durable=False`` makes ``write(durable=True)`` an ordinary
        write (benchmarks of what the fsyncs cost; never for a validator).
        Raises :class:`StoreError`.
        """
        path = Path(path)
        families = tuple(dict.fromkeys(families))
        logged = frozenset(value_log_families) & set(families)
        bad = [f for f in families if not _FAMILY_NAME.fullmatch(f) or f.startswith("sqlite_")]
        if bad or synchronous not in ("FULL", "NORMAL"):
            raise StoreError(f"bad family names {bad} or synchronous={synchronous!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(path)
        conns: list[sqlite3.Connection] = []
        value_log: ValueLog | None = None
        try:
            created = not path.exists()
            conns.append(writer := _connect(path))
            writer.execute(f"PRAGMA page_size={int(page_size)}")  # before the file exists
            if writer.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                raise StoreError(f"{path}: cannot enable WAL")
            for pragma in (f"synchronous={synchronous}", "wal_autocheckpoint=0",
                           "journal_size_limit=67108864"):
                writer.execute(f"PRAGMA {pragma}")
            writer.execute("BEGIN IMMEDIATE")
            _check_format(writer, path, families, created)
            for f in families:
                writer.execute(f'CREATE TABLE IF NOT EXISTS "{f}" '
                               "(k BLOB PRIMARY KEY, v BLOB NOT NULL)")
            writer.execute(f"PRAGMA user_version={FORMAT_VERSION}")
            writer.execute("COMMIT")
            value_log = ValueLog(Path(f"{path}.vlog"), segment_bytes)
            repaired = _repair_value_log(writer, value_log, logged, path)
            if created:  # make the new files' directory entries durable too
                _fsync_dir(path.parent)
            conns.append(reader := _connect(path))
            reader.execute("PRAGMA query_only=1")
        except BaseException as exc:
            for conn in conns:
                conn.close()
            if value_log is not None:
                value_log.close()
            os.close(lock_fd)
            if isinstance(exc, sqlite3.Error | OSError):
                raise StoreError(f"cannot open store {path}: {exc}") from exc
            raise
        store = cls(path, families, writer, reader, lock_fd, max_pending_bytes, value_log, logged)
        store.corrupt_values = repaired
        store.fsync_durable = fsync_durable
        return store

    # --- writes (loop thread) -------------------------------------------------------------

    async def write(self, ops: Iterable[Op], *, durable: bool = False) -> None:
        """Commit ``ops`` atomically; returns once they are durable (see module docstring).

        ``durable=True``: survives a power loss even under ``NORMAL`` (the group holding
        the write is fsynced: values, then the WAL). For what leaves the node as a promise
        (a vote, a proposed header, a batch acknowledgement): see "Power loss" above.

        The caller must not mutate a bytearray/memoryview it passed until this returns.
        """
        entry_ops: list[tuple[str, _Params]] = []
        nbytes = 0
        for family, key, value in ops:
            sql = self._sql(family)
            nbytes += _OP_OVERHEAD + _size(key)
            if value is None:
                entry_ops.append((sql.delete, (key,)))
            else:
                nbytes += _size(value)
                entry_ops.append((sql.put, (key, _Append(value) if family in self._logged else value)))
                if self._corrupt:
                    self._corrupt.pop((family, bytes(key)), None)
        if entry_ops:
            await self._submit(entry_ops, nbytes, durable)

    async def put(self, family: str, key: Bytes, value: Bytes) -> None:
        await self.write([(family, key, value)])

    async def delete(self, family: str, key: Bytes) -> None:
        await self.write([(family, key, None)])

    async def prune_values(self, *, older_than: float | None = None, max_bytes: int | None = None,
                           keep: str | None = None, min_age: float = 0.0) -> None:
        """Give disk space back: drop the oldest segments of the value log (never the one
        being written), oldest first, while the oldest is older than ``older_than`` seconds
        (time of its last append) or the log holds more than ``max_bytes``, but never one
        written to within ``min_age`` seconds. Rows pointing into them are deleted in one
        transaction first (they read as missing afterwards), except the keys also present
        in family ``keep``, whose values are copied to the newest segment. Runs on the
        writer thread like a write: the loop never waits for file deletion or the scans.
        ``pruned_segments``, ``pruned_bytes`` and ``pruned_values`` count what went."""
        if keep is not None:
            self._sql(keep)  # an unknown family fails here, not on the writer thread
        await self._submit([(_PRUNE, (older_than, max_bytes, keep, min_age, time.time()))], 0)

    async def delete_range(self, family: str, start: Bytes | None = None,
                           end: Bytes | None = None) -> None:
        """Delete every key in ``[start, end)`` (``None``: unbounded), durably."""
        where, params = _range(start, end)
        await self._submit([(f"DELETE FROM {self._sql(family).table}{where}", params)], 0)

    async def close(self) -> None:
        """Commit everything queued (and writers waiting for room), stop the thread, close.

        Idempotent; cancelling a caller does not interrupt the shutdown.
        """
        if self._closed is None:
            self._closing = True
            self._closed = asyncio.get_running_loop().create_task(self._shutdown())
        await asyncio.shield(self._closed)

    async def _shutdown(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        try:
            self._checkpoints_stop.set()
            await asyncio.to_thread(self._checkpointer.join)
            await self._submit(None, 0)  # queues behind every earlier writer, FIFO
            self._thread.join()  # its connection, the last one, checkpoints on close
        finally:
            self.close_connection()
            self._log.close()
            if self._wal_fd is not None:
                os.close(self._wal_fd)
            os.close(self._lock_fd)

    def open_reader(self) -> Reader:
        """A :class:`Reader` on a new read-only connection, for another thread: reads that
        must not run on the event loop (:mod:`narwhal.serving_reads`). One thread uses it at
        a time; close it before :meth:`close` (which closes the value log it reads)."""
        if self._closing:
            raise StoreError("store is closed")
        try:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=1")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open a reader of {self.path}: {exc}") from exc
        return Reader(self.path, conn, self._statements, self._log, self._logged,
                      self._corrupt, self._forget_damaged)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def pending_bytes(self) -> int:
        """Bytes queued or being committed, plus those reserved by woken writers."""
        return self._pending_bytes

    @property
    def waiting_writers(self) -> int:
        """Writers waiting for room under ``max_pending_bytes``."""
        return sum(not f.done() for _, f in self._waiters)

    async def _submit(self, ops: list[tuple[str, _Params]] | None, nbytes: int,
                      durable: bool = False) -> None:
        if self._closing and ops is not None:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
        elif loop is not self._loop:
            raise StoreError("store used from a second event loop")
        await self._reserve(nbytes)
        entry = _Entry(ops, nbytes, loop.create_future(), durable)
        self._queue.put(entry)
        await entry.future

    async def _reserve(self, nbytes: int) -> None:
        pending = self._pending_bytes
        if not self._waiters and (not pending or pending + nbytes <= self._max_pending):
            self._pending_bytes += nbytes
            return
        self.backpressure_waits += 1
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((nbytes, fut))
        try:
            await fut  # _wake() reserved our bytes before resolving it
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._pending_bytes -= nbytes
            self._wake()
            raise

    def _wake(self) -> None:
        while self._waiters:
            nbytes, fut = self._waiters[0]
            pending = self._pending_bytes
            if not fut.done() and pending and pending + nbytes > self._max_pending:
                return
            self._waiters.popleft()
            if not fut.done():
                self._pending_bytes += nbytes
                fut.set_result(None)

    def _finish(self, entries: list[_Entry], errors: list[StoreError | None]) -> None:
        """Loop thread: resolve a committed group's futures, admit waiting writers."""
        for entry, error in zip(entries, errors):
            self._pending_bytes -= entry.nbytes
            if entry.ops:  # the store's health: the latest write's outcome
                self.failing = error is not None
                self.write_failures += error is not None
            if entry.future.done():
                if error is not None:
                    logger.error("write of a cancelled caller failed: %s", error)
            elif error is None:
                entry.future.set_result(None)
            else:
                entry.future.set_exception(error)
        self._wake()
        if self.failing and self._probe is None and not self._closing:
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_writable())

    async def _probe_until_writable(self) -> None:
        """While ``failing``: try a tiny write every PROBE_INTERVAL seconds, so that the
        store reports itself healthy again once the disk has room, even if every caller
        stopped writing because it was failing (a worker refusing transactions)."""
        try:
            while self.failing and not self._closing:
                await asyncio.sleep(PROBE_INTERVAL)
                with contextlib.suppress(StoreError):
                    await self.put("meta", b"probe", b"")
            if not self.failing:
                logger.warning("store %s: writes succeed again", self.path)
        finally:
            self._probe = None

    # --- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            size = group[0].nbytes
            with contextlib.suppress(queue.Empty):
                while size < _MAX_GROUP_BYTES:
                    group.append(self._queue.get_nowait())
                    size += group[-1].nbytes
            writes = [e for e in group if e.ops is not None]
            stops = [e for e in group if e.ops is None]  # close() queued its stop entry
            errors = (self._commit(writes) if writes else []) + [None] * len(stops)
            if stops:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.close()
            try:
                assert self._loop is not None  # set before the first entry was queued
                self._loop.call_soon_threadsafe(self._finish, writes + stops, errors)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                logger.warning("store %s: event loop closed, %d results dropped",
                               self.path, len(group))
            if stops:
                return

    def _prune_rows(self, conn: sqlite3.Connection, older_than: float | None, max_bytes: int | None,
                    keep: str | None, min_age: float, now: float) -> int | None:
        """Writer thread, inside the transaction: choose the oldest segments to drop (see
        :meth:`prune_values`), copy the values of ``keep``'s keys out of them, delete every
        other row pointing into them. Returns the first segment number kept, or None."""
        log, cutoff = self._log, None
        total = log.total_bytes
        for segment in log.closed_segments():
            age = now - segment.last_write
            expired = older_than is not None and age > older_than
            over = max_bytes is not None and total > max_bytes
            if age < min_age or not (expired or over):
                break
            total -= segment.size
            cutoff = segment.number + 1
        if cutoff is None:
            return None
        below = LOCATOR.pack(cutoff << SEGMENT_SHIFT, 0, 0)
        for family in sorted(self._logged):
            table = self._sql(family).table
            if keep is not None:
                kept = conn.execute(f"SELECT k, v FROM {table} WHERE v < ? AND k IN "
                                    f"(SELECT k FROM {self._sql(keep).table})", (below,)).fetchall()
                for key, locator in kept:
                    with contextlib.suppress(CorruptValue, OSError):  # damaged: deleted below
                        conn.execute(f"UPDATE {table} SET v = ? WHERE k = ?",
                                     (log.append(log.read(locator)), key))
            self.pruned_values += conn.execute(f"DELETE FROM {table} WHERE v < ?", (below,)).rowcount
        return cutoff

    def _sync_wal(self) -> None:
        """Writer thread: make every committed transaction durable under ``NORMAL`` (which
        fsyncs the WAL only at checkpoints) by fsyncing the WAL file ourselves: sqlite
        recovers committed frames that reached the disk, and these now have."""
        if self._wal_fd is None:
            self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        os.fdatasync(self._wal_fd)
        self.durable_syncs += 1

    def _checkpoint_loop(self) -> None:
        """Checkpointer thread: fold the WAL into the database off the writer's path."""
        conn = _connect(self.path)
        try:
            done = self.commits
            while not self._checkpoints_stop.wait(CHECKPOINT_INTERVAL):
                if self.commits == done:
                    continue
                done = self.commits
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:  # busy or I/O: the next round tries again
                    logger.warning("store %s: checkpoint failed: %s", self.path, exc)
        finally:
            conn.close()

    def _commit(self, entries: list[_Entry]) -> list[StoreError | None]:
        """Commit ``entries`` in one transaction; on failure, each in its own."""
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            appended = False
            cutoff: int | None = None
            for entry in entries:
                for sql, params in entry.ops or ():
                    if sql == _PRUNE:
                        cutoff = self._prune_rows(conn, *params)  # type: ignore[arg-type]
                        appended = True  # values kept may have been copied forward
                        continue
                    if len(params) == 2 and type(params[1]) is _Append:
                        params = (params[0], self._log.append(params[1].value))
                        appended = True
                    conn.execute(sql, params)
            synced = self.synchronous == "FULL"
            fsync = not synced and self.fsync_durable and any(e.durable for e in entries)
            if appended and (synced or fsync):
                self._log.sync()  # the values are on the disk before their locators
            conn.execute("COMMIT")
            if fsync:
                self._sync_wal()
            if cutoff is not None:  # every row pointing into them is gone: drop the files
                dropped_before = len(self._log.segments)
                self.pruned_bytes += self._log.drop_before(cutoff)
                self.pruned_segments += dropped_before - len(self._log.segments)
        except Exception as exc:  # noqa: BLE001 -- any failure must reach the callers
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            if len(entries) > 1:
                return [self._commit([entry])[0] for entry in entries]
            logger.error("store %s: write failed: %r", self.path, exc)
            error = StorageFailed(f"write failed: {exc}")
            error.__cause__ = exc
            return [error]
        self.commits += 1
        self.committed_writes += len(entries)
        return [None] * len(entries)

    # --- damaged values (found by any reader) ----------------------------------------

    def _forget_damaged(self, family: str, key: bytes, locator: bytes, error: BaseException) -> None:
        if (family, key) in self._corrupt:
            return
        self._corrupt[(family, key)] = locator
        self.corrupt_values += 1
        logger.error("store %s: %s/%s is damaged (%s): treated as missing, to be fetched again",
                     self.path, family, key.hex(), error)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        loop = self._loop or running
        if loop is None or loop.is_closed() or self._closing:
            return  # the tail check at the next open, or the next read, deals with it
        table = self._sql(family).table
        delete: list[tuple[str, _Params]] = [(f"DELETE FROM {table} WHERE k = ? AND v = ?", (key, locator))]

        def enqueue() -> None:  # on the loop thread, queued in order with the writes after it
            if not self._closing:
                self._loop = loop
                self._queue.put(_Entry(delete, 0, loop.create_future()))
        if running is loop:
            enqueue()
        else:
            loop.call_soon_threadsafe(enqueue)


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False: the
    # writer connection is made here and then used only by the writer thread.
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           cached_statements=512, timeout=5.0)


#: At open, the values in this many bytes at the end of the value log are checked (CRC):
#: where a power cut under ``synchronous="NORMAL"`` loses data. Reading them costs about
#: 0.1-0.3 s from the disk; a value damaged elsewhere is found when it is read.
VERIFY_TAIL_BYTES = 64 << 20


def _repair_value_log(conn: sqlite3.Connection, log: ValueLog, logged: frozenset[str], path: Path) -> int:
    """At open: drop the log's bytes past the last committed value (a crash between an
    append and its commit, or a torn append), and delete the rows whose value in the tail
    of the log fails its CRC or lies past the log's end (a power cut), so that they read as
    missing and are fetched again instead of failing every read."""
    rows = [(family, k, v) for family in sorted(logged)
            for k, v in conn.execute(f'SELECT k, v FROM "{family}"')]
    spans = [(family, k, v, *log.locate(v)) for family, k, v in rows if len(v) == LOCATOR.size]
    committed_end = max((end for *_, end in spans), default=0)
    if log.end > committed_end:
        dropped = log.truncate(committed_end)
        logger.warning("store %s: value log has %d bytes past the last committed value "
                       "(writes cut short by a crash): truncated", path, dropped)
    damaged, checked = [], 0
    for family, key, locator, offset, end in sorted(spans, key=lambda span: span[3], reverse=True):
        if checked >= VERIFY_TAIL_BYTES:
            break
        checked += end - offset
        try:
            log.read(locator)
        except (CorruptValue, OSError):
            damaged.append((family, key, locator))
    if damaged:
        conn.execute("BEGIN IMMEDIATE")
        for family, key, locator in damaged:
            conn.execute(f'DELETE FROM "{family}" WHERE k = ? AND v = ?', (key, locator))
        conn.execute("COMMIT")
        logger.warning("store %s: %d value(s) at the end of the value log did not survive "
                       "(power cut?): deleted, they read as missing and are fetched again",
                       path, len(damaged))
    return len(damaged)


def _check_format(writer: sqlite3.Connection, path: Path, families: tuple[str, ...],
                  created: bool) -> None:
    """Refuse a store written in an older layout (values inline where we expect locators)."""
    version = writer.execute("PRAGMA user_version").fetchone()[0]
    if created or version == FORMAT_VERSION:
        return
    tables = {name for (name,) in writer.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if version == 0 and not any(
            writer.execute(f'SELECT 1 FROM "{f}" LIMIT 1').fetchone() for f in families if f in tables):
        return  # an empty store of the old layout: nothing to misread
    raise StoreError(f"store {path} has format {version}, this narwhal-py reads format "
                     f"{FORMAT_VERSION}: move it aside and let the node catch up from its peers")


def _range(start: Bytes | None, end: Bytes | None) -> tuple[str, _Params]:
    clauses = [c for c, b in (("k >= ?", start), ("k < ?", end)) if b is not None]
    params = tuple(b for b in (start, end) if b is not None)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _lock(path: Path) -> int:
    """Hold ``<path>.lock`` exclusively (released by the kernel if the process dies)."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"store {path} is in use by another process or Store") from exc
    return fd


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_family(path: str | os.PathLike[str], family: str) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of ``family`` in the store file ``path``, in key order, for
    tools (``narwhal evidence list``). A read-only connection that takes no lock: it works
    while the node runs (a WAL reader never blocks the writer, nor it the reader). Values of
    value-log families come back as locators. A family the store lacks is empty."""
    if not _FAMILY_NAME.fullmatch(family):
        raise StoreError(f"bad family name {family!r}")
    if not os.path.isfile(path):
        raise StoreError(f"no store at {path}")
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                (family,)).fetchone():
                return []
            return conn.execute(f'SELECT k, v FROM "{family}" ORDER BY k').fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc


def store_size(store: object) -> int:
    """Bytes on disk of a store (database, write-ahead log, value log); 0 for stores without a file
    (the tests' in-memory stand-ins)."""
    path = getattr(store, "path", None)
    if path is None:
        return 0
    files = [Path(f"{path}"), Path(f"{path}-wal"), *Path(path).parent.glob(f"{Path(path).name}.vlog*")]
    return sum(f.stat().st_size for f in files if f.exists())
