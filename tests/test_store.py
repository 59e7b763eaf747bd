"""narwhal.store: durability, atomicity, group commit, backpressure, errors, kill -9."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

from narwhal.errors import NarwhalError
from narwhal.store import DEFAULT_FAMILIES, Store, StoreError, store_size, u64


@pytest.fixture
async def store(tmp_path: Path):
    s = Store.open(tmp_path / "store.db")
    yield s
    await s.close()


def value_for(key: bytes, size: int = 100) -> bytes:
    return (key * (size // max(len(key), 1) + 1))[:size]


async def test_round_trip_in_every_family(store: Store) -> None:
    assert store.families == DEFAULT_FAMILIES
    assert store.page_size == 4096 and store.synchronous == "FULL"
    for i, family in enumerate(DEFAULT_FAMILIES):
        key, value = family.encode() + u64(i), os.urandom(10 + 1000 * i)
        assert store.get(family, key) is None and not store.contains(family, key)
        await store.put(family, key, value)
        assert store.get(family, key) == value and store.contains(family, key)
    # families are separate tables
    assert store.get("headers", b"batches" + u64(0)) is None
    await store.put("batches", b"big", b"\xab" * 500_000)
    assert store.get("batches", b"big") == b"\xab" * 500_000


async def test_empty_key_value_and_bytes_like(store: Store) -> None:
    await store.put("last_proposed", b"", b"")
    assert store.get("last_proposed", b"") == b"" and store.contains("last_proposed", b"")
    await store.write([("headers", memoryview(b"mv"), bytearray(b"ba"))])
    assert store.get("headers", b"mv") == b"ba"


async def test_overwrite_and_delete(store: Store) -> None:
    await store.put("headers", b"k", b"1")
    await store.put("headers", b"k", b"2")
    assert store.get("headers", b"k") == b"2"
    await store.delete("headers", b"k")
    assert store.get("headers", b"k") is None
    await store.delete("headers", b"never-there")  # deleting a missing key is fine
    await store.write([("headers", b"x", b"1"), ("headers", b"x", None), ("headers", b"y", b"2")])
    assert store.get("headers", b"x") is None and store.get("headers", b"y") == b"2"


async def test_delete_range(store: Store) -> None:
    await store.write([("certificates_by_round", u64(r) + bytes([a]), b"d")
                       for r in range(10) for a in range(3)])
    await store.delete_range("certificates_by_round", end=u64(4))
    assert store.keys("certificates_by_round")[0] == u64(4) + b"\x00"
    await store.delete_range("certificates_by_round", u64(8), u64(9))
    assert len(store.keys("certificates_by_round")) == 15
    await store.delete_range("certificates_by_round")
    assert store.last("certificates_by_round") is None


async def test_range_scans_are_ordered_by_key_bytes(store: Store) -> None:
    rounds = list(range(300))
    random.Random(1).shuffle(rounds)
    await store.write([("certificates_by_round", u64(r) + b"A", u64(r)) for r in rounds])
    await store.write([("certificates_by_round", u64(5) + b"B", b"b"),
                       ("certificates_by_round", u64(5), b"short")])
    keys = store.keys("certificates_by_round")
    assert keys == sorted(keys) and len(keys) == 302
    assert keys[5:8] == [u64(5), u64(5) + b"A", u64(5) + b"B"]  # a prefix sorts first
    got = store.items("certificates_by_round", u64(10), u64(20))
    assert [k for k, _ in got] == [u64(r) + b"A" for r in range(10, 20)]
    assert [v for _, v in got] == [u64(r) for r in range(10, 20)]
    assert store.keys("certificates_by_round", start=u64(298)) == [u64(298) + b"A", u64(299) + b"A"]
    assert store.keys("certificates_by_round", u64(3), u64(3) + b"\xff") == [u64(3) + b"A"]
    assert store.keys("certificates_by_round", limit=2) == [u64(0) + b"A", u64(1) + b"A"]
    assert store.keys("certificates_by_round", end=u64(100), limit=2, reverse=True) == [
        u64(99) + b"A", u64(98) + b"A"]
    assert store.last("certificates_by_round") == (u64(299) + b"A", u64(299))
    assert store.last("output") is None and store.items("output") == []
    # byte order, not integer or string order
    await store.write([("consensus", k, b"") for k in (b"\xff", b"\x00\x01", b"\x01", b"\x00")])
    assert store.keys("consensus") == [b"\x00", b"\x00\x01", b"\x01", b"\xff"]


async def test_get_many(store: Store) -> None:
    await store.write([("batches", u64(i), value_for(u64(i))) for i in range(0, 1000, 2)])
    keys = [u64(i) for i in range(1000)] + [u64(4), b"nope"]
    got = store.get_many("batches", keys)
    assert got == [value_for(u64(i)) if i % 2 == 0 else None for i in range(1000)] + [
        value_for(u64(4)), None]
    assert store.get_many("batches", []) == []


async def test_atomic_multi_op_write_is_all_or_nothing(store: Store) -> None:
    await store.write([("batches", b"b1", b"x"), ("payload", b"b1\x00\x00\x00\x00", b""),
                       ("certificates", b"c1", b"cert")])
    assert store.get("payload", b"b1\x00\x00\x00\x00") == b"" and store.get("certificates", b"c1")
    _fail_inserts_of(store, "certificates", b"bad")
    with pytest.raises(StoreError, match="boom"):
        await store.write([("batches", b"b2", b"x"), ("headers", b"h2", b"h"),
                           ("certificates", b"bad", b"cert")])
    assert store.get("batches", b"b2") is None and store.get("headers", b"h2") is None
    assert store.commits == 1  # the failed write committed nothing


def _fail_inserts_of(store: Store, family: str, key: bytes) -> None:
    """Make the writer's sqlite fail any insert of ``key`` into ``family`` (a trigger)."""
    with sqlite3.connect(store.path) as conn:
        conn.execute(f'CREATE TRIGGER fail_{family} BEFORE INSERT ON "{family}" '
                     f"WHEN NEW.k = x'{key.hex()}' BEGIN SELECT RAISE(ABORT, 'boom'); END")


async def test_sqlite_error_fails_only_its_own_write_and_the_thread_lives(store: Store) -> None:
    _fail_inserts_of(store, "headers", b"bad")
    results = await asyncio.gather(
        *(store.put("headers", b"bad" if i == 7 else u64(i), b"v") for i in range(20)),
        return_exceptions=True)
    errors = [r for r in results if r is not None]
    assert len(errors) == 1 and results[7] is errors[0]
    assert isinstance(errors[0], StoreError) and isinstance(errors[0], NarwhalError)
    assert isinstance(errors[0].__cause__, sqlite3.Error)
    assert len(store.keys("headers")) == 19
    await store.put("headers", b"after", b"ok")  # the writer thread survived
    assert store.get("headers", b"after") == b"ok"


async def test_misuse_raises_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown column family"):
        await store.put("nope", b"k", b"v")
    with pytest.raises(StoreError, match="unknown column family"):
        store.get("nope", b"k")
    with pytest.raises(StoreError, match="unknown column family"):
        store.items("nope")
    with pytest.raises(StoreError, match="bytes-like"):
        await store.put("headers", "text", b"v")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="bytes-like"):
        await store.write([("headers", b"k", b"v"),
                           ("headers", b"k2", 5)])  # type: ignore[list-item]
    assert store.get("headers", b"k") is None  # validation happens before anything is queued
    with pytest.raises(StoreError):
        Store.open(store.path.with_name("other.db"), families=["ok", "bad name"])
    with pytest.raises(StoreError):
        Store.open(store.path.with_name("other.db"), synchronous="OFF")  # type: ignore[arg-type]


async def test_closed_store_raises(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "s.db")
    await s.put("headers", b"k", b"v")
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await s.put("headers", b"k", b"v")
    with pytest.raises(StoreError, match="closed"):
        s.get("headers", b"k")
    with pytest.raises(StoreError, match="closed"):
        await s.delete_range("headers")


async def test_second_opener_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="in use"):
        Store.open(store.path)


async def test_read_your_writes_under_concurrency(store: Store) -> None:
    async def writer(w: int) -> None:
        for i in range(50):
            key = u64(w) + u64(i)
            await store.put("votes", key, value_for(key))
            assert store.get("votes", key) == value_for(key)  # visible as soon as awaited
            if i:
                await store.delete("votes", u64(w) + u64(i - 1))
                assert not store.contains("votes", u64(w) + u64(i - 1))

    await asyncio.gather(*(writer(w) for w in range(10)))
    assert len(store.keys("votes")) == 10


async def test_concurrent_writers_coalesce_into_few_commits(store: Store) -> None:
    await asyncio.gather(*(store.put("payload", u64(i), b"") for i in range(500)))
    assert store.committed_writes == 500
    assert store.commits < 50, store.commits  # one fsync serves many writers
    before = store.commits
    for i in range(5):  # sequential awaits: one commit each
        await store.put("payload", b"seq" + u64(i), b"")
    assert store.commits == before + 5


async def test_backpressure_at_the_byte_bound(tmp_path: Path) -> None:
    bound = 1 << 20
    s = Store.open(tmp_path / "s.db", max_pending_bytes=bound)
    value = b"v" * 300_000
    tasks = [asyncio.create_task(s.put("batches", u64(i), value)) for i in range(20)]
    await asyncio.sleep(0)  # every task ran up to its first wait; no commit was delivered yet
    assert 0 < s.pending_bytes <= bound
    assert s.waiting_writers == 20 - s.pending_bytes // 300_000 > 0
    peak = 0
    while not all(t.done() for t in tasks):
        peak = max(peak, s.pending_bytes)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert peak <= bound and s.backpressure_waits > 0 and s.pending_bytes == 0
    assert len(s.keys("batches")) == 20
    # a single write larger than the bound is admitted when alone
    await s.put("batches", b"huge", b"h" * (2 * bound))
    await s.close()


async def test_cancelled_waiter_releases_its_place(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "s.db", max_pending_bytes=100_000)
    first = asyncio.create_task(s.put("batches", b"a", b"a" * 90_000))
    second = asyncio.create_task(s.put("batches", b"b", b"b" * 90_000))
    third = asyncio.create_task(s.put("batches", b"c", b"c" * 10))
    await asyncio.sleep(0)
    assert s.waiting_writers == 2
    second.cancel()
    await asyncio.gather(first, third)
    with pytest.raises(asyncio.CancelledError):
        await second
    assert s.get("batches", b"b") is None and s.get("batches", b"c") == b"c" * 10
    assert s.pending_bytes == 0
    await s.close()


async def test_a_cancelled_write_that_was_queued_still_commits(store: Store) -> None:
    task = asyncio.create_task(store.put("headers", b"cancelled", b"v"))
    await asyncio.sleep(0)  # queued
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.put("headers", b"next", b"v")  # FIFO: commits after the cancelled one
    assert store.get("headers", b"cancelled") == b"v" and store.pending_bytes == 0


async def test_close_flushes_queued_and_waiting_writes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = Store.open(path, max_pending_bytes=200_000)
    tasks = [asyncio.create_task(s.put("batches", u64(i), value_for(u64(i), 50_000)))
             for i in range(30)]
    await asyncio.sleep(0)
    assert s.waiting_writers > 0
    await s.close()
    assert all(t.done() and t.exception() is None for t in tasks)
    s = Store.open(path)
    assert s.get_many("batches", [u64(i) for i in range(30)]) == [
        value_for(u64(i), 50_000) for i in range(30)]
    await s.close()


async def test_reopen_finds_data_and_new_families(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with Store.open(path, synchronous="NORMAL", page_size=4096) as s:
        assert s.page_size == 4096 and s.synchronous == "NORMAL"
        await s.write([("output", u64(i), b"item%d" % i) for i in range(100)])
    async with Store.open(path, families=DEFAULT_FAMILIES + ("extra",)) as s:
        assert s.page_size == 4096  # fixed when the file was created
        assert s.last("output") == (u64(99), b"item99")
        await s.put("extra", b"k", b"v")
    async with Store.open(path, families=["extra"]) as s:
        assert s.get("extra", b"k") == b"v"
        with pytest.raises(StoreError):
            s.get("output", u64(1))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


_CHILD = textwrap.dedent("""
    import asyncio, sys
    from narwhal.store import Store, u64

    def value(key, size):
        return (key * (size // len(key) + 1))[:size]

    async def writer(store, w):
        for i in range(10**9):
            key = u64(w) + u64(i)
            size = 20_000 if w % 2 else 100
            await store.write([("batches", key, value(key, size)),
                               ("payload", key, b"")])
            print(key.hex(), flush=True)

    async def main():
        store = Store.open(sys.argv[1], synchronous=sys.argv[2])
        print("ready", flush=True)
        await asyncio.gather(*(writer(store, w) for w in range(8)))

    asyncio.run(main())
""")


@pytest.mark.parametrize("attempt", range(4))
async def test_kill_9_loses_no_acknowledged_write(tmp_path: Path, attempt: int) -> None:
    path = tmp_path / "s.db"
    rng = random.Random(attempt)
    sync = ("FULL", "NORMAL")[attempt % 2]
    repo = Path(__file__).resolve().parents[1]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(path), sync, stdout=asyncio.subprocess.PIPE,
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        assert child.stdout is not None
        assert await child.stdout.readline() == b"ready\n"
        await asyncio.sleep(rng.uniform(0.1, 0.6))
        child.send_signal(signal.SIGKILL)
        out = await child.stdout.read()  # everything printed before the kill
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    acked = [bytes.fromhex(line) for line in out.decode().split()]
    assert len(acked) > 10
    async with Store.open(path) as s:
        for key in acked:
            size = 20_000 if int.from_bytes(key[:8], "big") % 2 else 100
            assert s.get("batches", key) == value_for(key, size)
            assert s.contains("payload", key)  # the other half of the atomic write
        assert len(s.keys("batches")) == len(s.keys("payload")) >= len(acked)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --- the value log: batches are written once, outside sqlite ---------------------------------


async def test_batches_go_to_the_value_log_not_into_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with Store.open(path) as s:
        await s.write([("batches", u64(i), value_for(u64(i), 500_000)) for i in range(20)])
        await s.put("headers", b"h", b"header")
        assert store_size(s) >= 10_000_000
    vlog = Path(f"{path}.vlog")
    assert vlog.stat().st_size == 20 * 500_000  # each value once, nothing else
    sqlite_bytes = sum(p.stat().st_size for p in tmp_path.glob("s.db*") if p != vlog)
    assert sqlite_bytes < 2_000_000  # locators: not one 500 KB value (10 MB in all)
    async with Store.open(path) as s:  # the locators survive a reopen; appends go after
        assert s.get_many("batches", [u64(3), u64(19)]) == [value_for(u64(3), 500_000),
                                                           value_for(u64(19), 500_000)]
        await s.put("batches", b"late", b"tail")
        assert s.get("batches", b"late") == b"tail"
        assert [k for k, _ in s.items("batches", limit=2)] == [u64(0), u64(1)]
        assert s.last("batches") == (b"late", b"tail")
    assert vlog.stat().st_size == 20 * 500_000 + 4


@pytest.mark.parametrize("damage", ["flip", "truncate"])
async def test_a_damaged_tail_of_the_value_log_reads_as_missing_after_open(tmp_path: Path, damage: str) -> None:
    """A power cut under NORMAL: the last values never reached the disk (truncate) or did so
    partly (flip). At open they are found, their rows deleted: missing, never wrong data,
    never an error that wedges the reader; writing the key again works."""
    path = tmp_path / "s.db"
    async with Store.open(path) as s:
        await s.write([("batches", b"a", b"A" * 1000), ("batches", b"b", b"B" * 1000)])
    vlog = Path(f"{path}.vlog")
    data = bytearray(vlog.read_bytes())
    if damage == "flip":
        data[1500] ^= 0x01  # inside b's value
    else:
        del data[1500:]
    vlog.write_bytes(bytes(data))
    async with Store.open(path) as s:
        assert s.corrupt_values == 1
        assert s.get("batches", b"a") == b"A" * 1000
        assert s.get("batches", b"b") is None and not s.contains("batches", b"b")
        assert s.items("batches") == [(b"a", b"A" * 1000)]
        assert s.get_many("batches", [b"a", b"b"]) == [b"A" * 1000, None]
        await s.put("batches", b"b", b"B" * 1000)  # fetched again from a peer
        assert s.get("batches", b"b") == b"B" * 1000
    async with Store.open(path) as s:
        assert s.corrupt_values == 0 and s.get("batches", b"b") == b"B" * 1000


async def test_bytes_past_the_last_committed_value_are_truncated_at_open(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with Store.open(path) as s:
        await s.put("batches", b"a", b"A" * 1000)
    vlog = Path(f"{path}.vlog")
    vlog.write_bytes(vlog.read_bytes() + b"torn" * 100)  # an append never committed (crash)
    async with Store.open(path) as s:
        assert vlog.stat().st_size == 1000
        await s.put("batches", b"c", b"C" * 10)
        assert s.get("batches", b"c") == b"C" * 10 and s.get("batches", b"a") == b"A" * 1000
    assert vlog.stat().st_size == 1010


async def test_a_value_damaged_before_the_checked_tail_is_found_when_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from narwhal import store as store_module

    monkeypatch.setattr(store_module, "VERIFY_TAIL_BYTES", 1000)  # only the last value is checked
    path = tmp_path / "s.db"
    async with Store.open(path) as s:
        await s.write([("batches", b"a", b"A" * 1000), ("batches", b"b", b"B" * 1000)])
    vlog = Path(f"{path}.vlog")
    data = bytearray(vlog.read_bytes())
    data[10] ^= 0x01  # inside a's value: bit rot, not a power cut
    vlog.write_bytes(bytes(data))
    async with Store.open(path) as s:
        assert s.corrupt_values == 0 and s.contains("batches", b"a")  # not checked at open
        with caplog.at_level(logging.ERROR, logger="narwhal.store"):
            assert s.get("batches", b"a") is None
        assert "batches/61 is damaged" in caplog.text and s.corrupt_values == 1
        assert not s.contains("batches", b"a")
        await s.put("headers", b"h", b"x")  # queued behind the row's deletion
        assert s.keys("batches") == [b"b"]
    async with Store.open(path) as s:
        assert s.get("batches", b"a") is None and s.get("batches", b"b") == b"B" * 1000


async def test_a_store_of_the_older_inline_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # format 0: batch values inline in the table
        conn.execute('CREATE TABLE "batches" (k BLOB PRIMARY KEY, v BLOB NOT NULL)')
        conn.execute('INSERT INTO "batches" VALUES (?, ?)', (b"k", b"inline batch"))
    with pytest.raises(StoreError, match="format 0"):
        Store.open(path)
    empty = tmp_path / "empty.db"
    with sqlite3.connect(empty) as conn:  # an empty old store has nothing to misread
        conn.execute('CREATE TABLE "batches" (k BLOB PRIMARY KEY, v BLOB NOT NULL)')
    async with Store.open(empty) as s:
        await s.put("batches", b"k", b"v")
        assert s.get("batches", b"k") == b"v"


def test_value_log_starts_writeback_as_it_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from narwhal import value_log

    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(value_log, "_sync_file_range",
                        lambda fd, offset, nbytes, flags: calls.append((offset, nbytes, flags)) or 0)
    log = value_log.ValueLog(tmp_path / "v.vlog")
    try:
        chunk = value_log.WRITEBACK_CHUNK
        first = log.append(b"a" * (chunk - 10))
        assert calls == []  # under one chunk: left to the kernel
        log.append(b"b" * 20)
        assert calls == [(0, chunk + 10, 2)]  # SYNC_FILE_RANGE_WRITE over what was appended
        log.append(b"c" * chunk)
        assert calls[-1] == (chunk + 10, chunk, 2)  # only the new part
        assert log.read(first) == b"a" * (chunk - 10)
    finally:
        log.close()
    assert value_log.ValueLog(tmp_path / "v.vlog").end == 2 * chunk + 10  # appends resume at the end


async def test_a_durable_write_fsyncs_its_group_under_normal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``write(durable=True)``: the value log before the commit, the WAL after it; ordinary
    writes under NORMAL fsync nothing; ``fsync_durable=False`` turns durable writes off."""
    synced: list[str] = []
    real = os.fdatasync

    def record(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", record)
    path = tmp_path / "s.db"
    async with Store.open(path, synchronous="NORMAL") as s:
        await s.put("headers", b"h", b"x")
        await s.put("batches", b"b", b"B" * 1000)
        assert synced == [] and s.durable_syncs == 0
        await s.write([("votes", b"v", b"d")], durable=True)
        assert synced == ["s.db-wal"] and s.durable_syncs == 1
        await s.write([("batches", b"c", b"C" * 1000)], durable=True)
        assert synced == ["s.db-wal", "s.db.vlog", "s.db-wal"] and s.durable_syncs == 2
        # concurrent durable writers share one group, so one pair of fsyncs
        await asyncio.gather(*(s.write([("batches", u64(i), b"x" * 100)], durable=True) for i in range(20)))
        assert s.durable_syncs - 2 < 10  # 20 writers, a few groups
    synced.clear()
    async with Store.open(path, synchronous="NORMAL", fsync_durable=False) as s:
        await s.write([("votes", b"v", b"e")], durable=True)
        assert synced == [] and s.durable_syncs == 0


async def test_the_value_log_rolls_segments_and_retention_drops_the_oldest(tmp_path: Path) -> None:
    """Segments of ~segment_bytes; prune_values drops the oldest whole (files deleted, rows
    deleted in the same transaction), keeps the values of keys in ``keep`` by copying them
    forward, never drops the segment being written, and a reopen finds what is left."""
    path = tmp_path / "s.db"
    value = lambda i: bytes([i % 251]) * 4000
    async with Store.open(path, segment_bytes=10_000) as s:
        for i in range(30):  # 3 values of 4,000 bytes per segment: 10 segments
            await s.put("batches", u64(i), value(i))
        await s.put("our_batches", u64(1), b"")  # still ours: must survive retention
        segments = sorted(tmp_path.glob("s.db.vlog*"))
        assert len(segments) == 10
        before = store_size(s)
        await s.prune_values(max_bytes=50_000, keep="our_batches")
        assert s.pruned_segments == 6 and s.pruned_bytes == 6 * 12_000
        assert s.pruned_values == 17  # 18 rows in those segments, one copied forward instead
        # 6..9 left, and a new one: the newest was full when the kept value was copied
        assert len(sorted(tmp_path.glob("s.db.vlog*"))) == 5
        assert sum(f.stat().st_size for f in tmp_path.glob("s.db.vlog*")) == 4 * 12_000 + 4_000
        assert store_size(s) < before - 50_000
        assert s.get("batches", u64(0)) is None and not s.contains("batches", u64(17))
        assert s.get("batches", u64(1)) == value(1)  # kept: copied into the newest segment
        assert [int.from_bytes(k, "big") for k in s.keys("batches")] == [1, *range(18, 30)]
        await s.prune_values(older_than=3600)  # nothing that old
        assert s.pruned_segments == 6
        await s.prune_values(older_than=0.0, min_age=3600)  # too recent to drop
        assert s.pruned_segments == 6
        await s.prune_values(older_than=0.0)  # everything closed goes, the newest stays
        assert len(sorted(tmp_path.glob("s.db.vlog*"))) == 1
        remaining = s.keys("batches")
        await s.put("batches", b"new", b"after pruning")
    async with Store.open(path, segment_bytes=10_000) as s:
        assert s.keys("batches") == sorted([*remaining, b"new"])
        assert s.get("batches", b"new") == b"after pruning" and s.corrupt_values == 0
        assert all(s.get("batches", k) is not None for k in remaining)


async def test_retention_of_an_old_single_file_log(tmp_path: Path) -> None:
    """A log written before segments existed is segment 0: read as it is, dropped whole."""
    path = tmp_path / "s.db"
    async with Store.open(path) as s:  # default 256 MiB segments: all in segment 0
        await s.put("batches", b"old", b"x" * 1000)
    async with Store.open(path, segment_bytes=500) as s:
        assert s.get("batches", b"old") == b"x" * 1000
        await s.put("batches", b"new", b"y" * 1000)  # segment 0 is full: a new one
        await s.prune_values(older_than=0.0)
        assert s.get("batches", b"old") is None and s.get("batches", b"new") == b"y" * 1000
        assert not Path(f"{path}.vlog").exists() and Path(f"{path}.vlog.000001").exists()
    async with Store.open(path) as s:
        assert s.get("batches", b"new") == b"y" * 1000 and s.corrupt_values == 0


async def test_a_full_disk_fails_writes_permanently_for_peers_and_recovers_by_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from narwhal import store as store_module
    from narwhal.errors import ErrorCode
    from narwhal.store import StorageFailed

    from .faulty_store import FaultyStore

    monkeypatch.setattr(store_module, "PROBE_INTERVAL", 0.05)
    async with FaultyStore.open(tmp_path / "s.db") as s:
        await s.put("headers", b"a", b"1")
        assert not s.failing
        s.full = True
        with pytest.raises(StorageFailed) as failed:
            await s.put("batches", b"b", b"B" * 1000)
        assert failed.value.code is ErrorCode.STORAGE_FAILED and not failed.value.transient
        assert s.failing and s.write_failures == 1
        assert s.get("headers", b"a") == b"1"  # reads still work
        await asyncio.sleep(0.2)
        assert s.failing  # the probe keeps failing while the disk is full
        s.full = False  # an operator freed space; nobody else writes: the probe notices
        for _ in range(100):
            if not s.failing:
                break
            await asyncio.sleep(0.02)
        assert not s.failing
        await s.put("batches", b"b", b"B" * 1000)
        assert s.get("batches", b"b") == b"B" * 1000
