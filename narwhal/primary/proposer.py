"""The proposer: turns batch digests and parent certificates into our next header.

A header for round r needs a quorum of round r-1 certificates as parents, and then either
``header_size`` bytes of batch digests or ``max_header_delay`` since the last header —
whichever comes first (asonnino/narwhal's rule). Parents of a round above ours make us
jump ahead (we were late, or just restarted).

One addition, against orphans: when the header is due but a certificate of the parents'
round that we know is coming is still missing (we voted for its header), the proposer
waits for it up to ``parents_grace`` (half of ``max_header_delay``). Why: every
authority proposes the moment its quorum is complete, so the last certificate of a round
often reaches nobody in time, is referenced by no header, and is never committed; its
batches then wait ~``gc_depth`` rounds to be proposed again (seen in 5-minute runs at
50,000 tx/s: p95 latency ~9 s in the windows where that happened). A crashed authority's
certificate is not waited for: we never voted for a header of it.

And against the orphans that remain (a certificate that came too late for every header
of the next round): the header carries **weak links** to them (``weak_links(round)``,
the DAG's certificates of rounds below the parents' that nothing references yet), so the
next leader that reaches our header orders them too, as in Bullshark.

Never two headers for one round, across restarts too: the round is written to the store
*before* the header is handed to the core for broadcasting, and a restarted proposer
starts above the last persisted round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import attrs

from narwhal import messages
from narwhal.messages import Header
from narwhal.ports import LOOP_CLOCK, Clock, Signer, StoreWriter

__all__ = ["Proposer"]

log = logging.getLogger(__name__)

#: Size counted per batch digest against ``header_size`` (as in the reference).
DIGEST_SIZE = 32
#: Digests waiting for a header. When the proposer cannot make headers (no quorum of
#: parents), workers keep reporting batches: beyond this they are still kept but the
#: oldest are carried over to later headers in order.
MAX_HEADER_PAYLOAD = messages.MAX_HEADER_PAYLOAD


class Proposer:
    def __init__(
        self,
        *,
        name: bytes,
        signer: Signer,
        store: StoreWriter,
        propose: Callable[[Header], Awaitable[None]],
        header_size: int,
        max_header_delay: float,
        genesis_parents: tuple[bytes, ...],
        last_proposed: int = 0,
        all_parents: Callable[[int], tuple[bytes, ...]] = lambda round_: (),
        frontier: Callable[[], int] = lambda: 0,
        certificates_coming: Callable[[int], int] = lambda round_: 0,
        weak_links: Callable[[int], tuple[tuple[bytes, int], ...]] = lambda round_: (),
        parents_grace: float | None = None,
        clock: Clock = LOOP_CLOCK,
    ) -> None:
        self.name = name
        self._clock = clock
        self._signer = signer
        self._store = store
        self._propose = propose
        self._all_parents = all_parents
        self._frontier = frontier
        self._coming = certificates_coming
        self._weak_links = weak_links
        self._grace = max_header_delay / 2 if parents_grace is None else parents_grace
        self._header_size = header_size
        self._max_delay = max_header_delay
        self.last_proposed = last_proposed
        #: Round of ``_parents``; a header gets round ``_parents_round + 1``.
        self._parents_round = 0
        self._parents: tuple[bytes, ...] | None = genesis_parents if last_proposed == 0 else None
        self._digests: list[tuple[bytes, int]] = []
        self._wake = asyncio.Event()
        self.headers_proposed = 0
        #: Weak links our headers carried (certificates they saved from being orphaned).
        self.weak_links_proposed = 0

    @property
    def round(self) -> int:
        """The round of the next header we would make."""
        return max(self._parents_round + 1, self.last_proposed + 1)

    @property
    def pending_digests(self) -> int:
        return len(self._digests)

    def add_digest(self, digest: bytes, worker_id: int) -> None:
        """A batch of ours reached its quorum: include it in a coming header."""
        self._digests.append((digest, worker_id))
        if len(self._digests) * DIGEST_SIZE >= self._header_size:
            self._wake.set()

    def parents_ready(self, round_: int, parents: tuple[bytes, ...]) -> None:
        """The core holds a quorum of certificates of ``round_``."""
        if round_ < self._parents_round:
            return
        self._parents_round = round_
        self._parents = parents
        self._wake.set()

    def certificate_arrived(self, round_: int) -> None:
        """Another certificate of ``round_`` was accepted: it may be the one we wait for."""
        if round_ == self._parents_round:
            self._wake.set()

    def _waiting_for_parents(self, now: float, due_since: float) -> float | None:
        """How long to wait for known-coming certificates of the parents' round (None: no)."""
        until = due_since + self._grace
        if now >= until:
            return None
        held = len(self._all_parents(self._parents_round))
        return until - now if held < self._coming(self._parents_round) else None

    async def run(self) -> None:
        deadline = self._clock.now() + self._max_delay
        due_since: float | None = None  # when the next header became due
        while True:
            # A header is useful only at the DAG's frontier: while we catch up (others have
            # certified rounds past the one we would propose) it would arrive too late to
            # be anyone's parent, and its batches would only be orphaned.
            enough_parents = (self._parents is not None and self._parents_round + 1 > self.last_proposed
                              and self._frontier() <= self._parents_round + 1)
            enough_digests = len(self._digests) * DIGEST_SIZE >= self._header_size
            expired = self._clock.now() >= deadline
            wait = None
            if enough_parents and (enough_digests or expired):
                now = self._clock.now()
                due_since = now if due_since is None else due_since
                wait = self._waiting_for_parents(now, due_since)
                if wait is None:
                    await self._make_header()
                    deadline, due_since = self._clock.now() + self._max_delay, None
                    continue
            self._wake.clear()
            timeout = wait if wait is not None else (
                max(0.0, deadline - self._clock.now()) if enough_parents else None)
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _make_header(self) -> None:
        assert self._parents is not None
        parents_round = self._parents_round
        round_ = parents_round + 1
        payload_list = self._digests[:MAX_HEADER_PAYLOAD]
        self._digests = self._digests[MAX_HEADER_PAYLOAD:]
        payload = tuple(sorted(dict(payload_list).items()))  # unique digests, sorted
        # Every certificate of the parents' round we hold now, not only the first quorum:
        # a slow authority's certificate that arrived meanwhile is referenced (and so
        # committed) instead of orphaned.
        parents = tuple(sorted(set(self._parents) | set(self._all_parents(parents_round))))
        unsigned = Header(self.name, round_, payload, parents, self._weak_links(round_), bytes(64))
        header = attrs.evolve(unsigned, signature=self._signer.sign(unsigned.digest()))
        # Durable *before* anyone can see the header: a restart never reuses this round.
        await self._store.write([
            ("last_proposed", b"", round_.to_bytes(8, "big") + header.digest()),
            ("headers", header.digest(), messages.encode(header)),
            # these batches are now carried by a header: no longer pending after a restart
            *(("our_batches", d + w.to_bytes(4, "big"), None) for d, w in payload),
        ], durable=True)
        self.last_proposed = round_
        if self._parents_round == parents_round:
            # consumed; but parents of a later round that arrived during the await above
            # are kept: the core announces each round's quorum only once
            self._parents = None
        self.headers_proposed += 1
        self.weak_links_proposed += len(header.weak_links)
        log.info("Created header %s round=%d batches=%d parents=%d weak_links=%d",
                 header.digest().hex()[:16], round_, len(payload), len(header.parents),
                 len(header.weak_links))
        await self._propose(header)
