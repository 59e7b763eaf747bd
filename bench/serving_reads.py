"""Serving reads benchmark: event-loop stall per served request, on the loop vs off it.

A worker's batch server answers ``RequestBatches`` with up to 4 MiB of batches read from
the store (eight 500 KB batches). Before issue 12 the reads ran on the event loop; now
they run on :class:`narwhal.serving_reads.ServingReads`' reader threads. Both paths run
here on the same store, in the same run, with the real :class:`BatchServer` packing code
(``_pack``: reads and splice): ``loop`` calls it on the event loop (the old handler),
``threads`` through ``BatchServer.handle``.

Per cell, ``peers`` concurrent requesters each send requests back to back for S seconds
(8 random batches each), while a 1 ms ticker on the loop measures how long the loop was
blocked: the ticker's worst and p99 overshoot (``stall``), and the loop time taken per
request (the total overshoot divided by the requests served: what one peer's request costs
everyone else on this loop). ``warm``: batches in the OS page cache; ``cold``: the value
log's pages dropped (``posix_fadvise(DONTNEED)``, this file only) before every request, so
the reads wait for the disk.

Usage: ``python bench/serving_reads.py [--quick] [--json] [--seconds S] [--dir DIR]``; with
``--json`` the last line of stdout is one JSON object. The machine is shared (2 cores):
compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from narwhal.messages import Batch, encode
from narwhal.store import Store
from narwhal.worker.batch_server import BatchServer
from narwhal.worker.metrics import WorkerMetrics

BATCH = 500_000
BATCHES = 128  # 64 MB stored
PER_REQUEST = 8  # one response budget (4 MiB)


class Ticker:
    """1 ms ticks on the loop; the overshoot of each is how long the loop was blocked."""

    def __init__(self) -> None:
        self.overshoots: list[float] = []
        self._task = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            self.overshoots.append(max(0.0, time.perf_counter() - t - 0.001))

    def stop(self) -> list[float]:
        self._task.cancel()
        return sorted(self.overshoots)


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def cell(store: Store, server: BatchServer, digests: list[bytes], mode: str, cache: str,
               peers: int, seconds: float) -> dict[str, Any]:
    served = 0
    vlog = Path(f"{store.path}.vlog")
    deadline = time.perf_counter() + seconds

    async def requester(i: int) -> None:
        nonlocal served
        rng = random.Random(i)
        peer = SimpleNamespace(info=SimpleNamespace(role="worker", authority=bytes([i]) * 32,
                                                    worker_id=0))
        while time.perf_counter() < deadline:
            wanted = tuple(rng.sample(digests, PER_REQUEST))
            if cache == "cold":
                drop_cache(vlog)
            if mode == "loop":
                response, _ = server._pack(store, wanted)  # the old handler: on the loop
                await asyncio.sleep(0)  # what awaiting the send gives the others
            else:
                response = await server.handle(peer, SimpleNamespace(digests=wanted))
            assert len(response.body) > PER_REQUEST * BATCH
            served += 1

    ticker = Ticker()
    started = time.perf_counter()
    await asyncio.gather(*(requester(i) for i in range(peers)))
    elapsed = time.perf_counter() - started
    lags = ticker.stop()
    n = len(lags)
    return {"requests": served, "requests_per_s": served / elapsed,
            "stall_max_ms": 1e3 * lags[-1], "stall_p99_ms": 1e3 * lags[min(n - 1, n * 99 // 100)],
            "stall_p50_ms": 1e3 * lags[n // 2],
            "loop_ms_per_request": 1e3 * sum(lags) / max(1, served), "ticks": n}


async def run(root: Path, seconds: float, peers: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    async with Store.open(root / "worker.db", synchronous="NORMAL") as store:
        digests = []
        for i in range(BATCHES):
            batch = Batch(tuple(os.urandom(1_000) for _ in range(BATCH // 1_000)))
            digests.append(batch.digest())
            await store.put("batches", batch.digest(), encode(batch))
        server = BatchServer(store=store, max_frame_size=8 << 20, metrics=WorkerMetrics())
        try:
            for cache in ("warm", "cold"):
                for d in digests:  # warm both: the cold cells drop it again per request
                    store.get("batches", d)
                for mode in ("loop", "threads"):
                    result[f"{cache}_{mode}"] = await cell(store, server, digests, mode, cache,
                                                           peers, seconds)
        finally:
            await server.close()
    for cache in ("warm", "cold"):
        before, after = result[f"{cache}_loop"], result[f"{cache}_threads"]
        result[f"{cache}_stall_max_ratio"] = before["stall_max_ms"] / max(after["stall_max_ms"], 1e-3)
        result[f"{cache}_loop_ms_per_request_ratio"] = (
            before["loop_ms_per_request"] / max(after["loop_ms_per_request"], 1e-3))
    return result


def show(result: dict[str, Any]) -> None:
    print(f"{'cell':14} {'req/s':>8} {'stall p50':>10} {'p99':>8} {'max':>8} {'loop ms/req':>12}",
          file=sys.stderr)
    for name, c in result.items():
        if isinstance(c, dict):
            print(f"{name:14} {c['requests_per_s']:8.1f} {c['stall_p50_ms']:10.2f} "
                  f"{c['stall_p99_ms']:8.2f} {c['stall_max_ms']:8.2f} "
                  f"{c['loop_ms_per_request']:12.3f}", file=sys.stderr)
    for cache in ("warm", "cold"):
        print(f"{cache}: worst stall {result[f'{cache}_stall_max_ratio']:.1f}x lower, loop time "
              f"per request {result[f'{cache}_loop_ms_per_request_ratio']:.1f}x lower off the "
              f"loop", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s cells (< 15 s in all)")
    parser.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    parser.add_argument("--seconds", type=float, help="seconds per cell (default 3, quick 1)")
    parser.add_argument("--peers", type=int, default=4, help="concurrent requesters (default 4)")
    parser.add_argument("--dir", help="where to create the store (default: a temp dir)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.0 if args.quick else 3.0)
    root = Path(tempfile.mkdtemp(prefix="bench-serving-", dir=args.dir))
    load_before = os.getloadavg()[0]
    try:
        result = uvloop.run(run(root, seconds, args.peers))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result.update(seconds=seconds, peers=args.peers, loadavg_before=load_before,
                  loadavg_after=os.getloadavg()[0])
    show(result)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
