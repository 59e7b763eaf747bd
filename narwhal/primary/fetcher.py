"""Certificate fetcher: brings in certificates we miss (parents of a header or of a
certificate), first from the peer that referred to them, then from the others.

Wanted digests are collected in one bounded set; one background task asks for them in
chunks of ``MAX_DIGESTS_PER_REQUEST`` with single-try requests (a slow peer only costs a
timeout, then the next peer is asked), and backs off while nobody has them. Whatever
arrives goes through the core's normal validation (``handle_certificate``): a fetched
certificate is trusted no more than a pushed one. Its own missing parents are then
wanted in turn, so a node that fell behind walks back until it meets its DAG.

Far behind (``behind()`` names the round we hold everything up to, when others are more
than :data:`BULK_BEHIND` rounds ahead), walking back costs one round trip per round. So
the fetcher first asks one peer for *every* certificate after that round
(``FetchCertificates``, up to ``MAX_CERTIFICATES_PER_RESPONSE`` in round order) and
delivers them oldest first: a node 100 rounds behind catches up in a few requests.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from narwhal.errors import NarwhalError
from narwhal.messages import (
    MAX_CERTIFICATES_PER_RESPONSE,
    MAX_DIGESTS_PER_REQUEST,
    Certificate,
    CertificatesRequest,
    FetchCertificates,
)
from narwhal.net.retry import Backoff, RetryConfig

__all__ = ["CertificateFetcher"]

log = logging.getLogger(__name__)

#: Digests we are looking for at once; beyond it new wants are dropped (they are asked
#: for again when the certificate or header that needs them is retried).
MAX_WANTED = 20_000
FETCH_TIMEOUT = 2.0
FETCH_BACKOFF = RetryConfig(initial_interval=0.1, max_interval=2.0, multiplier=1.5)
#: Rounds others may be ahead of what we hold before we fetch in bulk, by round.
BULK_BEHIND = 3


class CertificateFetcher:
    def __init__(
        self,
        *,
        others: list[bytes],
        request: Callable[[bytes, Any, float], Awaitable[Any]],
        deliver: Callable[[Certificate, bytes], Awaitable[None]],
        have: Callable[[bytes], bool],
        behind: Callable[[], int | None] = lambda: None,
    ) -> None:
        self._others = others
        self._behind = behind
        self._request = request
        self._deliver = deliver
        self._have = have
        self._wanted: dict[bytes, bytes | None] = {}  # digest -> preferred source
        self._task: asyncio.Task[None] | None = None
        self.fetched = 0
        self.failures = 0
        self.bulk_requests = 0
        self._bulk_after = -1  # the last bulk request's round: never asked twice

    def fetch(self, digests: Iterable[bytes], source: bytes | None) -> None:
        for digest in digests:
            if digest not in self._wanted and len(self._wanted) < MAX_WANTED and not self._have(digest):
                self._wanted[digest] = source
        if self._wanted and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def wanted(self) -> int:
        return len(self._wanted)

    async def _run(self) -> None:
        backoff = Backoff(FETCH_BACKOFF)
        while self._wanted:
            for digest in [d for d in self._wanted if self._have(d)]:
                del self._wanted[digest]
            if not self._wanted:
                return
            chunk = list(self._wanted)[:MAX_DIGESTS_PER_REQUEST]
            preferred = self._wanted[chunk[0]]
            sources = [preferred] if preferred in self._others else []
            sources += random.sample(self._others, len(self._others))
            after = self._behind()
            if after is not None and after > self._bulk_after and await self._ask_bulk(sources[0], after):
                backoff.reset()
                continue  # the loop's first step drops what arrived
            progress = False
            for source in dict.fromkeys(sources):
                got = await self._ask(source, chunk)
                if got:
                    progress = True
                    chunk = [d for d in chunk if d in self._wanted]
                if not chunk:
                    break
            if progress:
                backoff.reset()
            else:
                await asyncio.sleep(backoff.next_delay() or FETCH_BACKOFF.max_interval)

    async def _ask(self, source: bytes, chunk: list[bytes]) -> int:
        response = await self._try(source, CertificatesRequest(tuple(chunk)))
        if response is None:
            return 0
        wanted = set(chunk)  # never accept what we did not ask for
        return await self._deliver_all(source, [c for c in response.certificates if c.digest() in wanted])

    async def _ask_bulk(self, source: bytes, after_round: int) -> int:
        """Every certificate ``source`` holds after ``after_round`` (a bounded page)."""
        self.bulk_requests += 1
        self._bulk_after = after_round  # if what came cannot be accepted yet (a gap below it),
        # walking back by digest fills the gap before the next page is asked for
        response = await self._try(source, FetchCertificates(after_round, MAX_CERTIFICATES_PER_RESPONSE))
        if response is None:
            return 0
        return await self._deliver_all(source, [c for c in response.certificates
                                                if c.header.round > after_round and not self._have(c.digest())])

    async def _try(self, source: bytes, request: Any) -> Any:
        try:
            return await self._request(source, request, FETCH_TIMEOUT)
        except (NarwhalError, OSError, TimeoutError) as exc:
            self.failures += 1
            log.debug("%s to %s failed: %r", type(request).__name__, source.hex()[:8], exc)
            return None

    async def _deliver_all(self, source: bytes, certificates: list[Certificate]) -> int:
        """Hand ``certificates`` to the core oldest first (parents before children)."""
        for certificate in sorted(certificates, key=lambda c: c.header.round):
            digest = certificate.digest()
            self._wanted.pop(digest, None)
            self.fetched += 1
            try:
                await self._deliver(certificate, source)
            except NarwhalError as exc:
                log.info("fetched certificate %s from %s rejected: %s", digest.hex()[:16],
                         source.hex()[:8], exc)
        return len(certificates)
