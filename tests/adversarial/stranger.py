"""A stranger: someone who can reach a validator's ports and holds no committee key.

:class:`Stranger` is a separate OS process (its own uvloop) that runs one *plan* at a time
against one validator (the victim) of a local network, on command:
``begin(name)`` starts plan ``name``, ``end()`` stops it and answers what it did. Why a
process of its own: the floods keep a core busy, and run on the test's event loop they
would slow down the client load and the output subscribers that *measure* the honest nodes
(:class:`~tests.adversarial.cluster.AdversarialCluster`), so the measure would show the
attacker's cost as the victim's. The process is started once and serves many plans, so
its start-up (imports, keys) is not part of any attack phase.

The victim's four listeners: the primary's and the worker's validator ports (Noise IK,
committee keys only), the worker's transactions port and the primary's output port (Noise
NK, anonymous clients). Every connection comes from an address of 127.0.0.0/8 other than
127.0.0.1 (which the honest nodes, the load, the subscribers and the test's real client
use), so "one source" in a plan means one address the honest side does not share:

- ``silent``: :data:`SILENT_CONNECTIONS` TCP connections that never send a byte, over the
  four ports and :data:`SILENT_SOURCES`, reopened as the victim closes them;
- ``handshakes``: from :data:`HANDSHAKE_SOURCE` only, handshake message 1s on every port,
  each connection one: IK (validator ports) and NK (client ports), a recorded one
  replayed and fresh ones (a new ephemeral key each, a stranger's own static key for IK);
- ``connection_flood``: both at once (issue 12's figure);
- ``garbage``: random bytes instead of a handshake, random bytes behind a valid preamble
  and length (a garbage message 1), and random bytes after a completed NK handshake;
- ``slow_loris``: one byte every :data:`LORIS_INTERVAL` s, of a message 1 (pre-handshake,
  every port) and of an encrypted frame after a completed NK handshake (client ports);
- ``client_10x``: a :class:`~narwhal.client.TransactionClient` submitting to the victim's
  worker at ``rate`` bytes/s (the plan's argument);
- ``stalled_subscribers``: subscribers from one source that ask for the output from index
  1 and never read (one more than the per-address cap: the last is refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, Self

import uvloop

from narwhal import messages
from narwhal.client import TransactionClient
from narwhal.config import Committee, parse_address
from narwhal.errors import NarwhalError
from narwhal.net.clients import connect_client
from narwhal.net.connection import Connection
from narwhal.net.rpc import channel_of
from narwhal.wire.frames import FrameKind, encode_frame
from narwhal.wire.noise import HandshakePayload, Pattern
from tests.net.cluster import keypair
from tests.net.floods import (
    HandshakeFlood,
    SilentFlood,
    SlowLoris,
    garbage_message1,
    raise_fd_limit,
    recorded_message1,
)

__all__ = ["HANDSHAKE_SOURCE", "SILENT_CONNECTIONS", "SILENT_SOURCES", "Stranger"]

#: Silent connections the stranger holds open at once (issue 12's figure).
SILENT_CONNECTIONS = 5_000
#: ... from these 40 addresses (125 each), so they exceed the listeners' overall caps, not
#: only the per-source ones.
SILENT_SOURCES = tuple(f"127.0.0.{i}" for i in range(10, 50))
#: The one source of the handshake flood.
HANDSHAKE_SOURCE = "127.0.0.2"
GARBAGE_SOURCE = "127.0.0.3"
LORIS_SOURCE = "127.0.0.4"
SUBSCRIBER_SOURCE = "127.0.0.5"
#: Connections of each handshake flood (per port and kind) waiting for the victim at once.
HANDSHAKE_CONCURRENCY = 8
#: Slow-loris connections per port, and the seconds between two of their bytes.
LORIS_PER_PORT = 150
LORIS_INTERVAL = 0.5
#: Authenticated slow-loris clients per client port: more than a client port admits in all
#: (``DEFAULT_MAX_CLIENTS``, 256) if nothing limited one source.
LORIS_CLIENTS = 300


class Running(Protocol):
    """A flood in progress: its counters are its public int attributes."""

    async def stop(self) -> None: ...


class Target:
    """The victim's listeners and keys, as a stranger learns them from the committee."""

    def __init__(self, committee: Committee, victim: bytes) -> None:
        authority = committee.authorities[victim]
        primary, worker = authority.primary, authority.workers[0]
        self.committee, self.victim = committee, victim
        self.network_id = committee.network_id()
        self.primary_key, self.worker_key = primary.network_key, worker.network_key
        #: (port, the key its handshakes are with), validator ports (IK) ...
        self.validator_ports = [(parse_address(primary.address)[1], primary.network_key),
                                (parse_address(worker.worker_address)[1], worker.network_key)]
        #: ... and client ports (NK).
        self.client_ports = [(parse_address(worker.transactions_address)[1], worker.network_key),
                             (parse_address(primary.client_address)[1], primary.network_key)]
        self.ports = [port for port, _ in self.validator_ports + self.client_ports]
        self.static_private, _ = keypair()  # the stranger's own: in no committee

    def message1(self, pattern: Pattern, server_key: bytes) -> bytes:
        """A fresh handshake message 1 (preamble included) toward ``server_key``."""
        if pattern is Pattern.IK:
            return recorded_message1(pattern, server_key, self.network_id,
                                     local_static=self.static_private,
                                     payload=HandshakePayload("primary", authority=os.urandom(32)))
        return recorded_message1(pattern, server_key, self.network_id)

    def first_messages(self) -> list[tuple[int, Pattern, bytes]]:
        """(port, pattern, server key) of each of the four listeners."""
        return ([(port, Pattern.IK, key) for port, key in self.validator_ports]
                + [(port, Pattern.NK, key) for port, key in self.client_ports])

    async def client(self, port: int, server_key: bytes, source: str) -> Connection:
        """A completed NK session with a client port, from ``source``."""
        return await connect_client("127.0.0.1", port, server_static=server_key,
                                    network_id=self.network_id, local_address=(source, 0),
                                    timeout=5.0, name="stranger")


async def _raw(port: int, source: str) -> asyncio.WriteTransport:
    """A bare TCP connection to ``port`` from ``source`` (what it receives is ignored)."""
    transport, _ = await asyncio.get_running_loop().create_connection(
        asyncio.Protocol, "127.0.0.1", port, local_addr=(source, 0))
    return transport  # type: ignore[return-value]


def _sealed_frame(conn: Connection) -> bytes:
    """An encrypted PING frame of ``conn``'s session, to be trickled (never sent whole)."""
    assert conn._cipher is not None
    return b"".join(conn._cipher.encrypt_parts([encode_frame(FrameKind.PING, 1, 0, b"")]))


# -- plans -------------------------------------------------------------------------------------


def silent(target: Target, **_: Any) -> list[Running]:
    per_port = SILENT_CONNECTIONS // len(target.ports)
    return [SilentFlood(port, hold=per_port, sources=SILENT_SOURCES).start() for port in target.ports]


def handshakes(target: Target, **_: Any) -> list[Running]:
    floods: list[Running] = []
    for port, pattern, key in target.first_messages():
        recorded = target.message1(pattern, key)
        for make in ((lambda m=recorded: m), (lambda p=pattern, k=key: target.message1(p, k))):
            floods.append(HandshakeFlood(port, make, concurrency=HANDSHAKE_CONCURRENCY,
                                         source=HANDSHAKE_SOURCE).start())
    return floods


def connection_flood(target: Target, **_: Any) -> list[Running]:
    return silent(target) + handshakes(target)


class PostHandshakeGarbage:
    """Completes an NK handshake with a client port, then sends random bytes; again."""

    def __init__(self, target: Target, port: int, key: bytes, source: str, concurrency: int) -> None:
        self.sessions = self.refused = 0
        self._tasks = [asyncio.ensure_future(self._one(target, port, key, source))
                       for _ in range(concurrency)]

    async def _one(self, target: Target, port: int, key: bytes, source: str) -> None:
        while True:
            try:
                conn = await target.client(port, key, source)
            except (OSError, TimeoutError, NarwhalError):
                self.refused += 1
                await asyncio.sleep(0.05)
                continue
            self.sessions += 1
            assert conn._transport is not None
            conn._transport.write(os.urandom(1_000))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.closed), 2.0)
            conn.abort()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def garbage(target: Target, **_: Any) -> list[Running]:
    floods: list[Running] = []
    for port, pattern, key in target.first_messages():
        template = target.message1(pattern, key)
        size = len(template)
        floods.append(HandshakeFlood(port, lambda n=size: os.urandom(n), concurrency=4,
                                     source=GARBAGE_SOURCE).start())
        floods.append(HandshakeFlood(port, garbage_message1(template), concurrency=4,
                                     source=GARBAGE_SOURCE).start())
    for port, key in target.client_ports:
        floods.append(PostHandshakeGarbage(target, port, key, GARBAGE_SOURCE, concurrency=4))
    return floods


def slow_loris(target: Target, **_: Any) -> list[Running]:
    floods: list[Running] = []
    for port, pattern, key in target.first_messages():
        async def pre(port: int = port, pattern: Pattern = pattern,
                      key: bytes = key) -> tuple[asyncio.WriteTransport, bytes]:
            return await _raw(port, LORIS_SOURCE), target.message1(pattern, key)
        floods.append(SlowLoris(pre, count=LORIS_PER_PORT, interval=LORIS_INTERVAL).start())
    for port, key in target.client_ports:
        async def post(port: int = port, key: bytes = key) -> tuple[asyncio.WriteTransport, bytes]:
            conn = await target.client(port, key, LORIS_SOURCE)
            assert conn._transport is not None
            conn._transport.pause_reading()  # never answer the keepalive: it would interleave
            return conn._transport, _sealed_frame(conn)  # type: ignore[return-value]
        floods.append(SlowLoris(post, count=LORIS_CLIENTS, interval=LORIS_INTERVAL).start())
    return floods


class Flooder:
    """One client submitting ``rate`` bytes/s of 1 KB transactions (late ones skipped)."""

    TX_SIZE = 1_000

    def __init__(self, target: Target, rate: float) -> None:
        self.client = TransactionClient(target.committee, target.victim, 0)
        self._task = asyncio.ensure_future(self.client.submit_at_rate(rate / self.TX_SIZE, self.TX_SIZE))
        self.sent = self.accepted = self.lagged = 0

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        stats = self.client.stats
        self.sent, self.accepted, self.lagged = stats.sent, stats.accepted, stats.lagged
        await self.client.close()


def client_10x(target: Target, *, rate: float, **_: Any) -> list[Running]:
    return [Flooder(target, rate)]


class StalledSubscribers:
    """``count`` subscribers from one source that ask for the whole output and never read."""

    def __init__(self, target: Target, count: int) -> None:
        port, key = target.client_ports[1]
        self.accepted = self.refused = 0
        self._conns: list[Connection] = []
        self._task = asyncio.ensure_future(self._open(target, port, key, count))

    async def _open(self, target: Target, port: int, key: bytes, count: int) -> None:
        for _ in range(count):
            conn = await target.client(port, key, SUBSCRIBER_SOURCE)
            self._conns.append(conn)
            try:
                await channel_of(conn).request(messages.Subscribe(1), timeout=5.0)
            except (OSError, TimeoutError, NarwhalError):
                self.refused += 1
                continue
            assert conn._transport is not None
            conn._transport.pause_reading()
            self.accepted += 1

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        for conn in self._conns:
            conn.abort()


def stalled_subscribers(target: Target, *, count: int, **_: Any) -> list[Running]:
    return [StalledSubscribers(target, count)]


PLANS: dict[str, Callable[..., list[Running]]] = {plan.__name__: plan for plan in [
    silent, handshakes, connection_flood, garbage, slow_loris, client_10x, stalled_subscribers]}


def _counters(flood: Running) -> dict[str, int]:
    return {k: v for k, v in vars(flood).items() if type(v) is int and not k.startswith("_")}


def _report(floods: list[Running]) -> dict[str, int]:
    """The plan's counters, summed over its floods of each kind."""
    out: dict[str, int] = {}
    for flood in floods:
        for key, value in _counters(flood).items():
            name = f"{type(flood).__name__}.{key}"
            out[name] = out.get(name, 0) + value
    return out


# -- the process -------------------------------------------------------------------------------


async def _serve(committee_file: str, victim_hex: str, pipe: Any) -> None:
    limit = raise_fd_limit(SILENT_CONNECTIONS + 2 * LORIS_CLIENTS + 2_048)
    target = Target(Committee.load(committee_file), bytes.fromhex(victim_hex))
    loop = asyncio.get_running_loop()
    pipe.send({"fd_limit": limit})
    floods: list[Running] = []
    while True:
        command, arguments = await loop.run_in_executor(None, pipe.recv)
        if command == "begin":
            name, options = arguments
            floods = PLANS[name](target, **options)
            pipe.send("begun")
        elif command == "end":
            for flood in floods:
                await flood.stop()
            pipe.send(_report(floods))
            floods = []
        else:
            return


#: The stranger's niceness: it takes the cores the honest processes leave idle, so what is
#: measured is the victim's cost of the attack, not the test box's shortage of cores (a
#: real attacker brings its own machines).
NICENESS = 10


def _main(committee_file: str, victim_hex: str, pipe: Any) -> None:
    os.nice(NICENESS)
    uvloop.run(_serve(committee_file, victim_hex, pipe))


class Stranger:
    """The stranger's process (see the module docstring); blocking calls, one plan at a time.
    Use as a context manager."""

    def __init__(self, committee_file: Path, victim: bytes) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, theirs = context.Pipe()
        self._process = context.Process(target=_main, name="stranger", daemon=True,
                                        args=(str(committee_file), victim.hex(), theirs))
        self._process.start()
        hello = self._call(None, timeout=60)
        #: The process's soft limit on open files (it holds SILENT_CONNECTIONS sockets).
        self.fd_limit: int = hello["fd_limit"]

    def _call(self, command: tuple[str, Any] | None, timeout: float = 30) -> Any:
        if command is not None:
            self._pipe.send(command)
        if not self._pipe.poll(timeout):
            raise TimeoutError(f"the stranger did not answer {command} within {timeout} s")
        return self._pipe.recv()

    def begin(self, plan: str, **options: Any) -> None:
        self._call(("begin", (plan, options)))

    def end(self) -> dict[str, int]:
        """Stop the plan; what it did (counters of its floods, by kind)."""
        report: dict[str, int] = self._call(("end", None))
        return report

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._pipe.send(("quit", None))
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

