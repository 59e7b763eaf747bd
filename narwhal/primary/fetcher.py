"""Certificate fetcher: brings in certificates we miss (parents of a header or of a
certificate), first from the peer that referred to them, then from the others.

Wanted digests are collected in one bounded set; one background task asks for them in
chunks of ``MAX_DIGESTS_PER_REQUEST`` with single-try requests (a slow peer only costs a
timeout, then the next peer is asked), and backs off while nobody has them. Whatever
arrives goes through the core's normal validation (``handle_certificate``): a fetched
certificate is trusted no more than a pushed one. Its own missing parents are then
wanted in turn, so a node that fell behind walks back until it meets its DAG.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from narwhal.errors import NarwhalError
from narwhal.messages import MAX_DIGESTS_PER_REQUEST, Certificate, CertificatesRequest
from narwhal.net.retry import Backoff, RetryConfig

__all__ = ["CertificateFetcher"]

log = logging.getLogger(__name__)

#: Digests we are looking for at once; beyond it new wants are dropped (they are asked
#: for again when the certificate or header that needs them is retried).
MAX_WANTED = 20_000
FETCH_TIMEOUT = 2.0
FETCH_BACKOFF = RetryConfig(initial_interval=0.1, max_interval=2.0, multiplier=1.5)


class CertificateFetcher:
    def __init__(
        self,
        *,
        others: list[bytes],
        request: Callable[[bytes, Any, float], Awaitable[Any]],
        deliver: Callable[[Certificate, bytes], Awaitable[None]],
        have: Callable[[bytes], bool],
    ) -> None:
        self._others = others
        self._request = request
        self._deliver = deliver
        self._have = have
        self._wanted: dict[bytes, bytes | None] = {}  # digest -> preferred source
        self._task: asyncio.Task[None] | None = None
        self.fetched = 0
        self.failures = 0

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
        try:
            response = await self._request(source, CertificatesRequest(tuple(chunk)), FETCH_TIMEOUT)
        except (NarwhalError, OSError, TimeoutError) as exc:
            self.failures += 1
            log.debug("fetching %d certificates from %s failed: %r", len(chunk), source.hex()[:8], exc)
            return 0
        wanted = set(chunk)
        got = 0
        for certificate in sorted(response.certificates, key=lambda c: c.header.round):
            digest = certificate.digest()
            if digest not in wanted:
                continue  # never accept what we did not ask for
            self._wanted.pop(digest, None)
            got += 1
            self.fetched += 1
            try:
                await self._deliver(certificate, source)
            except NarwhalError as exc:
                log.info("fetched certificate %s from %s rejected: %s", digest.hex()[:16],
                         source.hex()[:8], exc)
        return got
