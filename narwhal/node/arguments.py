"""Command-line plumbing shared by ``narwhal`` (the node) and ``narwhal.client``:
argument types, logging options, error exits, and running a coroutine on uvloop until
SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import logging
import logging.handlers
import queue
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import uvloop

from narwhal.node.status import LastError

__all__ = ["add_logging", "fail", "non_negative_float", "non_negative_int", "positive_float",
           "positive_int", "run_until_signal", "setup_logging", "until_stopped"]

T = TypeVar("T")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _number(convert: Callable[[str], T], test: Callable[[T], bool], what: str) -> Callable[[str], T]:
    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


positive_int = _number(int, lambda v: v >= 1, ">= 1")
non_negative_int = _number(int, lambda v: v >= 0, ">= 0")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "> 0")
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), ">= 0")


def add_logging(parser: argparse.ArgumentParser, default: str = "INFO") -> None:
    parser.add_argument("--log-level", default=default, type=str.upper, choices=LOG_LEVELS,
                        help=f"default {default}")
    parser.add_argument("--log-file", type=Path, default=None,
                        help="append the log to this file (default: stderr)")


_listener: logging.handlers.QueueListener | None = None


def _stop_listener() -> None:
    if _listener is not None:
        _listener.stop()


atexit.register(_stop_listener)


def setup_logging(level: str, file: Path | None = None) -> LastError:
    """Log to ``file`` (or stderr) at ``level``; return a handler remembering the last
    warning or error.

    A log *file* is written by a listener thread, its records formatted where they are
    logged (so their time is the event's): a write to a file can block on the filesystem's
    journal for hundreds of ms while the disk is busy (seen here: every node's event loop
    stalled at the same instant, in a log write), and the event loop must not wait on it.
    The listener is stopped, and what it holds written, when the interpreter exits.
    Logging to stderr stays synchronous (a terminal or a pipe, and tests capture it)."""
    global _listener
    if _listener is not None:  # set up again (tests): the old listener writes what it has
        _listener.stop()
        _listener = None
    handler: logging.Handler
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        target = logging.FileHandler(file, encoding="utf-8")
        target.setFormatter(logging.Formatter(LOG_FORMAT))
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        _listener = logging.handlers.QueueListener(records, target)
        _listener.start()
        handler = logging.handlers.QueueHandler(records)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    last_error = LastError()
    root = logging.getLogger()
    root.handlers[:] = [handler, last_error]
    root.setLevel(level)
    return last_error


def fail(message: str, code: int = 2) -> int:
    """Print ``error: message`` to stderr and return ``code`` (2: bad input)."""
    print(f"error: {message}", file=sys.stderr)
    return code


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``main(stop)`` on uvloop. The first SIGTERM or SIGINT sets ``stop`` (``main``
    should then wind down and return); a second one cancels ``main`` (exit code 130)."""
    async def runner() -> int:
        stop = asyncio.Event()
        task = asyncio.current_task()
        assert task is not None

        def on_signal() -> None:
            if stop.is_set():
                task.cancel()
            stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await main(stop)
        except asyncio.CancelledError:
            return 130

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner_:
        return runner_.run(runner())


async def until_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """Await ``work`` until it finishes (its result) or ``stop`` is set (it is cancelled:
    None)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stopper):
            t.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
    return task.result() if task.done() and not task.cancelled() else None
