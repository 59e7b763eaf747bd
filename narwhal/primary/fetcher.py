"""Certificate fetcher: brings in certificates we miss (parents of a header or of a
certificate), first from the peer that referred to them, then from the others.

Wanted digests are collected in one bounded set, shared by the peers that made us want
them (see :class:`CertificateFetcher`); one background task asks for them in chunks of
``MAX_DIGESTS_PER_REQUEST`` with single-try requests (a slow peer only costs a timeout,
then the next peer is asked), and backs off while nobody has them. Whatever
arrives goes through the core's normal validation (``handle_certificate``): a fetched
certificate is trusted no more than a pushed one. Its own missing parents are then
wanted in turn, so a node that fell behind walks back until it meets its DAG.

Far behind (``behind()`` names the round we hold everything up to, when others are more
than :data:`BULK_BEHIND` rounds ahead), walking back costs one round trip per round. So
the fetcher first asks for *every* certificate after that round (``FetchCertificates``, up
to ``MAX_CERTIFICATES_PER_RESPONSE`` in round order), :data:`BULK_PAGES` consecutive pages
at once from as many peers, and delivers them oldest first: a node 100 rounds behind
catches up in a few requests.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import attrs

from narwhal.errors import NarwhalError
from narwhal.messages import (
    MAX_CERTIFICATES_PER_RESPONSE,
    MAX_DIGESTS_PER_REQUEST,
    Certificate,
    CertificatesRequest,
    FetchCertificates,
)
from narwhal.net.retry import Backoff, RetryConfig
from narwhal.ports import LOOP_CLOCK, Clock, RandomSource

__all__ = ["CertificateFetcher"]

log = logging.getLogger(__name__)

#: Digests we are looking for at once, shared equally by the sources that made us want
#: them; beyond its share a source's new wants are dropped (asked for again when the
#: certificate or header that needs them is retried).
MAX_WANTED = 20_000
FETCH_TIMEOUT = 2.0
FETCH_BACKOFF = RetryConfig(initial_interval=0.1, max_interval=2.0, multiplier=1.5)
#: Rounds others may be ahead of what we hold before we fetch in bulk, by round.
BULK_BEHIND = 3
#: Bulk pages asked for at once, each of another peer (see ``_ask_bulk_pages``).
BULK_PAGES = 2


@attrs.define
class _Want:
    source: bytes | None  # the peer that made us want it (asked first), None: nobody
    round: int  # the round of the wanted certificate: dropped once GC passes it


class CertificateFetcher:
    """Fetches wanted certificates (see the module docstring).

    What no single peer can do to it (issue 12, finding 2):

    - **fill it**: each source (the author of the header, or the sender of the
      certificate, that named the missing digests) has an equal share of ``MAX_WANTED``;
      a flood of made-up digests only crowds out the flooder's own wants;
    - **keep it full**: a want is dropped once the GC round passes its round
      (:meth:`garbage_collect`), so made-up digests go away as the DAG moves on;
    - **stall it**: each source's wants are asked for in their own request, all sources
      at once, so a silent source costs its own requests a timeout and nothing else;
      every request goes to the source first, then to every other peer in random order;
      a chunk that was asked for goes to the back of the line, so the same 1,000 digests
      are not asked for again and again while others wait.
    """

    def __init__(
        self,
        *,
        others: list[bytes],
        request: Callable[[bytes, Any, float], Awaitable[Any]],
        deliver: Callable[[Certificate, bytes], Awaitable[None]],
        have: Callable[[bytes], bool],
        behind: Callable[[], int | None] = lambda: None,
        deliver_page: Callable[[list[Certificate], bytes], Awaitable[None]] | None = None,
        clock: Clock = LOOP_CLOCK,
        rng: RandomSource | None = None,
        on_beyond_retention: Callable[[int], None] = lambda first_held: None,
        page_rounds: int = MAX_CERTIFICATES_PER_RESPONSE,
    ) -> None:
        self._clock = clock
        self._rng: RandomSource = rng if rng is not None else random.Random()
        self._others = others
        self._behind = behind
        self._request = request
        self._deliver = deliver
        #: A whole bulk page at once (the core writes it in one go); None: one by one.
        self._deliver_page = deliver_page
        #: Called with the latest first round the peers hold when all of them pruned ours.
        self._on_beyond_retention = on_beyond_retention
        #: Rounds one bulk page surely covers (a page holds at most n certificates a round).
        self._page_rounds = max(1, page_rounds)
        self._have = have
        self._wanted: dict[bytes, _Want] = {}
        self._per_source: Counter[bytes | None] = Counter()
        self.share = max(MAX_WANTED // (len(others) + 1), MAX_DIGESTS_PER_REQUEST)
        self._gc_round = 0
        self._task: asyncio.Task[None] | None = None
        self.fetched = 0
        self.failures = 0
        self.bulk_requests = 0
        #: Wants refused because their source had used up its share.
        self.refused = 0
        #: The round after which the last bulk page brought something: never asked twice.
        self._bulk_after = -1
        #: Peers whose bulk page began past a gap after the round we asked from: they
        #: pruned the rounds we need (retention) -> the first round they still hold.
        self.pruned_at: dict[bytes, int] = {}
        #: Every peer pruned what we need: we cannot catch up by fetching (logged once).
        self.beyond_retention = False

    def fetch(self, digests: Iterable[bytes], source: bytes | None, round_: int) -> None:
        """Want the certificates ``digests`` of round ``round_``, named by ``source``."""
        if round_ <= self._gc_round:
            return
        for digest in digests:
            if digest in self._wanted or self._have(digest):
                continue
            if self._per_source[source] >= self.share:
                self.refused += 1
                continue
            self._wanted[digest] = _Want(source, round_)
            self._per_source[source] += 1
        if self._wanted:
            self._start()

    def catch_up(self) -> None:
        """Others are far ahead (a valid certificate of a round beyond what we accept said
        so): fetch in bulk, by round, even though no digest is wanted."""
        self._start()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def garbage_collect(self, gc_round: int) -> None:
        """Stop wanting certificates of rounds <= ``gc_round``: nobody needs them now."""
        self._gc_round = max(self._gc_round, gc_round)
        for digest in [d for d, w in self._wanted.items() if w.round <= gc_round]:
            self._forget(digest)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def wanted(self) -> int:
        return len(self._wanted)

    def _forget(self, digest: bytes) -> None:
        want = self._wanted.pop(digest, None)
        if want is not None:
            self._per_source[want.source] -= 1
            if not self._per_source[want.source]:
                del self._per_source[want.source]

    async def _run(self) -> None:
        backoff = Backoff(FETCH_BACKOFF, rng=self._rng)
        while True:
            for digest in [d for d in self._wanted if self._have(d)]:
                self._forget(digest)
            after = self._behind()
            bulk = after is not None and after > self._bulk_after
            if after is not None and bulk and await self._ask_bulk_pages(after):
                backoff.reset()
                continue  # the loop's first step drops what arrived
            if not self._wanted and not bulk:
                return
            chunks: dict[bytes | None, list[bytes]] = {}
            for digest, want in self._wanted.items():
                chunk = chunks.setdefault(want.source, [])
                if len(chunk) < MAX_DIGESTS_PER_REQUEST:
                    chunk.append(digest)
            got = await asyncio.gather(*(self._fetch_chunk(source, chunk)
                                         for source, chunk in chunks.items()))
            if any(got):
                backoff.reset()
            else:  # nobody had them (or the bulk page was empty): again, after a pause
                await backoff.pause(self._clock.sleep)

    async def _fetch_chunk(self, preferred: bytes | None, chunk: list[bytes]) -> bool:
        """Ask ``preferred``, then every other peer, for ``chunk``; True if any came."""
        sources = [preferred] if preferred in self._others else []
        sources += self._rng.sample(self._others, len(self._others))
        progress = False
        for source in dict.fromkeys(sources):
            if await self._ask(source, chunk):
                progress = True
                chunk = [d for d in chunk if d in self._wanted]
            if not chunk:
                break
        for digest in chunk:  # still wanted: to the back of the line
            if digest in self._wanted:
                self._wanted[digest] = self._wanted.pop(digest)
        return progress

    async def _ask(self, source: bytes, chunk: list[bytes]) -> int:
        response = await self._try(source, CertificatesRequest(tuple(chunk)))
        if response is None:
            return 0
        wanted = set(chunk)  # never accept what we did not ask for
        return await self._deliver_all(source, [c for c in response.certificates if c.digest() in wanted])

    async def _ask_bulk_pages(self, after_round: int) -> int:
        """The next :data:`BULK_PAGES` pages at once, each of another peer: the first after
        ``after_round``, each next one ``page_rounds`` further on (a little less than a
        page holds, so that consecutive pages overlap rather than leave a gap). They are
        taken in round order once all have come: a node far behind waits for one round
        trip per ``BULK_PAGES`` pages, and no one peer serves all of its catch-up."""
        sources = self._bulk_sources(BULK_PAGES)
        starts = [after_round + i * self._page_rounds for i in range(len(sources))]
        self.bulk_requests += len(sources)
        responses = await asyncio.gather(*(
            self._try(source, FetchCertificates(start, MAX_CERTIFICATES_PER_RESPONSE))
            for source, start in zip(sources, starts, strict=True)))
        taken = 0
        for source, start, response in zip(sources, starts, responses, strict=True):
            if response is None:
                break  # a silent or failing source: what follows would wait on its gap
            got = await self._take_page(source, start, response)
            if not got:
                break
            taken += got
        return taken

    async def _take_page(self, source: bytes, after_round: int, response: Any) -> int:
        """Deliver a bulk page of ``source`` (certificates after ``after_round``); how many
        were new (0 also when the page shows ``source`` pruned what we need)."""
        known_gap = source in self.pruned_at
        gap = self._note_retention(source, after_round, response.certificates)
        new = [c for c in response.certificates
               if c.header.round > after_round and not self._have(c.digest()) and not known_gap]
        if self._deliver_page is None:
            await self._deliver_all(source, new)
        else:
            for certificate in new:
                self._forget(certificate.digest())
            self.fetched += len(new)
            try:
                await self._deliver_page(new, source)
            except NarwhalError as exc:  # our store refused the write (disk full): ask again
                self.failures += 1
                log.warning("a page of %d certificates from %s was not taken: %s; asking again "
                            "after a pause", len(new), source.hex()[:8], exc)
                return 0
        if gap:  # not progress: another peer may still hold the rounds we need
            return 0
        if new:  # if what came cannot be accepted yet (a gap below it), walking back by
            self._bulk_after = after_round  # digest fills the gap before the next page
        return len(new)

    def _bulk_sources(self, count: int) -> list[bytes]:
        """Up to ``count`` distinct random peers, those that have not shown they pruned what
        we need first."""
        holding = [p for p in self._others if p not in self.pruned_at]
        pruned = [p for p in self._others if p in self.pruned_at]
        ordered = self._rng.sample(holding, len(holding)) + self._rng.sample(pruned, len(pruned))
        return ordered[:count]

    def _note_retention(self, source: bytes, after_round: int, page: Iterable[Certificate]) -> bool:
        """A page that starts past round ``after_round + 1`` says ``source`` no longer holds
        the rounds right after ours. If every peer says so, nobody can give them to us:
        the node was away longer than the others' ``retain_seconds``. Say so, once, in
        words an operator can act on, instead of fetching in silence for ever."""
        first = min((c.header.round for c in page), default=None)
        if first is None or first <= after_round + 1:
            self.pruned_at.pop(source, None)
            self.beyond_retention = False
            return False
        self.pruned_at[source] = first
        if not self.beyond_retention and set(self.pruned_at) >= set(self._others):
            self.beyond_retention = True
            log.warning("this node holds the DAG up to round %d, and every peer has deleted the "
                        "rounds after it (the first they hold: %s): it was away longer than their "
                        "retain_seconds and cannot catch up by fetching: it looks for a checkpoint "
                        "peers of f+1 stake agree on, to resume from (state transfer).",
                        after_round, min(self.pruned_at.values()))
            self._on_beyond_retention(max(self.pruned_at.values()))
        return True

    def forget_retention(self) -> None:
        """After a state transfer (or a failed one): what peers pruned is asked afresh."""
        self.pruned_at.clear()
        self.beyond_retention = False
        self._bulk_after = -1

    async def _try(self, source: bytes, request: Any) -> Any:
        try:
            return await self._request(source, request, FETCH_TIMEOUT)
        except (NarwhalError, OSError, TimeoutError) as exc:
            self.failures += 1
            log.debug("%s to %s failed: %r", type(request).__name__, source.hex()[:8], exc)
            return None

    async def _deliver_all(self, source: bytes, certificates: list[Certificate]) -> int:
        """Hand ``certificates`` to the core oldest round first (parents before children),
        the certificates of one round at once: each waits for its store write, and one
        round's writes share a commit (a page of 1,000 one by one took ~5 s)."""
        by_round: dict[int, list[Certificate]] = {}
        for certificate in certificates:
            by_round.setdefault(certificate.header.round, []).append(certificate)
        for round_ in sorted(by_round):
            await asyncio.gather(*(self._deliver_one(source, c) for c in by_round[round_]))
        return len(certificates)

    async def _deliver_one(self, source: bytes, certificate: Certificate) -> None:
        digest = certificate.digest()
        self._forget(digest)
        self.fetched += 1
        try:
            await self._deliver(certificate, source)
        except NarwhalError as exc:
            log.info("fetched certificate %s from %s rejected: %s", digest.hex()[:16],
                     source.hex()[:8], exc)
