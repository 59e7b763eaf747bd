"""A link emulator: one asyncio TCP relay per (dialer, peer endpoint), with every
*directed* link between two validators shaped on its own.

Why relays: this machine has no ``tc``/netem and no network namespaces to give each
validator its own address, so the links are emulated in user space. A validator dials a
peer through its relay because of its node-local dial map (``narwhal run --dial-map``, see
:mod:`narwhal.node.dial_map`); the committee and the network id stay untouched.

Directed links over one TCP connection: two validators keep *one* connection (both dial,
the tie-break keeps one, ``wire_spec.md`` §1), carrying both directions. A relay knows who
dialed it, so the bytes from dialer ``a`` to peer ``b`` take link ``a->b`` and the answers
take link ``b->a``, whichever connection survives the tie-break.

What a link does to the bytes it carries (each directed link separately, see
:class:`LinkSpec`):

- **latency** one way, plus uniform **jitter** in ``[-jitter, +jitter]`` per chunk; the
  stream stays in order (a chunk never overtakes the one before it, as in TCP);
- **bandwidth**: chunks are serialized at that many bytes a second, shared by every
  connection of the link. Like a router's buffer, the link holds at most
  :data:`MAX_QUEUE_DELAY` of backlog: beyond it the relay stops reading, and the rest
  waits in the sender's socket (backpressure, as over a real slow link). When a link is
  reshaped, what waits in it is sent at the new pace from then on: a slow link made fast
  again drains at once (before, chunks kept the slow schedule computed when they were
  read, and a relay that had read 4 MiB ahead kept a node slow 20 s after the heal);
- **loss**: TCP is reliable, so a lost segment is not missing data but a *stall*: each
  1448-byte segment is lost with probability ``loss``, and a chunk holding a lost one is
  delivered one retransmission timeout (:data:`RTO`, Linux's 200 ms minimum, or twice the
  latency if larger) late, holding up everything behind it (head-of-line blocking, as TCP
  does). Dropping bytes would only break the Noise stream, which a real network never does;
- **cut** (partitions, symmetric or not): nothing crosses; the relay stops reading, so the
  sender's socket buffers fill and its writes block, as when no ACK comes back. Bytes in
  flight wait too. On heal everything flows again, nothing lost: what TCP does for an
  outage shorter than its retransmission give-up (minutes). The nodes' own keepalive and
  idle timeouts close and redial connections during a long cut, as they would on a real
  network;
- **blackhole**: bytes are read and thrown away (the sender sees no backpressure, the
  receiver silence). Such a stream has a hole, so on heal every connection that lost bytes
  is reset (both sides closed), as TCP eventually would; the nodes redial.

A stricter form of asymmetry than IP gives: with a cut ``b->a`` and an open ``a->b``, ``a``'s
bytes still reach ``b`` at the stream level (an IP-level one-way drop would also stop TCP's
ACKs and so, soon, both directions).

Every link counts bytes in, delivered and discarded, chunks, loss stalls, connections
opened and reset (:meth:`LinkEmulator.counters`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Self, TypeVar

import attrs

__all__ = ["RTO", "EmulatorThread", "LinkEmulator", "LinkSpec"]

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Bytes read at once from a socket: one chunk of the emulation.
CHUNK = 64 * 1024
#: TCP's maximum segment on Ethernet: the unit that ``loss`` applies to.
SEGMENT = 1448
#: A lost segment's retransmission delay (Linux's TCP_RTO_MIN).
RTO = 0.2
#: Bytes one direction of one connection holds in flight before the relay stops reading
#: (the window of a real link): bounds the relay's memory, and backpressure reaches the
#: sender as it would over TCP.
MAX_IN_FLIGHT = 4 * 1024 * 1024
#: Seconds of serialization a bandwidth-limited link queues before the relay stops reading.
MAX_QUEUE_DELAY = 0.5
#: A bandwidth-limited link reads chunks of at most this many seconds of its bandwidth
#: (one segment at least): a real link trickles bytes out, it does not hold 64 KiB back
#: for the 5 s a chunk that size takes at 100 kbit/s.
CHUNK_TIME = 0.05

Pair = tuple[int, int]


@attrs.frozen
class LinkSpec:
    """How one directed link behaves (see the module docstring)."""

    #: One-way delay in seconds.
    latency: float = 0.0
    #: Each chunk's delay is ``latency`` plus uniform noise in ``[-jitter, +jitter]``.
    jitter: float = 0.0
    #: Bytes per second; None: unlimited.
    bandwidth: float | None = None
    #: Probability that one 1448-byte segment is lost (costing a retransmission stall).
    loss: float = 0.0
    #: ``"up"``, ``"cut"`` (nothing crosses; held) or ``"blackhole"`` (bytes thrown away).
    state: str = attrs.field(default="up", validator=attrs.validators.in_(("up", "cut", "blackhole")))

    def __attrs_post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0 or not 0 <= self.loss < 1:
            raise ValueError(f"invalid link: {self}")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0, got {self.bandwidth}")


@attrs.define(eq=False)
class _Link:
    """One directed link: its spec, counters, and the connections whose bytes it carries."""

    spec: LinkSpec = LinkSpec()
    counters: collections.Counter[str] = attrs.field(factory=collections.Counter)
    up: asyncio.Event = attrs.field(factory=asyncio.Event)
    relays: set[_Relay] = attrs.field(factory=set)
    free_at: float = 0.0  # when the link has sent what it was given (bandwidth)

    def __attrs_post_init__(self) -> None:
        self.up.set()

    def chunk_size(self) -> int:
        bandwidth = self.spec.bandwidth
        return CHUNK if bandwidth is None else max(SEGMENT, min(CHUNK, int(bandwidth * CHUNK_TIME)))

    def backlog(self) -> float:
        """Seconds until the link has serialized what it was given (0 if unlimited)."""
        return max(0.0, self.free_at - time.monotonic()) if self.spec.bandwidth else 0.0

    def reshaped(self) -> None:
        """The spec changed: start again from now, and reschedule what waits."""
        self.free_at = time.monotonic()
        for relay in self.relays:
            for pipe in relay.pipes:
                if pipe.link is self:
                    pipe.reschedule()

    def delivery_time(self, size: int, rng: random.Random) -> float:
        """When a chunk of ``size`` bytes read now reaches the other end."""
        spec, now = self.spec, time.monotonic()
        start = max(now, self.free_at)
        sent = start + (size / spec.bandwidth if spec.bandwidth else 0.0)
        self.free_at = sent if spec.bandwidth else now
        delay = spec.latency + (rng.uniform(-spec.jitter, spec.jitter) if spec.jitter else 0.0)
        if spec.loss and rng.random() < 1 - (1 - spec.loss) ** math.ceil(size / SEGMENT):
            delay += max(RTO, 2 * spec.latency)
            self.counters["loss_stalls"] += 1
        return sent + max(0.0, delay)


class _Relay:
    """One relayed TCP connection: dialer -> relay -> the peer's real address."""

    def __init__(self, forward: _Link, backward: _Link) -> None:
        self.forward, self.backward = forward, backward
        self.writers: list[asyncio.StreamWriter] = []
        self.lost_bytes = False
        self.tasks: list[asyncio.Task[None]] = []
        self.pipes: list[_Pipe] = []

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  target: tuple[str, int]) -> None:
        self.writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            self.abort()  # the peer is down: the dialer sees its connection closed
            return
        self.writers.append(up_writer)
        for link in (self.forward, self.backward):
            link.relays.add(self)
            link.counters["connections"] += 1
        self.pipes = [_Pipe(self, self.forward), _Pipe(self, self.backward)]
        self.tasks = [asyncio.ensure_future(self.pipes[0].run(reader, up_writer)),
                      asyncio.ensure_future(self.pipes[1].run(up_reader, writer))]
        try:  # aborted (a reset, the emulator closing): the pipes end cancelled
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            self.abort()
            for link in (self.forward, self.backward):
                link.relays.discard(self)

    def abort(self) -> None:
        for w in self.writers:
            w.transport.abort()
        for task in self.tasks:
            task.cancel()


class _Pipe:
    """One direction of one relayed connection: read, schedule, deliver in order."""

    def __init__(self, relay: _Relay, link: _Link) -> None:
        self.relay, self.link = relay, link
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.in_flight = 0
        self.changed = asyncio.Event()
        #: Set when the queue's times were recomputed (the link was reshaped).
        self.rescheduled = asyncio.Event()
        self.last_delivery = 0.0
        self.eof = False

    def reschedule(self) -> None:
        """Deliver what waits at the link's new pace, from now, in order."""
        last, queue = 0.0, collections.deque[tuple[float, bytes]]()
        for _, data in self.queue:
            last = max(last, self.link.delivery_time(len(data), _RNG))
            queue.append((last, data))
        self.queue, self.last_delivery = queue, last
        self.rescheduled.set()

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        deliver = asyncio.ensure_future(self._deliver(writer))
        try:
            await self._read(reader)
            await deliver
        finally:
            deliver.cancel()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        link, rng = self.link, _RNG
        while True:
            await link.up.wait()  # cut: stop reading, the sender's buffers fill
            while self.in_flight >= MAX_IN_FLIGHT:
                self.changed.clear()
                await self.changed.wait()
            while (backlog := link.backlog()) > MAX_QUEUE_DELAY:  # a full router buffer
                await asyncio.sleep(min(backlog - MAX_QUEUE_DELAY, 0.1))
            try:
                data = await reader.read(link.chunk_size())
            except OSError:
                data = b""
            if not data:
                self.eof = True
                self.changed.set()
                return
            link.counters["bytes_in"] += len(data)
            link.counters["chunks"] += 1
            if link.spec.state == "blackhole":
                link.counters["bytes_discarded"] += len(data)
                self.relay.lost_bytes = True
                continue
            size = link.chunk_size()  # a read issued before the link was slowed may be larger
            for start in range(0, len(data), size):
                piece = data[start:start + size]
                self.last_delivery = max(self.last_delivery, link.delivery_time(len(piece), rng))
                self.queue.append((self.last_delivery, piece))
            self.in_flight += len(data)
            self.changed.set()

    async def _deliver(self, writer: asyncio.StreamWriter) -> None:
        link = self.link
        while True:
            while not self.queue:
                if self.eof:
                    return
                self.changed.clear()
                await self.changed.wait()
            at, data = self.queue[0]
            if (wait := at - time.monotonic()) > 0:
                self.rescheduled.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self.rescheduled.wait()
                continue  # its time came, or the link was reshaped: look again
            await link.up.wait()  # in flight when the link was cut: held until heal
            self.queue.popleft()
            writer.write(data)
            await writer.drain()
            self.in_flight -= len(data)
            link.counters["bytes_delivered"] += len(data)
            self.changed.set()


_RNG = random.Random()


class LinkEmulator:
    """Relays between numbered nodes, each directed link shaped and cut on command.

    :meth:`add_route` starts a relay for "node ``source`` dials ``address``, which belongs
    to node ``target``", and returns the relay's address: put it in ``source``'s dial map
    under ``address``. Every command takes effect at once on the open connections too."""

    def __init__(self, *, seed: int | None = None, host: str = "127.0.0.1") -> None:
        if seed is not None:
            _RNG.seed(seed)
        self.host = host
        self._links: dict[Pair, _Link] = {}
        self._servers: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[Any]] = set()

    def link(self, source: int, target: int) -> _Link:
        return self._links.setdefault((source, target), _Link())

    @property
    def pairs(self) -> list[Pair]:
        return sorted(self._links)

    async def add_route(self, source: int, target: int, address: tuple[str, int], *,
                        avoid: frozenset[int] = frozenset()) -> tuple[str, int]:
        """Listen on a free port not in ``avoid`` (ports the nodes are yet to bind: the
        kernel may hand one of them out); relay what ``source`` sends there to ``address``
        (node ``target``'s), through links ``source->target`` and ``target->source``."""
        forward, backward = self.link(source, target), self.link(target, source)

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._handlers.add(task)
            try:
                await _Relay(forward, backward).run(reader, writer, address)
            finally:
                self._handlers.discard(task)

        server = await asyncio.start_server(accepted, self.host, 0)
        while server.sockets[0].getsockname()[1] in avoid:
            taken = server  # held until a good one is bound, so the kernel moves on
            server = await asyncio.start_server(accepted, self.host, 0)
            taken.close()
        self._servers.append(server)
        return self.host, server.sockets[0].getsockname()[1]

    # -- commands ---------------------------------------------------------------------------

    def _select(self, pairs: Iterable[Pair] | None) -> list[_Link]:
        return [self.link(*p) for p in (self.pairs if pairs is None else pairs)]

    def shape(self, pairs: Iterable[Pair] | None = None, **changes: Any) -> None:
        """Change latency/jitter/bandwidth/loss of ``pairs`` (default: every link)."""
        for link in self._select(pairs):
            link.spec = attrs.evolve(link.spec, **changes)
            link.reshaped()

    def cut(self, pairs: Iterable[Pair]) -> None:
        """Nothing crosses these directed links until :meth:`heal` (held, not lost)."""
        for link in self._select(pairs):
            self._set_state(link, "cut")

    def blackhole(self, pairs: Iterable[Pair]) -> None:
        """These directed links throw away what they carry until :meth:`heal`."""
        for link in self._select(pairs):
            self._set_state(link, "blackhole")

    def heal(self, pairs: Iterable[Pair] | None = None) -> None:
        """Links back up (default: every link); connections that lost bytes are reset."""
        for link in self._select(pairs):
            if link.spec.state == "blackhole":
                for relay in [r for r in link.relays if r.lost_bytes]:
                    link.counters["connections_reset"] += 1
                    relay.abort()
            self._set_state(link, "up")

    def partition(self, *groups: Iterable[int]) -> list[Pair]:
        """Cut every link between two different groups, both ways; return those cut."""
        member = {node: g for g, nodes in enumerate(groups) for node in nodes}
        pairs = [(a, b) for a, b in self.pairs
                 if a in member and b in member and member[a] != member[b]]
        self.cut(pairs)
        return pairs

    def inbound(self, node: int) -> list[Pair]:
        """Every link into ``node`` (cut them: it can send but not receive)."""
        return [(a, b) for a, b in self.pairs if b == node]

    def touching(self, node: int) -> list[Pair]:
        """Every link into or out of ``node``."""
        return [(a, b) for a, b in self.pairs if node in (a, b)]

    def reset(self, pairs: Iterable[Pair]) -> None:
        """Close (both sides of) every connection carried by these links."""
        for link in self._select(pairs):
            for relay in list(link.relays):
                link.counters["connections_reset"] += 1
                relay.abort()

    @staticmethod
    def _set_state(link: _Link, state: str) -> None:
        link.spec = attrs.evolve(link.spec, state=state)
        if state == "cut":
            link.up.clear()
        else:
            link.up.set()

    def counters(self) -> dict[str, dict[str, Any]]:
        """``"a->b"`` -> the link's counters, its state and how many connections it carries."""
        return {f"{a}->{b}": {**link.counters, "state": link.spec.state,
                              "open_connections": len(link.relays)}
                for (a, b), link in sorted(self._links.items())}

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for link in self._links.values():
            link.up.set()
            for relay in list(link.relays):
                relay.abort()
        if self._handlers:  # each ends once its relay is aborted
            await asyncio.wait(list(self._handlers), timeout=5)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()


class EmulatorThread:
    """A :class:`LinkEmulator` on an event loop of its own, in a thread: for synchronous
    callers (``bench/local.py``), and so that relaying does not wait on the caller's work.

    ``with EmulatorThread() as links: links.run(coroutine_function)`` runs
    ``coroutine_function(emulator)`` on that loop and returns its result."""

    def __init__(self, *, seed: int | None = None) -> None:
        self._seed = seed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.emulator: LinkEmulator | None = None

    def __enter__(self) -> Self:
        import uvloop

        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="link-emulator",
                                        daemon=True)
        self._thread.start()

        async def make(_: Any) -> LinkEmulator:
            return LinkEmulator(seed=self._seed)
        self.emulator = self.run(make)
        return self

    def run(self, function: Callable[[LinkEmulator], Awaitable[T]]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(function(self.emulator),  # type: ignore[arg-type]
                                                self._loop).result()

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._thread is not None
        if self.emulator is not None:
            self.run(lambda emulator: emulator.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
