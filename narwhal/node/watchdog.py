"""Event-loop stall detector: say *where* the loop thread was stuck, while it is stuck.

Why: a node runs all its roles on one event loop, so anything that blocks it (a slow
disk read, a long computation, a lock) delays every peer's messages at once, and shows
up only as latency somewhere else. The loop bumps a heartbeat every ``beat`` seconds; a
watchdog thread checks it, and when the heartbeat is older than ``threshold`` it logs a
warning with the loop thread's current stack (``sys._current_frames``), once per stall.
Counters: ``stalls`` and the worst lag seen (``max_lag``), for status and metrics.

It also times the cyclic garbage collector (``gc.callbacks``), which runs on the loop
thread in the middle of whatever allocated last: ``gc_full_collections`` and the longest
pause of any collection (``gc_max_pause``). A full collection scans every tracked object:
tens of ms with a node's heap. Seen over 5 minutes at 50,000 tx/s: ~3 full collections
per node, the longest pause 75-80 ms; freezing the start-up objects out of the collector's
reach (``gc.freeze``) made no difference, so the collector is left as it is.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
import traceback

__all__ = ["LoopWatchdog"]

log = logging.getLogger(__name__)


class LoopWatchdog:
    def __init__(self, threshold: float = 0.25, beat: float = 0.05) -> None:
        self.threshold = threshold
        self.beat = beat
        self.stalls = 0
        self.max_lag = 0.0
        self._last = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self.gc_full_collections = 0
        self.gc_max_pause = 0.0
        self._gc_started = 0.0

    def start(self) -> None:
        """Start beating on the running loop and watching from a daemon thread."""
        self._loop_thread = threading.get_ident()
        self._last = time.monotonic()
        self._beat()
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._thread.start()
        gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def status(self) -> dict[str, float | int]:
        return {"loop_stalls": self.stalls, "loop_max_lag_ms": round(1000 * self.max_lag, 1),
                "gc_full_collections": self.gc_full_collections,
                "gc_max_pause_ms": round(1000 * self.gc_max_pause, 1)}

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        self.gc_max_pause = max(self.gc_max_pause, time.perf_counter() - self._gc_started)
        if info["generation"] == 2:
            self.gc_full_collections += 1

    def _beat(self) -> None:
        now = time.monotonic()
        self.max_lag = max(self.max_lag, now - self._last - self.beat)
        self._last = now
        self._handle = asyncio.get_running_loop().call_later(self.beat, self._beat)

    def _watch(self) -> None:
        reported = 0.0  # the heartbeat of the stall already reported
        while not self._stop.wait(self.threshold / 2):
            last = self._last
            lag = time.monotonic() - last
            if lag < self.threshold or last == reported:
                continue
            reported = last
            self.stalls += 1
            frame = sys._current_frames().get(self._loop_thread)
            where = "".join(traceback.format_stack(frame, limit=12)) if frame else "(no frame)\n"
            log.warning("event loop stalled for %.0f ms so far, at:\n%s", 1000 * lag, where.rstrip())
