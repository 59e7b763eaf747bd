"""A stranger's connection and handshake floods, from 127.0.0.1.

Used by ``tests/net/test_admission.py`` and ``bench/connection_flood.py``. Real sockets
only: a :class:`SilentFlood` opens TCP connections that never send a byte; a
:class:`HandshakeFlood` opens connections that each send one handshake message 1 (a
recorded one: a replay; random bytes behind a valid preamble: garbage) and wait to be
closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import os
import resource
import socket
from collections.abc import Awaitable, Callable, Sequence

from narwhal.errors import NarwhalError
from narwhal.wire.noise import HandshakePayload, NoiseHandshake, Pattern

__all__ = ["HandshakeFlood", "SilentFlood", "SlowLoris", "garbage_message1", "raise_fd_limit",
           "recorded_message1", "rss_bytes"]

#: Preamble (8) + length (2): what a garbage message 1 keeps, so the responder reads it
#: as a message 1 and has to decide about it.
_FRAMING = 10


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft limit on open files to ``needed`` (at most the hard
    limit); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of ``pid`` (default: this process), from /proc."""
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def recorded_message1(pattern: Pattern, server_public: bytes, network_id: bytes,
                      local_static: bytes | None = None,
                      payload: HandshakePayload | None = None) -> bytes:
    """Preamble + message 1 of a real handshake toward ``server_public``, as a network
    attacker would record it (IK needs the initiator's ``local_static``)."""
    hs = NoiseHandshake.initiator(pattern=pattern, network_id=network_id,
                                  remote_static=server_public, local_static=local_static)
    hs.initiate(payload or HandshakePayload("client"))
    return hs.data_to_send()


def garbage_message1(template: bytes) -> Callable[[], bytes]:
    """A fresh random message 1 (a new ephemeral key each time) behind ``template``'s
    preamble and length: passes every check that needs no Diffie-Hellman."""
    return lambda: template[:_FRAMING] + os.urandom(len(template) - _FRAMING)


def _bound_socket(source: str | None) -> socket.socket:
    """A non-blocking TCP socket, bound to the local address ``source`` if given (any
    address of 127.0.0.0/8 is this host's: one process can be many sources)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if source is not None:
        sock.bind((source, 0))
    return sock


class SilentFlood:
    """Opens TCP connections to ``port`` that never send a byte, as fast as the loop lets
    it, holding at most ``hold`` of them (the oldest is closed first), until ``total`` were
    opened or :meth:`stop`. ``sources``: local addresses the connections come from, in
    turn (default: the kernel's choice)."""

    def __init__(self, port: int, *, hold: int, total: int | None = None,
                 host: str = "127.0.0.1", sources: Sequence[str | None] = (None,)) -> None:
        self.address = (host, port)
        self.hold, self.total = hold, total
        self._sources = itertools.cycle(sources)
        self.opened = 0
        self.failed = 0
        self._socks: collections.deque[socket.socket] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Set once ``total`` connections were opened.
        self.done = asyncio.Event()

    def start(self) -> SilentFlood:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping and (self.total is None or self.opened < self.total):
            sock = _bound_socket(next(self._sources))
            try:
                await loop.sock_connect(sock, self.address)
            except OSError:
                sock.close()
                self.failed += 1
                await asyncio.sleep(0.01)
                continue
            self._socks.append(sock)
            self.opened += 1
            while len(self._socks) > self.hold:
                self._socks.popleft().close()
            if self.opened % 16 == 0:
                await asyncio.sleep(0)  # let the listener accept
        self.done.set()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._socks:
            self._socks.popleft().close()


class _SendAndWait(asyncio.Protocol):
    def __init__(self, data: bytes, flood: HandshakeFlood, closed: asyncio.Future[None]) -> None:
        self._data, self._flood, self._closed = data, flood, closed
        self._answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self._data)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self._answered:
            self._answered = True
            self._flood.answered += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)


def _same(protocol: asyncio.Protocol) -> asyncio.Protocol:
    return protocol


async def _connected(address: tuple[str, int], source: str | None) -> socket.socket:
    """A TCP socket connected to ``address`` from ``source`` (closed if that fails)."""
    sock = _bound_socket(source)
    try:
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


class HandshakeFlood:
    """``concurrency`` loops, each opening a connection to ``port`` (from ``source``, if
    given), sending ``make()`` (a message 1) and waiting until the responder closes it (at
    most ``linger`` s)."""

    def __init__(self, port: int, make: Callable[[], bytes], *, concurrency: int = 32,
                 linger: float = 2.0, host: str = "127.0.0.1", source: str | None = None) -> None:
        self.address = (host, port)
        self._source = source
        self._make = make
        self._concurrency = concurrency
        self._linger = linger
        self.sent = 0
        #: Connections the responder answered (message 2: it spent crypto on them).
        self.answered = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> HandshakeFlood:
        self._tasks = [asyncio.ensure_future(self._one()) for _ in range(self._concurrency)]
        return self

    async def _one(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:  # a flag: wait_for may swallow a cancellation (3.11)
            closed: asyncio.Future[None] = loop.create_future()
            protocol = _SendAndWait(self._make(), self, closed)
            try:
                transport, _ = await loop.create_connection(
                    functools.partial(_same, protocol), sock=await _connected(self.address, self._source))
            except OSError:
                await asyncio.sleep(0.01)
                continue
            self.sent += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._linger):
                    await closed
            transport.abort()

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class SlowLoris:
    """Holds ``count`` connections, each sending what ``open_one()`` gives one byte every
    ``interval`` seconds, and reopens each one the victim closes (counted in ``closed``).

    ``open_one()`` returns a connected transport (whatever handshake it did first) and the
    bytes to trickle: a handshake message 1 on a bare TCP connection (pre-handshake), or an
    encrypted frame on a completed Noise session (post-handshake). It may raise ``OSError``
    or a refusal: then that slot waits a moment and tries again (``refused``)."""

    def __init__(self, open_one: Callable[[], Awaitable[tuple[asyncio.WriteTransport, bytes]]],
                 *, count: int, interval: float = 0.5) -> None:
        self._open_one = open_one
        self._count, self._interval = count, interval
        self.opened = self.closed = self.refused = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> SlowLoris:
        self._tasks = [asyncio.ensure_future(self._one()) for _ in range(self._count)]
        return self

    async def _one(self) -> None:
        while True:
            try:
                transport, data = await self._open_one()
            except (OSError, TimeoutError, NarwhalError):
                self.refused += 1
                await asyncio.sleep(self._interval)
                continue
            self.opened += 1
            try:
                for i in itertools.cycle(range(len(data))):
                    if transport.is_closing():
                        break
                    transport.write(data[i:i + 1])
                    await asyncio.sleep(self._interval)
            finally:
                transport.abort()
            self.closed += 1

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
