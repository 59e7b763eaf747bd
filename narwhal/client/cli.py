"""The command line of the clients: ``python -m narwhal.client submit|subscribe``.

``submit`` streams transactions to one worker (``--worker``) or to every worker of every
authority (``--all-workers``), fresh ones at a steady ``--rate`` or the lines of a file or
stdin, through :func:`~narwhal.client.transactions.submit_load`, and can write its counters
to a status file. ``subscribe`` prints one primary's ordered output, one line per consensus
index, through an :class:`~narwhal.client.output.OutputSubscriber`, and says on stderr when
nothing arrived for ``--stall-warning`` seconds (:class:`StallReporter`). Authorities are named
by index (in key order) or by a unique prefix of their key (:func:`resolve_authority`,
:func:`resolve_workers`); bad input exits 2 with ``error: ...``, a permanent refusal 1.
Index ``N`` is ``committee.authorities_sorted()[N]``, which is also ``node-N`` of a testnet
(``create_local`` writes ``keys/node-N.json`` in key order), so ``--node 1`` follows the
node the testnet table calls ``node-1``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import attrs

from narwhal.client.output import OutputItem, OutputPruned, OutputSubscriber
from narwhal.client.transactions import (
    MIN_TRANSACTION_SIZE,
    ClientStats,
    TransactionClient,
    line_source,
    submit_load,
)
from narwhal.config import Committee, ConfigError, format_address
from narwhal.errors import NarwhalError
from narwhal.wire.frames import DEFAULT_MAX_FRAME_SIZE

__all__ = ["StallReporter", "build_parser", "follow_output", "main", "output_line",
           "resolve_authority", "resolve_workers", "subscribe_main"]

#: Hex digits of an authority key that ``--worker`` needs (shorter numbers are indices).
MIN_KEY_PREFIX = 8
#: How ``--worker``/``--node`` name an authority (their help text).
AUTHORITY_HELP = ("authority index N: its position in key order, which is the testnet's "
                  f"node-N (keys/node-N.json); or at least {MIN_KEY_PREFIX} hex digits of "
                  "its key")
#: Default of ``subscribe --stall-warning``: seconds without output before saying so.
STALL_WARNING = 10.0


def resolve_workers(committee: Committee, spec: str) -> list[tuple[bytes, int]]:
    """``"INDEX[:WORKER]"`` or ``"HEXKEY[:WORKER]"`` -> ``[(authority, worker_id)]``; a
    unique prefix of at least :data:`MIN_KEY_PREFIX` hex digits of an authority key is
    enough. ``"all"`` -> every worker of every authority."""
    names = committee.authorities_sorted()
    if spec == "all":
        return [(name, i) for name in names for i in committee.worker_ids]
    who, _, worker = spec.partition(":")
    try:
        worker_id = int(worker) if worker else 0
    except ValueError:
        raise ConfigError(f"--worker {spec!r}: worker id {worker!r} is not a number") from None
    name = resolve_authority(committee, who, f"--worker {spec!r}")
    if worker_id not in committee.worker_ids:
        raise ConfigError(f"--worker {spec!r}: worker id {worker_id} is not in "
                          f"0..{len(committee.worker_ids) - 1}")
    return [(name, worker_id)]


def resolve_authority(committee: Committee, who: str, option: str = "--node") -> bytes:
    """An authority index (in key order) or a unique hex prefix of at least
    :data:`MIN_KEY_PREFIX` digits of its key -> its name; ``option`` names it in errors."""
    names = committee.authorities_sorted()
    if who.isdigit() and len(who) < MIN_KEY_PREFIX:
        if int(who) >= len(names):
            raise ConfigError(f"{option}: authority index {who} is out of range "
                              f"(the committee has {len(names)})")
        return names[int(who)]
    if len(who) < MIN_KEY_PREFIX:
        raise ConfigError(f"{option}: give an authority index or at least "
                          f"{MIN_KEY_PREFIX} hex digits of its key")
    matches = [n for n in names if n.hex().startswith(who.lower())]
    if len(matches) != 1:
        raise ConfigError(f"{option}: {len(matches)} authorities match {who!r}")
    return matches[0]


def build_parser() -> argparse.ArgumentParser:
    from narwhal.node.arguments import add_logging, non_negative_float, positive_float, positive_int

    parser = argparse.ArgumentParser(prog="python -m narwhal.client",
                                     description="narwhal-py client: submit transactions, "
                                                 "follow the ordered output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    submit = sub.add_parser(
        "submit", help="stream transactions to workers",
        description="Submit transactions to one worker or to all of them, at a steady rate "
                    "(fresh unique transactions) or read from a file or stdin (one per line).")
    submit.add_argument("--committee", type=Path, required=True, help="committee.json")
    target = submit.add_mutually_exclusive_group(required=True)
    target.add_argument("--worker", metavar="AUTHORITY[:WORKER_ID]",
                        help=f"{AUTHORITY_HELP}; then :WORKER_ID (default 0)")
    target.add_argument("--all-workers", action="store_true",
                        help="spread the load over every worker of every authority")
    submit.add_argument("--rate", type=non_negative_float, default=None,
                        help="transactions per second in all, 0 for as fast as the worker "
                             "takes them (default 1000 for generated transactions; unlimited "
                             "for --from-file/--stdin)")
    submit.add_argument("--tx-size", type=positive_int, default=512,
                        help=f"bytes per generated transaction (>= {MIN_TRANSACTION_SIZE}, "
                             "default 512)")
    submit.add_argument("--duration", type=positive_float, default=None,
                        help="stop after this many seconds (default: until Ctrl-C or EOF)")
    source = submit.add_mutually_exclusive_group()
    source.add_argument("--from-file", type=Path, help="send the lines of this file")
    source.add_argument("--stdin", action="store_true", help="send the lines of stdin")
    submit.add_argument("--status-file", type=Path, default=None,
                        help="write the counters to this JSON file every second")
    add_logging(submit)
    follow = sub.add_parser(
        "subscribe", help="follow a primary's ordered output",
        description="Print the ordered output of one primary, one line per consensus index "
                    "(index, round, author, certificate, transactions, bytes), from --from on; "
                    "reconnects and resumes exactly after a disconnect or a node restart.")
    follow.add_argument("--committee", type=Path, required=True, help="committee.json")
    follow.add_argument("--node", required=True, metavar="AUTHORITY", help=AUTHORITY_HELP)
    follow.add_argument("--from", dest="from_index", type=int, default=1, metavar="INDEX",
                        help="first consensus index (1 is the first commit; 0 means 1)")
    follow.add_argument("--count", type=positive_int, default=None,
                        help="stop after this many indexes (default: follow for ever)")
    follow.add_argument("--json", action="store_true",
                        help="one JSON object per line (transactions as a count and bytes)")
    follow.add_argument("--max-frame-size", type=positive_int, default=DEFAULT_MAX_FRAME_SIZE,
                        metavar="BYTES",
                        help="largest frame we accept (1024 .. 2^32-1, default "
                             f"{DEFAULT_MAX_FRAME_SIZE}); a part of the output larger than "
                             "that ends the subscription with a permanent TOO_LARGE (exit 1)")
    follow.add_argument("--stall-warning", type=non_negative_float, default=STALL_WARNING,
                        metavar="SECONDS",
                        help="when nothing arrived for SECONDS, say so on stderr (the index "
                             "awaited, the last connection error), again every SECONDS while "
                             f"it lasts and once when output resumes; 0: never (default "
                             f"{STALL_WARNING:g})")
    add_logging(follow)
    return parser


def output_line(item: OutputItem, as_json: bool) -> str:
    """One line of ``subscribe``'s output for an index."""
    index, round_, author, certificate, transactions = item
    size = sum(map(len, transactions))
    if as_json:
        return json.dumps({"index": index, "round": round_, "author": author.hex(),
                           "certificate": certificate.hex(), "transactions": len(transactions),
                           "bytes": size})
    return (f"{index} round={round_} author={author.hex()[:16]} "
            f"certificate={certificate.hex()[:16]} transactions={len(transactions)} bytes={size}")


def _seconds(duration: float) -> str:
    return f"{duration:.0f}" if duration >= 10 else f"{duration:.1f}"


class StallReporter:
    """Says on stderr when ``subscribe`` has had nothing to print for ``period`` seconds.

    The subscriber redials and resubscribes quietly for ever, so a node that is down,
    unreachable or not committing would look like a quiet one: a silent terminal. While no
    index arrives, one line every ``period`` (the index awaited, from which node, the
    subscriber's reconnects and last error), and one line when output resumes. Only reads
    the subscriber's public ``reconnects``, ``last_error`` and ``address``."""

    def __init__(self, subscriber: OutputSubscriber, period: float, next_index: int,
                 node: str) -> None:
        self.subscriber, self.period, self.node = subscriber, period, node
        self.next_index = next_index
        self.last = time.monotonic()  # the last arrival (or the start)
        self.warned_at: float | None = None  # the last warning of the current stall

    def arrived(self, index: int) -> None:
        """Index ``index`` arrived: a stall, if one was reported, is over."""
        now = time.monotonic()
        if self.warned_at is not None:
            self._say(f"receiving again: index {index} after {_seconds(now - self.last)} s "
                      "without output")
        self.last, self.warned_at, self.next_index = now, None, index + 1

    async def watch(self) -> None:
        """Warn at most once per ``period`` while nothing arrives (run as a task)."""
        while True:
            since = self.last if self.warned_at is None else self.warned_at
            due = since + self.period - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
                continue
            self.warned_at = time.monotonic()
            sub = self.subscriber
            self._say(f"nothing received for {_seconds(self.warned_at - self.last)} s "
                      f"(waiting for index {self.next_index} from {self.node} at "
                      f"{format_address(*sub.address)}; reconnects {sub.reconnects}; "
                      f"last error: {sub.last_error or 'none'})")

    @staticmethod
    def _say(message: str) -> None:
        print(f"subscribe: {message}", file=sys.stderr, flush=True)


async def follow_output(subscriber: OutputSubscriber, from_index: int, count: int | None,
                        as_json: bool, *, stall_warning: float = 0.0,
                        node: str | None = None) -> int:
    """Print ``count`` indexes (None: for ever) from ``from_index``; return how many.
    ``stall_warning`` > 0 reports on stderr when nothing arrived for that many seconds
    (:class:`StallReporter`; ``node`` names the authority there, default its short key)."""
    printed = 0
    stall = StallReporter(subscriber, stall_warning, max(1, from_index),
                          node or subscriber.authority.hex()[:8])
    watch = asyncio.ensure_future(stall.watch()) if stall_warning > 0 else None
    stream = subscriber.subscribe(from_index)
    try:
        async for item in stream:
            stall.arrived(item[0])
            print(output_line(item, as_json), flush=True)
            printed += 1
            if count is not None and printed >= count:
                break
    finally:
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        await stream.aclose()  # type: ignore[attr-defined]
    return printed


def main(argv: list[str] | None = None) -> int:
    from narwhal.node.arguments import fail, run_until_signal, setup_logging, until_stopped
    from narwhal.node.status import write_status

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_file)
    if args.command == "subscribe":
        return subscribe_main(args)
    if args.tx_size < MIN_TRANSACTION_SIZE:
        return fail(f"--tx-size must be >= {MIN_TRANSACTION_SIZE}")
    try:
        committee = Committee.load(args.committee)
        targets = resolve_workers(committee, "all" if args.all_workers else args.worker)
        stream = (open(args.from_file, "rb") if args.from_file  # noqa: SIM115
                  else sys.stdin.buffer if args.stdin else None)
    except (ConfigError, OSError) as exc:
        return fail(str(exc))
    rate = args.rate if args.rate is not None else (None if stream else 1000.0)

    client_ids: list[int] = []  # in the status file: a checker finds their transactions

    def report(stats: ClientStats) -> None:
        if args.status_file is not None:
            write_status(args.status_file, {"pid": os.getpid(), "client_ids": client_ids,
                                            **attrs.asdict(stats)})

    async def run(stop: asyncio.Event) -> int:
        clients = [TransactionClient(committee, name, wid) for name, wid in targets]
        client_ids.extend(client.client_id for client in clients)
        started = time.monotonic()
        stats = ClientStats()
        try:
            await until_stopped(stop, submit_load(
                clients, rate, args.duration, tx_size=args.tx_size, report=report,
                source=line_source(stream) if stream else None))
        finally:  # the last counters are written even when a permanent error ends the load
            await asyncio.gather(*(c.close() for c in clients))
            for client in clients:
                stats.add(client.stats)
            report(stats)
        elapsed = time.monotonic() - started
        print(f"accepted {stats.accepted} of {stats.sent} transactions in {elapsed:.1f}s "
              f"({stats.accepted / elapsed:.0f} tx/s); resent frames {stats.resent}, "
              f"reconnects {stats.reconnects}, lagged {stats.lagged}, "
              f"abandoned frames {stats.abandoned}")
        return 0

    try:
        return run_until_signal(run)
    except NarwhalError as exc:
        return fail(str(exc), code=1)


def subscribe_main(args: argparse.Namespace) -> int:
    from narwhal.node.arguments import fail, run_until_signal, until_stopped

    if args.from_index < 0:
        return fail("--from must be >= 0")
    if not 1024 <= args.max_frame_size < 2**32:
        return fail("--max-frame-size must be in 1024 .. 2^32-1")
    try:
        committee = Committee.load(args.committee)
        authority = resolve_authority(committee, args.node)
        subscriber = OutputSubscriber(committee, authority, max_frame_size=args.max_frame_size)
    except (ConfigError, OSError) as exc:
        return fail(str(exc))
    node = f"node {committee.authorities_sorted().index(authority)} ({authority.hex()[:8]})"

    async def run(stop: asyncio.Event) -> int:
        await until_stopped(stop, follow_output(subscriber, args.from_index, args.count,
                                                args.json, stall_warning=args.stall_warning,
                                                node=node))
        return 0

    try:
        return run_until_signal(run)
    except OutputPruned as exc:
        return fail(f"{node} no longer keeps index {exc.index} (its output older than "
                    f"retain_seconds was deleted); the earliest it has is {exc.earliest}: "
                    f"run again with --from {exc.earliest}", code=1)
    except NarwhalError as exc:
        return fail(str(exc), code=1)
