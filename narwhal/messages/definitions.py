"""The messages of the protocol: one ``@attrs.frozen`` class per message, and the limits
that bound every collection in them.

Each class is registered with its type tag, the link that may carry it and its answer's
class (``_message``), and declares each wire field with its kind (``_field``). That
declaration is the whole schema: the generic walker of :mod:`~narwhal.messages.schema` and
the codec of :mod:`~narwhal.messages.codec` read it, so no class has a validator or an
encoder of its own. The limits are named here, next to the fields they bound, and other
modules size their own bounds by them (``MAX_COMMITTEE_SIZE``, ``MAX_BATCH_TRANSACTIONS``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import attrs

from narwhal.errors import MessageError
from narwhal.messages.codec import _dumps, _memo_digest, encode
from narwhal.messages.schema import (
    BYTES,
    DIGEST,
    PUBLIC_KEY,
    SIGNATURE,
    U32,
    U64,
    Link,
    ListOf,
    Message,
    Nested,
    Pair,
    Scalar,
    _cache,
    _field,
    _message,
)

__all__ = [
    "BATCH_DOMAIN", "MAX_BATCHES_PER_RESPONSE", "MAX_BATCH_TRANSACTIONS",
    "MAX_CERTIFICATES_PER_RESPONSE", "MAX_COMMITTEE_SIZE", "MAX_DIGESTS_PER_REQUEST",
    "MAX_HEADER_PAYLOAD", "MAX_OUTPUT_TRANSACTIONS", "MAX_SUBMIT_TRANSACTIONS", "Ack", "Batch",
    "BatchesResponse", "Certificate", "CertificatesRequest", "CertificatesResponse", "Checkpoint",
    "CheckpointRequest", "Cleanup",
    "FetchCertificates", "Header", "OrderedOutput", "OthersBatch", "OurBatch", "RequestBatches",
    "SubmitTransactions", "Subscribe", "SubscribeAccepted", "Synchronize",
    "TransactionsAccepted", "Vote", "batch_body_digest", "batch_length",
]

# --- limits: every collection in a message is bounded ----------------------------------------

#: Batch digests one header may carry: bounds header size and the batch sync one header demands.
MAX_HEADER_PAYLOAD = 10_000
#: Parents per header, votes per certificate: no committee is larger, so more is an attack.
MAX_COMMITTEE_SIZE = 1_000
#: Digests per request (certificates, batches, sync): bounds the work one request can demand.
MAX_DIGESTS_PER_REQUEST = 1_000
#: Certificates per response, and FetchCertificates.max_items: bounds one catch-up answer.
MAX_CERTIFICATES_PER_RESPONSE = 1_000
#: Batches per BatchesResponse: bounds the objects one response builds (the frame bounds bytes).
MAX_BATCHES_PER_RESPONSE = 1_000
#: Transactions per batch: bounds per-transaction work (objects, checks) of one batch.
MAX_BATCH_TRANSACTIONS = 100_000
#: Transactions per client submission: a client must not monopolise a worker with one frame.
MAX_SUBMIT_TRANSACTIONS = 10_000
#: Transactions per ordered-output item (at most a batch's worth).
MAX_OUTPUT_TRANSACTIONS = 100_000

# --- the messages -----------------------------------------------------------------------------

DIGESTS = ListOf(DIGEST, MAX_DIGESTS_PER_REQUEST, "MAX_DIGESTS_PER_REQUEST")
PARENTS = ListOf(DIGEST, MAX_COMMITTEE_SIZE, "MAX_COMMITTEE_SIZE", sorted=True)
PAYLOAD = ListOf(Pair(DIGEST, U32), MAX_HEADER_PAYLOAD, "MAX_HEADER_PAYLOAD", sorted=True)
WEAK_LINKS = ListOf(Pair(DIGEST, U64), MAX_COMMITTEE_SIZE, "MAX_COMMITTEE_SIZE", sorted=True)
VOTES = ListOf(Pair(PUBLIC_KEY, SIGNATURE), MAX_COMMITTEE_SIZE, "MAX_COMMITTEE_SIZE", sorted=True)
PARTS = Scalar("u32 in 1..MAX_HEADER_PAYLOAD", int, lo=1, hi=MAX_HEADER_PAYLOAD)
MAX_ITEMS = Scalar("u32 in 1..MAX_CERTIFICATES_PER_RESPONSE", int, lo=1,
                   hi=MAX_CERTIFICATES_PER_RESPONSE)


@_message(0x0000, Link.ANY)
@attrs.frozen
class Ack(Message):
    """Generic empty success response."""


@_message(0x0101, Link.PRIMARY_PRIMARY, Ack)
@attrs.frozen
class Header(Message):
    """A primary's proposal for a round; ``signature`` is ed25519 over ``digest()``."""

    author: bytes = _field(PUBLIC_KEY)
    round: int = _field(U64)
    payload: tuple[tuple[bytes, int], ...] = _field(PAYLOAD)  # (batch digest, worker id)
    parents: tuple[bytes, ...] = _field(PARENTS)  # certificate digests of round - 1
    #: Bullshark's weak links: (certificate digest, its round) of rounds below round - 1
    #: that the parents do not reach, so a late certificate is ordered by the next leader
    #: instead of being orphaned (``docs/protocol.md``, "Weak links").
    weak_links: tuple[tuple[bytes, int], ...] = _field(WEAK_LINKS)
    signature: bytes = _field(SIGNATURE)
    _digest: bytes | None = _cache()

    def digest(self) -> bytes:
        """SHA-256 of the domain and the header array without its signature."""
        return _memo_digest(self, b"narwhal-py/header\x00", lambda: _dumps(
            (self.author, self.round, self.payload, self.parents, self.weak_links)))


@_message(0x0102, Link.PRIMARY_PRIMARY, Ack)
@attrs.frozen
class Vote(Message):
    """``author``'s vote for the header ``header_digest`` of ``origin`` at ``round``."""

    header_digest: bytes = _field(DIGEST)
    round: int = _field(U64)
    origin: bytes = _field(PUBLIC_KEY)
    author: bytes = _field(PUBLIC_KEY)
    signature: bytes = _field(SIGNATURE)
    _digest: bytes | None = _cache()

    def digest(self) -> bytes:
        """What the voter signs. The voter is left out, so a certificate's verifier
        recomputes it from the header alone."""
        return _memo_digest(self, b"narwhal-py/vote\x00", lambda: _dumps(
            (self.header_digest, self.round, self.origin)))


@_message(0x0103, Link.PRIMARY_PRIMARY, Ack)
@attrs.frozen
class Certificate(Message):
    """A header with a quorum of (voter, signature) pairs, sorted by voter."""

    header: Header = _field(Nested(Header))  # noqa: RUF009 (a kind, not a default)
    votes: tuple[tuple[bytes, bytes], ...] = _field(VOTES)
    _digest: bytes | None = _cache()

    def digest(self) -> bytes:
        return _memo_digest(self, b"narwhal-py/certificate\x00", lambda: _dumps(
            (self.header.digest(), self.header.round, self.header.author)))

    @classmethod
    def genesis(cls, authorities: Iterable[bytes]) -> list[Certificate]:
        """The round-0 certificates every node starts from, one per authority, sorted."""
        return [cls(Header(a, 0, (), (), (), bytes(64)), ()) for a in sorted(authorities)]


@_message(0x0105, Link.PRIMARY_PRIMARY)
@attrs.frozen
class CertificatesResponse(Message):
    certificates: tuple[Certificate, ...] = _field(ListOf(
        Nested(Certificate), MAX_CERTIFICATES_PER_RESPONSE, "MAX_CERTIFICATES_PER_RESPONSE"))


@_message(0x0104, Link.PRIMARY_PRIMARY, CertificatesResponse)
@attrs.frozen
class CertificatesRequest(Message):
    digests: tuple[bytes, ...] = _field(DIGESTS)


@_message(0x0106, Link.PRIMARY_PRIMARY, CertificatesResponse)
@attrs.frozen
class FetchCertificates(Message):
    """Catch-up: certificates with round > after_round, oldest first."""

    after_round: int = _field(U64)
    max_items: int = _field(MAX_ITEMS)


@_message(0x0108, Link.PRIMARY_PRIMARY)
@attrs.frozen
class Checkpoint(Message):
    """The consensus state right after committing the leader of ``leader_round``: the
    output ``index`` of that leader, and per authority the highest round of its output.
    Every honest node that committed that leader holds the same one."""

    leader_round: int = _field(U64)
    index: int = _field(U64)
    last_committed: tuple[tuple[bytes, int], ...] = _field(
        ListOf(Pair(PUBLIC_KEY, U64), MAX_COMMITTEE_SIZE, "MAX_COMMITTEE_SIZE", sorted=True))


@_message(0x0107, Link.PRIMARY_PRIMARY, Checkpoint)
@attrs.frozen
class CheckpointRequest(Message):
    """State transfer: the responder's earliest checkpoint with leader_round >= min_round."""

    min_round: int = _field(U64)


@_message(0x0201, Link.WORKER_WORKER, Ack)
@attrs.frozen
class Batch(Message):
    """Opaque transactions; acked only once stored durably. Keeps its canonical body."""

    KEEP_BODY = True
    transactions: tuple[bytes, ...] = _field(
        ListOf(BYTES, MAX_BATCH_TRANSACTIONS, "MAX_BATCH_TRANSACTIONS"))
    _digest: bytes | None = _cache()
    _body: bytes | None = _cache()

    def digest(self) -> bytes:
        """SHA-256 of the domain and the canonical body (never re-encoded once known)."""
        return _memo_digest(self, BATCH_DOMAIN, lambda: encode(self))


#: What a batch digest hashes before the batch's canonical body (wire_spec.md §9.4).
BATCH_DOMAIN = b"narwhal-py/batch\x00"


def batch_body_digest(body: bytes | memoryview) -> bytes:
    """The digest of the ``Batch`` whose canonical body is ``body``, without decoding it
    (hashlib releases the GIL on large inputs, so this may run in a thread)."""
    h = hashlib.sha256(BATCH_DOMAIN)
    h.update(body)
    return h.digest()


def batch_length(body: bytes) -> int:
    """The number of transactions in a canonical ``Batch`` body, read from the head of its
    one list: for a stored batch, whose transactions we do not need (a Synchronize for a
    batch we already hold only reports its count), decoding ~1,000 of them is wasted."""
    if len(body) < 2 or body[0] != 0x81 or body[1] >> 5 != 4:
        raise MessageError("Batch: body is not an array holding one list")
    info = body[1] & 0x1F
    if info < 24:
        return info
    width = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if width is None or len(body) < 2 + width:
        raise MessageError("Batch: bad length in the head of its list")
    return int.from_bytes(body[2:2 + width], "big")


@_message(0x0203, Link.WORKER_WORKER)
@attrs.frozen
class BatchesResponse(Message):
    batches: tuple[Batch, ...] = _field(
        ListOf(Nested(Batch), MAX_BATCHES_PER_RESPONSE, "MAX_BATCHES_PER_RESPONSE"))
    missing: tuple[bytes, ...] = _field(DIGESTS)


@_message(0x0202, Link.WORKER_WORKER, BatchesResponse)
@attrs.frozen
class RequestBatches(Message):
    digests: tuple[bytes, ...] = _field(DIGESTS)


@attrs.frozen
class _BatchReport(Message):
    """A worker tells its primary about a stored batch (OurBatch and OthersBatch)."""

    digest: bytes = _field(DIGEST)
    worker_id: int = _field(U32)
    #: How many transactions the batch holds: lets the primary count committed transactions.
    transactions: int = _field(U32)


@_message(0x0301, Link.WORKER_TO_PRIMARY, Ack)
@attrs.frozen
class OurBatch(_BatchReport):
    """Our worker's batch reached a quorum of acks."""


@_message(0x0302, Link.WORKER_TO_PRIMARY, Ack)
@attrs.frozen
class OthersBatch(_BatchReport):
    """Our worker stored another authority's batch."""


@_message(0x0401, Link.PRIMARY_TO_WORKER, Ack)
@attrs.frozen
class Synchronize(Message):
    """Fetch these batches, from ``target``'s worker first."""

    digests: tuple[bytes, ...] = _field(DIGESTS)
    target: bytes = _field(PUBLIC_KEY)


@_message(0x0402, Link.PRIMARY_TO_WORKER, Ack)
@attrs.frozen
class Cleanup(Message):
    round: int = _field(U64)  # drop state below this round


@_message(0x0502, Link.CLIENT_TO_WORKER)
@attrs.frozen
class TransactionsAccepted(Message):
    count: int = _field(U32)


@_message(0x0501, Link.CLIENT_TO_WORKER, TransactionsAccepted)
@attrs.frozen
class SubmitTransactions(Message):
    transactions: tuple[bytes, ...] = _field(
        ListOf(BYTES, MAX_SUBMIT_TRANSACTIONS, "MAX_SUBMIT_TRANSACTIONS"))


@_message(0x0602, Link.CLIENT_PRIMARY)
@attrs.frozen
class SubscribeAccepted(Message):
    next_index: int = _field(U64)


@_message(0x0601, Link.CLIENT_PRIMARY, SubscribeAccepted)
@attrs.frozen
class Subscribe(Message):
    from_index: int = _field(U64)  # stream the ordered output from this index on


@_message(0x0603, Link.CLIENT_PRIMARY)
@attrs.frozen
class OrderedOutput(Message):
    """One-way, server to client: part ``batch`` of ``batches`` of consensus index ``index``
    (one part per batch of the committed certificate, so a part never exceeds a frame; an
    empty certificate is one part with no transactions). An index is complete when its part
    ``batches - 1`` arrived; a client resumes at the first index it did not fully receive."""

    index: int = _field(U64)
    round: int = _field(U64)
    author: bytes = _field(PUBLIC_KEY)
    certificate: bytes = _field(DIGEST)
    batch: int = _field(U32)  # 0 .. batches - 1, in the certificate's payload order
    batches: int = _field(PARTS)
    transactions: tuple[bytes, ...] = _field(
        ListOf(BYTES, MAX_OUTPUT_TRANSACTIONS, "MAX_OUTPUT_TRANSACTIONS"))
