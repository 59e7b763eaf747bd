"""Admission control of a listener: what a connection may cost before its handshake is done.

Anyone can open TCP connections to a validator port or a client port, and send (or not
send) handshake bytes. Before the Noise handshake completes we do not know who is there,
so these *half-open* connections must be cheap to hold and cheap to refuse, and they must
not be able to lock out the peers and clients that do complete their handshake (in a
millisecond or two). One :class:`AdmissionControl` per listener (the validator port's
:class:`~narwhal.net.network.PeerManager`, each :class:`~narwhal.net.clients.ClientServer`)
enforces, without any I/O of its own (the :class:`~narwhal.net.connection.Connection`
reports to it through a :class:`Ticket`):

- **A cap on half-open connections**, overall (``max_half_open``) and per source address
  (``max_half_open_per_source``). A full cap never refuses the newcomer: it *evicts* older
  half-open connections instead -- first of each source over its cap, then of the source
  holding the most. So a flood of silent connections pushes out its own connections, never
  the fresh connection of a real peer from another address. Within a source the victims
  are the oldest of its least advanced connections: silent ones (nothing received) go
  first, then those that sent part of a handshake, last those whose message 1 passed the
  handshake budget and now wait for the initiator's confirmation. A real client sends its
  message 1 as soon as it is connected, while a silent flood only adds silent connections;
  this is what keeps real clients connecting during a flood *from their own address* (the
  tests, on 127.0.0.1). For that the caps are enforced :data:`SHED_DELAY` after the
  arrival that exceeded one, not at once: the event loop accepts a whole backlog of
  connections in one go and reads their first bytes only afterwards, so an immediate
  eviction could not yet tell a real client (its message 1 already waiting in the socket)
  from the silent connections accepted with it. ``2 x max_half_open`` is a hard ceiling,
  enforced at once.
- **A handshake budget.** Reading message 1 costs the responder two or three X25519
  operations (~100 us for a garbage message, ~250 us for a valid IK message 1 answered with
  message 2). Message 1 is checked before any of it: a replayed message 1 (its ephemeral
  key, sent in clear, was seen recently: an honest initiator draws a fresh one per
  handshake) is refused outright; otherwise it must take one token from its source's bucket
  (``handshake_rate_per_source``/s, ``handshake_burst_per_source`` held) and one from the
  listener's (``handshake_rate``/s, ``handshake_burst``). A connection refused here is
  closed at once, without an answer and without any crypto, and counted. The default
  listener rate (1,000/s, ~25% of one core at ~250 us each) bounds the share of the event
  loop a handshake flood can take, from any number of sources; the per-source rate keeps
  one source from taking all of it.

A refused or evicted connection is closed without a GOAWAY: it has no session keys to
send one with. Initiators treat a close before message 2 as transient and redial with
backoff (``wire_spec.md`` section 3.6). Every refusal and eviction has a counter
(:class:`AdmissionStats`), exported per listener in ``/status`` and ``/metrics``.

Memory: a half-open connection holds a receive buffer the size of the largest handshake
message (``HANDSHAKE_RECEIVE_BUFFER`` in ``connection.py``) plus the handshake state;
per-source token buckets are forgotten once full (a new bucket starts full), the replay
memory holds at most ``replay_memory`` keys.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import ipaddress
import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from narwhal.config.network import AdmissionConfig
from narwhal.errors import AdmissionRefused
from narwhal.net.token_bucket import TokenBucket

__all__ = ["AdmissionConfig", "AdmissionControl", "AdmissionStats", "ListenerAdmission", "Stage",
           "Ticket", "source_of"]

#: Bytes of message 1 that identify it: the initiator's ephemeral public key, the first
#: 32 bytes of both IK and NK message 1, in clear.
EPHEMERAL_KEY_SIZE = 32
#: Sources listed by name in a snapshot (the ones holding the most half-open connections).
TOP_SOURCES = 5
#: Seconds from the arrival that exceeded a cap to its enforcement: long enough for the
#: loop to read what is waiting on the sockets it just accepted (one poll), short enough
#: that a flood gets little past the caps meanwhile (the hard ceiling bounds even that).
SHED_DELAY = 0.002


def source_of(peername: Any) -> str:
    """The source a connection is charged to: its IPv4 address, or the /64 prefix of an
    IPv6 address (one site usually holds a whole /64, so per-address limits would be
    trivial to evade). ``peername`` is the transport's ``get_extra_info("peername")``."""
    if not isinstance(peername, tuple) or not peername:
        return "unknown"
    host = peername[0]
    if isinstance(host, str) and ":" not in host:
        return host  # IPv4, as the kernel wrote it: parsing it again costs ~3% of a flood
    host = str(host).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Stage(enum.IntEnum):
    """How far a half-open connection got; the least advanced are evicted first."""

    #: Accepted; nothing received.
    SILENT = 0
    #: Some handshake bytes received; message 1 not complete (or not yet checked).
    STARTED = 1
    #: Message 1 passed the budget and was answered; waiting for the confirmation.
    KEYED = 2


class Owner(Protocol):
    """What admission closes: the connection (``Connection.abort``)."""

    def abort(self, error: BaseException | None = None) -> None: ...


@attrs.define
class AdmissionStats:
    """Counters of one listener (exported as ``narwhal_admission_*``)."""

    #: Connections accepted (each starts half-open).
    admitted: int = 0
    #: Handshakes completed (confirmed): the connection left the half-open set.
    completed: int = 0
    #: Half-open connections closed to make room: their source was over its cap ...
    evicted_per_source: int = 0
    #: ... or the listener was over its cap (the victim's source held the most).
    evicted_overall: int = 0
    #: Message 1s that passed the handshake budget: their Diffie-Hellman work ran.
    handshakes: int = 0
    #: Message 1s refused before any crypto: over the source's handshake rate ...
    throttled_per_source: int = 0
    #: ... over the listener's ...
    throttled_overall: int = 0
    #: ... or a replay of a recent message 1 (same ephemeral key).
    replayed: int = 0
    #: Half-open connections closed by the handshake timeout.
    timed_out: int = 0
    #: Half-open connections that ended otherwise (the peer left, a bad handshake).
    abandoned: int = 0
    #: Most half-open connections held at once.
    peak_half_open: int = 0


class Ticket:
    """One half-open connection's place in its listener's admission control.

    The connection calls :meth:`started` on its first bytes, :meth:`check_message1` before
    the handshake reads message 1, :meth:`complete` once confirmed, :meth:`release` when
    closed. Every call after the ticket left the half-open set is a no-op."""

    __slots__ = ("_control", "live", "owner", "source", "stage")

    def __init__(self, control: AdmissionControl, source: str, owner: Owner) -> None:
        self._control = control
        self.source = source
        self.owner = owner
        self.stage = Stage.SILENT
        self.live = True

    def started(self) -> None:
        if self.live and self.stage is Stage.SILENT:
            self._control._advance(self, Stage.STARTED)

    def check_message1(self, message: bytes) -> None:
        """Raise :class:`AdmissionRefused` (counted; the ticket is released) unless message 1
        may be processed: not a replay, and a handshake token from the source and the
        listener."""
        self._control._check_message1(self, bytes(message[:EPHEMERAL_KEY_SIZE]))

    def complete(self) -> None:
        if self.live:
            self._control.stats.completed += 1
            self._control._remove(self)

    def release(self, *, timed_out: bool = False) -> None:
        if self.live:
            stats = self._control.stats
            if timed_out:
                stats.timed_out += 1
            else:
                stats.abandoned += 1
            self._control._remove(self)


class _Source:
    """The half-open connections of one source, oldest first within each stage."""

    __slots__ = ("count", "stages")

    def __init__(self) -> None:
        self.count = 0
        self.stages: tuple[dict[Ticket, None], ...] = tuple({} for _ in Stage)

    def oldest_least_advanced(self) -> Ticket:
        for stage in self.stages:
            if stage:
                return next(iter(stage))
        raise LookupError("no half-open connection")


class AdmissionControl:
    """The half-open connections and handshake budget of one listener (no I/O)."""

    def __init__(self, config: AdmissionConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config = config or AdmissionConfig()
        self._clock = clock
        self.stats = AdmissionStats()
        self._sources: dict[str, _Source] = {}
        self._half_open = 0
        #: Sources by how many half-open connections they hold (count -> sources, oldest
        #: first), and the largest count: the eviction victim is found in O(1).
        self._by_count: dict[int, dict[str, None]] = collections.defaultdict(dict)
        self._max_count = 0
        self._bucket = TokenBucket(config.handshake_rate, config.handshake_burst, clock)
        #: Sources' buckets, least recently used first; full ones are forgotten.
        self._source_buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()
        self._seen: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    @property
    def half_open(self) -> int:
        return self._half_open

    def half_open_of(self, source: str) -> int:
        src = self._sources.get(source)
        return 0 if src is None else src.count

    # -- connections --------------------------------------------------------------------

    def admit(self, source: str, owner: Owner) -> Ticket:
        """A new connection from ``source``. Nothing is evicted here: see :meth:`shed`."""
        src = self._sources.get(source)
        if src is None:
            src = self._sources[source] = _Source()
        ticket = Ticket(self, source, owner)
        src.stages[Stage.SILENT][ticket] = None
        self._recount(source, src, +1)
        self._half_open += 1
        self.stats.admitted += 1
        self.stats.peak_half_open = max(self.stats.peak_half_open, self._half_open)
        return ticket

    @property
    def over_limit(self) -> bool:
        """A cap is exceeded: :meth:`shed` has work to do."""
        config = self.config
        return (self._half_open > config.max_half_open
                or self._max_count > config.max_half_open_per_source)

    @property
    def over_ceiling(self) -> bool:
        """Twice the overall cap: shed now, whatever a delay would tell us."""
        return self._half_open >= 2 * self.config.max_half_open

    def shed(self) -> list[Ticket]:
        """Evict half-open connections until within both caps; return their tickets
        (already released: the caller closes their owners). Sources over their own cap
        lose first, then the source holding the most; each loses its oldest least
        advanced connection."""
        config = self.config
        evicted: list[Ticket] = []
        while self._max_count > config.max_half_open_per_source:
            evicted.append(self._evict_from_largest())
            self.stats.evicted_per_source += 1
        while self._half_open > config.max_half_open:
            evicted.append(self._evict_from_largest())
            self.stats.evicted_overall += 1
        return evicted

    def _evict_from_largest(self) -> Ticket:
        source = next(iter(self._by_count[self._max_count]))
        ticket = self._sources[source].oldest_least_advanced()
        self._remove(ticket)
        return ticket

    def _advance(self, ticket: Ticket, stage: Stage) -> None:
        stages = self._sources[ticket.source].stages
        del stages[ticket.stage][ticket]
        stages[stage][ticket] = None
        ticket.stage = stage

    def _remove(self, ticket: Ticket) -> None:
        ticket.live = False
        src = self._sources[ticket.source]
        del src.stages[ticket.stage][ticket]
        self._recount(ticket.source, src, -1)
        self._half_open -= 1
        if not src.count:
            del self._sources[ticket.source]

    def _recount(self, source: str, src: _Source, delta: int) -> None:
        """Move ``source`` to its new count's group, keeping ``_max_count`` exact (counts
        change by one, so the maximum moves by at most one)."""
        old = src.count
        new = src.count = old + delta
        group = self._by_count[old]
        group.pop(source, None)
        if not group:
            del self._by_count[old]
            if old == self._max_count and new < old:
                self._max_count = new
        if new:
            self._by_count[new][source] = None
        self._max_count = max(self._max_count, new)

    # -- handshake budget -------------------------------------------------------------------

    def _check_message1(self, ticket: Ticket, ephemeral: bytes) -> None:
        if not ticket.live:  # evicted meanwhile: its owner is being closed
            raise AdmissionRefused("connection was evicted")
        stats = self.stats
        if ephemeral in self._seen:
            stats.replayed += 1
            self._remove(ticket)
            raise AdmissionRefused("replayed handshake message 1")
        bucket = self._source_bucket(ticket.source)
        if bucket.refill() < 1:
            stats.throttled_per_source += 1
            self._remove(ticket)
            raise AdmissionRefused(f"over the handshake rate of source {ticket.source}")
        if not self._bucket.take(1):
            stats.throttled_overall += 1
            self._remove(ticket)
            raise AdmissionRefused("over the listener's handshake rate")
        bucket.tokens -= 1
        stats.handshakes += 1
        self._remember(ephemeral)
        self._advance(ticket, Stage.KEYED)

    def _source_bucket(self, source: str) -> TokenBucket:
        buckets = self._source_buckets
        bucket = buckets.get(source)
        if bucket is None:
            # forget full buckets, least recently used first: they say nothing a new one
            # would not (at most the sources that took a token in the last burst/rate s)
            while buckets and next(iter(buckets.values())).full:
                buckets.popitem(last=False)
            config = self.config
            bucket = buckets[source] = TokenBucket(
                config.handshake_rate_per_source, config.handshake_burst_per_source, self._clock)
        else:
            buckets.move_to_end(source)
        return bucket

    def _remember(self, ephemeral: bytes) -> None:
        seen = self._seen
        seen[ephemeral] = None
        if len(seen) > self.config.replay_memory:
            seen.popitem(last=False)

    @property
    def tracked_buckets(self) -> int:
        """Per-source buckets held right now (for tests of the memory bound)."""
        return len(self._source_buckets)

    # -- status -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters, gauges and limits, JSON-ready (``/status``; ``/metrics`` reads it)."""
        stages = collections.Counter[str]()
        for src in self._sources.values():
            for stage in Stage:
                stages[stage.name.lower()] += len(src.stages[stage])
        top = sorted(self._sources.items(), key=lambda item: -item[1].count)[:TOP_SOURCES]
        return {
            **attrs.asdict(self.stats),
            "half_open": self._half_open,
            "half_open_by_stage": {stage.name.lower(): stages[stage.name.lower()] for stage in Stage},
            "sources": len(self._sources),
            "top_sources": [[source, src.count] for source, src in top],
            "handshake_tokens": round(self._bucket.refill(), 1),
            "limits": attrs.asdict(self.config),
        }


class ListenerAdmission(AdmissionControl):
    """:class:`AdmissionControl` on an event loop: closes the connections it evicts,
    :data:`SHED_DELAY` after the arrival that exceeded a cap (at once past the ceiling)."""

    def __init__(self, config: AdmissionConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, clock=clock)
        self._shedding: asyncio.TimerHandle | None = None

    def admit_connection(self, owner: Owner, peername: object) -> Ticket:
        """Admit ``owner``, a connection just accepted from ``peername``."""
        ticket = self.admit(source_of(peername), owner)
        if self.over_ceiling:
            self.shed_now()
        elif self.over_limit and self._shedding is None:
            self._shedding = asyncio.get_running_loop().call_later(SHED_DELAY, self.shed_now)
        return ticket

    def shed_now(self) -> None:
        """Enforce the caps: close the connections :meth:`shed` evicts."""
        if self._shedding is not None:
            self._shedding.cancel()
            self._shedding = None
        for ticket in self.shed():
            ticket.owner.abort(AdmissionRefused("evicted: too many connections in their handshake"))
