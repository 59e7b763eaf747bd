"""Store benchmark: group commit vs one commit per write, FULL vs NORMAL, 64 KiB vs 4 KiB pages.

Every cell opens a fresh ``narwhal.store.Store`` in a temporary directory (``--dir``, on the
same disk the node would use) and writes for S seconds on uvloop:

- ``group``: C writer tasks (16 for 500 KB values, 64 for 100 B), each ``await store.put``
  in a loop, so the writer thread commits many writes per fsync (group commit);
- ``single``: one writer task, so every write is its own commit: the baseline;
- ``direct``: plain sqlite3 on the event loop thread, one commit per write, same pragmas:
  what the store's writer thread saves the loop from (see ``loop_lag_max_ms``).

The store keeps ``batches`` values in its value log (written once): the ``large`` cells
measure that path; ``direct`` writes them into sqlite itself. Keys are random 32-byte digests. Per cell: writes/s, MB/s (10**6 bytes of value), write
latency p50/p99/max, commits, and the event loop's worst lag (a 1 ms ticker's overshoot).
Also: read latency on the loop thread vs a
thread hop (``asyncio.to_thread``); and, when the ``lmdb`` package is importable (not a
project dependency: ``.venv/bin/pip install lmdb``), sqlite vs LMDB as raw engines with the
same number of writes per synced transaction. The machine is shared and has 2 cores:
compare the ratios of one run, and see the load average in the JSON.

Usage: ``python bench/store.py [--quick] [--json] [--seconds S] [--dir DIR]``; with
``--json`` the last line of stdout is one JSON object. ``--quick`` takes < 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from narwhal.store import Store

LARGE, SMALL = 500_000, 100
WRITERS = {LARGE: 16, SMALL: 64}
#: Writes per transaction for the raw engine comparison (what group commit typically got).
ENGINE_BATCH = {LARGE: 8, SMALL: 64}
console = Console(stderr=True, highlight=False, width=max(120, shutil.get_terminal_size().columns))


class LagProbe:
    """Worst overshoot of a 1 ms sleep on the loop: how long the loop was blocked."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - t - 0.001)

    def stop(self) -> float:
        self._task.cancel()
        return self.worst


def summarize(latencies: list[float], size: int, elapsed: float, **extra: Any) -> dict[str, Any]:
    lat = sorted(latencies)
    n = len(lat)
    return {"writes_per_s": n / elapsed, "MBps": n * size / elapsed / 1e6,
            "p50_ms": 1e3 * lat[n // 2], "p99_ms": 1e3 * lat[min(n - 1, n * 99 // 100)],
            "max_ms": 1e3 * lat[-1], "writes": n, **extra}


async def timed_writers(put: Callable[[bytes, bytes], Awaitable[None]], size: int,
                        writers: int, seconds: float) -> tuple[list[float], float]:
    """``writers`` tasks calling ``put`` with fresh digests for ``seconds``; latencies, elapsed."""
    value, latencies = os.urandom(size), []
    start = time.perf_counter()
    deadline = start + seconds

    async def writer() -> None:
        while (t := time.perf_counter()) < deadline:
            await put(os.urandom(32), value)
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(writer() for _ in range(writers)))
    return latencies, time.perf_counter() - start


async def store_cell(root: Path, size: int, mode: str, seconds: float, *,
                     sync: str = "FULL", page: int = 65536) -> dict:
    path = root / f"cell{time.monotonic_ns()}" / "store.db"
    store = Store.open(path, synchronous=sync, page_size=page)  # type: ignore[arg-type]
    try:
        if mode == "direct":
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute(f"PRAGMA synchronous={sync}")

            async def put(key: bytes, value: bytes) -> None:
                conn.execute("BEGIN")
                conn.execute('INSERT INTO "batches" VALUES (?, ?)', (key, value))
                conn.execute("COMMIT")
                await asyncio.sleep(0)  # yield, so the lag is one commit, not the whole cell
        else:
            async def put(key: bytes, value: bytes) -> None:
                await store.put("batches", key, value)
        probe = LagProbe()
        writers = WRITERS[size] if mode == "group" else 1
        latencies, elapsed = await timed_writers(put, size, writers, seconds)
        lag = probe.stop()
        if mode == "direct":
            conn.close()
        commits = len(latencies) if mode == "direct" else store.commits
        return summarize(latencies, size, elapsed, commits=commits,
                         writes_per_commit=len(latencies) / max(commits, 1),
                         loop_lag_max_ms=1e3 * lag)
    finally:
        await store.close()
        shutil.rmtree(path.parent, ignore_errors=True)


async def read_cells(root: Path) -> dict[str, dict]:
    """Read latency of get() on the loop thread vs through a thread hop, 100 B and 500 KB."""
    path = root / "reads" / "store.db"
    out: dict[str, dict] = {}
    async with Store.open(path, synchronous="NORMAL") as store:
        for size, n in ((SMALL, 20_000), (LARGE, 200)):
            value = os.urandom(size)
            keys = [os.urandom(32) for _ in range(n)]
            for i in range(0, n, 500):
                await store.write([("batches", k, value) for k in keys[i:i + 500]])
            for k in keys:  # warm the OS page cache: both ways then read the same pages
                store.get("batches", k)
            t = time.perf_counter()
            for k in keys:
                store.get("batches", k)
            on_loop = (time.perf_counter() - t) / n
            t = time.perf_counter()
            for k in keys[:min(n, 2000)]:
                await asyncio.to_thread(store.get, "batches", k)
            hop = (time.perf_counter() - t) / min(n, 2000)
            name = "large" if size == LARGE else "small"
            out[f"read_{name}"] = {"loop_us": 1e6 * on_loop, "to_thread_us": 1e6 * hop}
    shutil.rmtree(path.parent, ignore_errors=True)
    return out


def engine_cells(root: Path, seconds: float, rounds: int) -> dict[str, dict]:
    """sqlite (store pragmas, FULL) vs LMDB (sync) as raw engines, same writes per txn."""
    if importlib.util.find_spec("lmdb") is None:
        console.print("[yellow]lmdb not installed: engine comparison skipped[/]")
        return {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in range(rounds):
        for engine in ("sqlite", "lmdb") if r % 2 == 0 else ("lmdb", "sqlite"):
            for size, batch in ENGINE_BATCH.items():
                name = f"engine_{'large' if size == LARGE else 'small'}_{engine}"
                d = root / name
                d.mkdir(parents=True)
                commit, close = (_lmdb_engine if engine == "lmdb" else _sqlite_engine)(d)
                value, latencies, t0 = os.urandom(size), [], time.perf_counter()
                while (t := time.perf_counter()) < t0 + seconds:
                    commit([(os.urandom(32), value) for _ in range(batch)])
                    latencies.extend([time.perf_counter() - t] * batch)
                elapsed = time.perf_counter() - t0
                close()
                shutil.rmtree(d, ignore_errors=True)
                runs.setdefault(name, []).append(
                    summarize(latencies, size, elapsed, writes_per_commit=batch))
    return {name: median_run(rs) for name, rs in sorted(runs.items())}


Engine = tuple[Callable[[list[tuple[bytes, bytes]]], None], Callable[[], None]]


def _lmdb_engine(d: Path) -> Engine:
    import lmdb  # type: ignore[import-not-found]

    env = lmdb.open(str(d), map_size=64 << 30, sync=True, metasync=True)

    def commit(items: list[tuple[bytes, bytes]]) -> None:
        with env.begin(write=True) as txn:
            for k, v in items:
                txn.put(k, v)

    return commit, env.close


def _sqlite_engine(d: Path) -> Engine:
    asyncio.run(Store.open(d / "store.db").close())  # create it with the store's pragmas
    conn = sqlite3.connect(d / "store.db", isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA wal_autocheckpoint=256")

    def commit(items: list[tuple[bytes, bytes]]) -> None:
        conn.execute("BEGIN")
        conn.executemany('INSERT INTO "batches" VALUES (?, ?)', items)
        conn.execute("COMMIT")

    return commit, conn.close


def fsync_rate(root: Path, seconds: float = 0.3) -> float:
    fd = os.open(root / "fsync.probe", os.O_WRONLY | os.O_CREAT)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() < t0 + seconds:
        os.write(fd, b"x" * 100)
        os.fsync(fd)
        n += 1
    os.close(fd)
    return n / (time.perf_counter() - t0)


def cell_specs() -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    for size, name in ((LARGE, "large"), (SMALL, "small")):
        for sync in ("FULL", "NORMAL"):
            for mode in ("group", "single"):
                specs[f"{name}_{mode}_{sync}_p65536"] = {"size": size, "mode": mode, "sync": sync}
        for mode in ("group", "single"):
            specs[f"{name}_{mode}_FULL_p4096"] = {"size": size, "mode": mode, "page": 4096}
        specs[f"{name}_direct_FULL_p65536"] = {"size": size, "mode": "direct"}
    return specs


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median writes/s, plus every round's writes/s."""
    ordered = sorted(runs, key=lambda r: r["writes_per_s"])
    return {**ordered[len(ordered) // 2], "rounds": [round(r["writes_per_s"]) for r in runs]}


async def run(root: Path, seconds: float, rounds: int, only: str | None) -> dict[str, Any]:
    """Every cell ``rounds`` times, alternating the order (the shared disk drifts), median."""
    specs = {k: v for k, v in cell_specs().items() if only is None or only in k}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in specs}
    for r in range(rounds):
        for name in (specs if r % 2 == 0 else reversed(specs)):
            size, mode = specs[name]["size"], specs[name]["mode"]
            options = {k: v for k, v in specs[name].items() if k not in ("size", "mode")}
            runs[name].append(await store_cell(root, size, mode, seconds, **options))
    cells = {name: median_run(rs) for name, rs in runs.items()}
    return {"cells": cells, "reads": await read_cells(root)}


#: Ratio name -> (numerator cell, denominator cell) of writes/s; ``{n}``: large, small.
RATIOS = {
    "{n}_group_vs_single_FULL": ("{n}_group_FULL_p65536", "{n}_single_FULL_p65536"),
    "{n}_group_vs_single_NORMAL": ("{n}_group_NORMAL_p65536", "{n}_single_NORMAL_p65536"),
    "{n}_NORMAL_vs_FULL_group": ("{n}_group_NORMAL_p65536", "{n}_group_FULL_p65536"),
    "{n}_p65536_vs_p4096_group": ("{n}_group_FULL_p65536", "{n}_group_FULL_p4096"),
    "{n}_p65536_vs_p4096_single": ("{n}_single_FULL_p65536", "{n}_single_FULL_p4096"),
    "{n}_store_single_vs_direct": ("{n}_single_FULL_p65536", "{n}_direct_FULL_p65536"),
    "{n}_lmdb_vs_sqlite_engine": ("engine_{n}_lmdb", "engine_{n}_sqlite"),
}


def ratios(r: dict[str, Any]) -> dict[str, float]:
    w = {k: v["writes_per_s"] for k, v in {**r["cells"], **r["engines"]}.items()}
    out = {}
    for n in ("large", "small"):
        for name, (a, b) in RATIOS.items():
            a, b = a.format(n=n), b.format(n=n)
            if a in w and b in w:
                out[name.format(n=n)] = w[a] / w[b]
    return out


def show(r: dict[str, Any]) -> None:
    t = Table(title=f"store: {r['seconds']} s per cell, median of {r['rounds']}, "
                    f"fsync {r['fsync_per_s']:.0f}/s")
    t.add_column("cell", no_wrap=True)
    for col in ("writes/s", "MB/s", "per commit", "p50 ms", "p99 ms", "max ms", "loop lag"):
        t.add_column(col, justify="right", no_wrap=True)
    for name, c in {**r["cells"], **r["engines"]}.items():
        t.add_row(name, f"{c['writes_per_s']:,.0f}", f"{c['MBps']:.1f}",
                  f"{c['writes_per_commit']:.1f}", f"{c['p50_ms']:.2f}", f"{c['p99_ms']:.2f}",
                  f"{c['max_ms']:.1f}", f"{c.get('loop_lag_max_ms', float('nan')):.1f}")
    console.print(t)
    for name, rd in r["reads"].items():
        console.print(f"{name}: get() on the loop {rd['loop_us']:.1f} us, "
                      f"via to_thread {rd['to_thread_us']:.1f} us")
    for name, x in r["ratios"].items():
        console.print(f"{name}: {x:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short cells: < 30 s in all")
    parser.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    parser.add_argument("--seconds", type=float, help="seconds per cell (default 1.5, quick 0.7)")
    parser.add_argument("--rounds", type=int,
                        help="runs of each cell, median kept (default 3, quick 1)")
    parser.add_argument("--only", help="run only the store cells whose name contains this")
    parser.add_argument("--dir", help="where to create the stores (default: a temp dir)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (0.7 if args.quick else 1.5)
    rounds = args.rounds or (1 if args.quick else 3)
    root = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    load_before = os.getloadavg()[0]
    try:
        result = {"seconds": seconds, "rounds": rounds, "fsync_per_s": fsync_rate(root)}
        result.update(uvloop.run(run(root, seconds, rounds, args.only)))
        result["engines"] = {} if args.only else engine_cells(root, seconds, rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["ratios"] = ratios(result)
    result.update(loadavg_before=load_before, loadavg_after=os.getloadavg()[0],
                  sqlite=sqlite3.sqlite_version, python=sys.version.split()[0])
    show(result)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
