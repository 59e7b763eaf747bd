"""Serve ``RequestBatches`` from the store, within a response byte budget.

The codec already bounds a request to ``MAX_DIGESTS_PER_REQUEST`` digests (a longer one
fails to decode and is answered ``TOO_LARGE`` before it reaches us). Batches are read one
at a time and packed into the ``BatchesResponse`` while their bodies total at most
``max_response_bytes`` (spliced as stored: ``messages.splice``, no decode and re-encode of
500 KB batches); the first batch that does not fit, every digest after it, and
every digest we do not hold are listed in ``missing``, so the requester asks again (or
asks someone else) for those. Reading stops at the budget: a request for a thousand 500 KB
batches costs us one response's worth of reads, not 500 MB.

The reads run on a reader thread (:mod:`narwhal.serving_reads`), never on the event loop,
and a peer has at most a few admitted at once: up to 4 MiB of reads per request would
otherwise stall the loop for as long as the peer likes.

The budget defaults to 4 MiB, and to at most half the frame limit: a response must fit in
one frame together with up to a thousand ``missing`` digests. A single batch larger than
the budget (possible only with a budget below ``batch_size``) is still sent alone if it fits
in a frame.
"""

from __future__ import annotations

from typing import Any

from narwhal.messages import BatchesResponse, Encoded, RequestBatches, splice
from narwhal.serving_reads import ServingReads, source_of
from narwhal.worker.metrics import WorkerMetrics

__all__ = ["MAX_RESPONSE_BYTES", "BatchServer", "response_budget"]

#: Batch bytes in one response: far below the 8 MiB frame limit, so a response never
#: monopolises a connection for long and never comes near the frame limit.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
#: Room kept in a frame for the response's framing and up to 1,000 missing digests.
RESPONSE_OVERHEAD = 64 * 1024


def response_budget(max_frame_size: int) -> tuple[int, int]:
    """(packing budget, largest single batch we can send) for a frame limit."""
    return min(MAX_RESPONSE_BYTES, max_frame_size // 2), max_frame_size - RESPONSE_OVERHEAD


class BatchServer:
    def __init__(self, *, store: Any, max_frame_size: int, metrics: WorkerMetrics,
                 authority: bytes | None = None) -> None:
        self.reads = ServingReads(store, name="batches")
        self._authority = authority  # ours: our primary is bound by the total only
        self.max_response_bytes, self.max_single_batch = response_budget(max_frame_size)
        self.metrics = metrics

    async def handle(self, peer: Any, request: RequestBatches) -> Encoded:
        response, served = await self.reads.run(source_of(peer, self._authority),
                                                lambda reader: self._pack(reader, request.digests))
        self.metrics.batches_served += served
        return response

    async def close(self) -> None:
        await self.reads.close()

    def _pack(self, reader: Any, digests: tuple[bytes, ...]) -> tuple[Encoded, int]:
        """Reader thread: the response, and how many batches it carries."""
        batches: list[bytes] = []  # stored bodies, spliced into the response as they are
        missing: list[bytes] = []
        size, full = 0, False
        for digest in dict.fromkeys(digests):  # a repeated digest is served once
            body = None if full else reader.get("batches", digest)
            if body is not None and size + len(body) > self.max_response_bytes and (
                    batches or len(body) > self.max_single_batch):
                full, body = True, None
            if body is None:
                missing.append(digest)
                continue
            batches.append(body)
            size += len(body)
        return splice(BatchesResponse, batches, tuple(missing)), len(batches)
