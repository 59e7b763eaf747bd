"""Default per-(peer, route) rate limits, derived from the committee and the parameters.

The limits (enforced by :class:`~narwhal.net.rate_limit.RateLimiter` before a frame is
decoded; ``narwhal.net.rate_limit`` builds a listener's limiter from them) exist to stop floods, so every default is an **upper bound of honest traffic
times a headroom** (``Parameters.rate_limit_headroom``, default H = 4), with a burst that
holds ``BURST_SECONDS`` seconds of that rate: a peer back from a partition flushing its
queued reliable sends, or a restarted node catching up, may spend several seconds of its
allowance at once. ``Parameters.rate_limits`` overrides any route.

Notation: n = committee size, W = workers per authority, B = ``batch_size``,
d = ``max_header_delay``, b = ``max_batch_delay``, g = ``gc_depth``,
P = ``max_pending_transactions_bytes``, T = ``max_transaction_size``,
L = :data:`HONEST_LOAD_BYTES` (the benchmarked 50,000 tx/s of 512 B, 25.6 MB/s, assumed to
pass through a single worker: a client may send everything to one worker),
R = max(:data:`MIN_HONEST_ROUNDS`, 2 / d) rounds a second (the fastest an honest DAG
advances: at least one header delay per round when batches are scarce, network-bound when
they are not; 50/s is above anything measured on one machine).

Per peer (a validator's other authorities; our own workers and primary are never limited):

================== =================================== ===================================
route              requests/s (burst = 5 s of it)      bytes/s (burst)
================== =================================== ===================================
Header             H·R (one per round)                 H·(R·(128+34n) + 38·W·(L/B + 1/b))
                                                       (burst: the larger of 5 s of it and
                                                       one header of MAX_HEADER_PAYLOAD
                                                       digests)
Certificate        H·R (one per round)                 as Header plus 100 bytes of vote per
                                                       authority per round
Vote               H·R (one per round)                 - (fixed size)
CertificatesRequest H·n·10 (the fetcher asks each peer - (bounded by the digest limit)
                   once per source per 0.1 s at most)
FetchCertificates  H·10 (one bulk fetch per response   -
                   processed, >= 0.1 s each)
CheckpointRequest  H·5 (a state transfer asks each     - (fixed size)
                   peer a few questions, >= 0.2 s apart)
Batch              H·(L/B + 1/b) (sealed when full or  H·L (burst 2P + B + T: what an honest
                   after b)                            worker may resend after a partition)
RequestBatches     H·2R (one sync per header, plus     -
                   retries of earlier ones)
SubmitTransactions H·L/(512·250) per client connection H·L (burst P: the pending budget)
                   (frames of 250 transactions)
================== =================================== ===================================

Bursts of the per-round routes are at least 2g: a reconnecting peer may flush up to g
rounds of queued headers, votes and certificates at once (older sends were cancelled by
garbage collection). With the defaults (n = 4, W = 1, B = 500 KB, d = b = 0.1 s, g = 50)
this gives 200 Header/Vote/Certificate a second (burst 1,000), 160 CertificatesRequest,
40 FetchCertificates, 20 CheckpointRequest, 245 Batch and 400 RequestBatches a second per peer; a client
connection may send 800 SubmitTransactions a second and 102 MB/s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from narwhal.config.network import RouteLimit
from narwhal.messages import (
    MAX_HEADER_PAYLOAD,
    Batch,
    Certificate,
    CertificatesRequest,
    CheckpointRequest,
    FetchCertificates,
    Header,
    RequestBatches,
    SubmitTransactions,
    Vote,
    tag_of,
)

if TYPE_CHECKING:
    from narwhal.config.parameters import Parameters

__all__ = ["HONEST_LOAD_BYTES", "ROUTES", "ROUTE_NAMES", "derived_route_limits", "limits_by_tag"]

#: The benchmarked honest load: 50,000 transactions/s of 512 bytes.
HONEST_LOAD_BYTES = 50_000 * 512
#: Transactions per SubmitTransactions frame an honest client sends (our client: 250).
CLIENT_FRAME_TRANSACTIONS = 250
#: Honest rounds per second are assumed to stay below this (or 2 / max_header_delay).
MIN_HONEST_ROUNDS = 50.0
#: The certificate fetcher's and the bulk fetch's fastest pace toward one peer (its
#: backoff starts at 0.1 s; a bulk response takes longer than that to process).
FETCH_PASSES_PER_SECOND = 10.0
#: A state transfer's fastest pace of questions to one peer (narwhal.primary.state_sync:
#: a few per search, searches >= 0.2 s apart).
CHECKPOINT_QUESTIONS_PER_SECOND = 5.0
#: A burst holds this many seconds of the sustained rate.
BURST_SECONDS = 5.0
#: Bytes of a header besides its payload and parents (author, round, signature, CBOR
#: heads), of one parent or payload entry, and of one vote of a certificate.
HEADER_OVERHEAD, PARENT_BYTES, PAYLOAD_ENTRY_BYTES, VOTE_BYTES = 128, 34, 38, 100


def _limit(rate: float, *, byte_rate: float | None = None, byte_burst: float | None = None,
           min_burst: float = 1.0) -> RouteLimit:
    return RouteLimit(rate, max(min_burst, BURST_SECONDS * rate), byte_rate,
                      None if byte_rate is None else max(byte_rate * BURST_SECONDS,
                                                         byte_burst or 0))


def derived_route_limits(p: Parameters, committee_size: int, workers: int) -> dict[str, RouteLimit]:
    """The default limit of each limited route, by message name (see the module docstring)."""
    h, n = p.rate_limit_headroom, committee_size
    rounds = max(MIN_HONEST_ROUNDS, 2 / p.max_header_delay)
    batches = HONEST_LOAD_BYTES / p.batch_size + 1 / p.max_batch_delay  # per worker, per s
    per_round = HEADER_OVERHEAD + PARENT_BYTES * n
    payload = PAYLOAD_ENTRY_BYTES * workers * batches
    largest_header = per_round + PAYLOAD_ENTRY_BYTES * MAX_HEADER_PAYLOAD
    round_burst = 2 * p.gc_depth
    return {
        "Header": _limit(h * rounds, min_burst=round_burst,
                         byte_rate=h * (rounds * per_round + payload), byte_burst=largest_header),
        "Certificate": _limit(h * rounds, min_burst=round_burst,
                              byte_rate=h * (rounds * (per_round + VOTE_BYTES * n) + payload),
                              byte_burst=largest_header + VOTE_BYTES * n),
        "Vote": _limit(h * rounds, min_burst=round_burst),
        "CertificatesRequest": _limit(h * n * FETCH_PASSES_PER_SECOND),
        "FetchCertificates": _limit(h * FETCH_PASSES_PER_SECOND),
        "CheckpointRequest": _limit(h * CHECKPOINT_QUESTIONS_PER_SECOND),
        "Batch": RouteLimit(h * batches, BURST_SECONDS * h * batches, h * HONEST_LOAD_BYTES,
                            2 * p.max_pending_transactions_bytes + p.batch_size
                            + p.max_transaction_size),
        "RequestBatches": _limit(h * 2 * rounds),
        "SubmitTransactions": RouteLimit(
            h * HONEST_LOAD_BYTES / (512 * CLIENT_FRAME_TRANSACTIONS),
            BURST_SECONDS * h * HONEST_LOAD_BYTES / (512 * CLIENT_FRAME_TRANSACTIONS),
            h * HONEST_LOAD_BYTES, p.max_pending_transactions_bytes),
    }


#: The message class of each limited route name.
ROUTES = {cls.__name__: cls for cls in (Header, Certificate, Vote, CertificatesRequest,
                                        FetchCertificates, CheckpointRequest, Batch,
                                        RequestBatches, SubmitTransactions)}


def limits_by_tag(limits: Mapping[str, RouteLimit]) -> dict[int, RouteLimit]:
    """``limits`` keyed by the message type tag a frame carries, as the limiter looks them up."""
    return {tag_of(ROUTES[name]): limit for name, limit in limits.items()}


#: The route name of each limited message type tag (for the limiter's counters).
ROUTE_NAMES = {tag_of(cls): name for name, cls in ROUTES.items()}
