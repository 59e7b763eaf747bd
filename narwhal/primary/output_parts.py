"""Ordered-output parts as wire bytes, spliced from stored batch bodies (never re-encoded).

Why: serving the output used to decode every batch our worker returned (a ~500 KB
``BatchesResponse``), check its digest, and encode it again as an ``OrderedOutput``: about
0.8 ms of the primary's event loop per batch and per subscriber, so a few subscribers
replaying history took the loop from consensus. An ``OrderedOutput``'s last field,
``transactions``, is the same CBOR array as a ``Batch`` body's only field, so a part is
its other fields followed by the batch body without its one-byte array head
(``messages.splice`` with an ``EncodedField``): exactly the bytes ``encode`` would produce
(``tests/primary/test_output_parts.py`` checks it), built with one copy.

The batch comes from our own worker as the ``BatchesResponse`` to a one-digest
``RequestBatches``, read undecoded: ``82 81 <batch body> 80`` when the worker holds it (one
batch, no missing digest), anything else when it does not. The caller accepts the body only
if its digest is the one the certificate committed (:func:`~narwhal.messages.batch_body_digest`,
which it runs off the event loop), so the bytes are the batch our worker decoded and
validated when it stored it.
"""

from __future__ import annotations

from narwhal.errors import MessageError, MessageTooLarge
from narwhal.messages import (
    MAX_BATCH_TRANSACTIONS,
    MAX_OUTPUT_TRANSACTIONS,
    Encoded,
    EncodedField,
    OrderedOutput,
    batch_length,
    splice,
)

__all__ = ["EMPTY_BATCH_BODY", "batch_body_of_response", "output_part"]

#: The canonical body of a batch without transactions: the part of an empty certificate.
EMPTY_BATCH_BODY = b"\x81\x80"

# every valid batch fits in one part: the output's limit is the batch's
assert MAX_OUTPUT_TRANSACTIONS >= MAX_BATCH_TRANSACTIONS


def batch_body_of_response(body: bytes) -> memoryview | None:
    """The batch body inside the ``BatchesResponse`` body answering a request for one
    digest, or None when the response does not hold exactly one batch (the digest is
    listed missing)."""
    if len(body) >= 5 and body[:3] == b"\x82\x81\x81" and body[-1] == 0x80:
        return memoryview(body)[2:-1]
    return None


def output_part(index: int, round_: int, author: bytes, certificate: bytes, batch: int,
                batches: int, batch_body: bytes | memoryview) -> Encoded:
    """The ``OrderedOutput`` of part ``batch`` of ``batches`` of ``index``, carrying the
    transactions of the canonical batch body ``batch_body``; the other fields are checked
    as ``encode`` checks them."""
    count = batch_length(bytes(batch_body[:9]))  # the head of its list is all we read
    if count > MAX_OUTPUT_TRANSACTIONS:
        raise MessageTooLarge(f"OrderedOutput.transactions: {count} items exceed "
                              f"MAX_OUTPUT_TRANSACTIONS = {MAX_OUTPUT_TRANSACTIONS}")
    if len(batch_body) < 2:
        raise MessageError("Batch: empty body")
    return splice(OrderedOutput, index, round_, author, certificate, batch, batches,
                  EncodedField(memoryview(batch_body)[1:]))
