"""Typed Narwhal messages, one registry of type tags, and a strict canonical CBOR codec.

One job per module; imports run one way, definitions -> codec -> schema:

- :mod:`~narwhal.messages.schema`: the field kinds (``Scalar``, ``Pair``, ``Nested``,
  ``ListOf``) and the generic walker that validates and measures every message by them; the
  ``Message`` base, ``Link`` and the registry of type tags (``class_for``, ``tag_of``).
- :mod:`~narwhal.messages.codec`: ``encode``, ``decode``, ``decode_as`` and ``splice``, and
  the guarantees they keep (canonical bodies only, one error type).
- :mod:`~narwhal.messages.definitions`: every message class (its tag, link and fields) and
  the ``MAX_*`` limits that bound its collections.

This module only re-exports them: import from ``narwhal.messages``. The limits and the field
kinds are re-exported too, outside ``__all__`` (``X as X``), for the modules that size their
own bounds by a limit and the tests that walk the schemas.
"""

from __future__ import annotations

from narwhal.messages.codec import Encoded, EncodedField, decode, decode_as, encode, splice
from narwhal.messages.definitions import MAX_BATCH_TRANSACTIONS as MAX_BATCH_TRANSACTIONS
from narwhal.messages.definitions import MAX_BATCHES_PER_RESPONSE as MAX_BATCHES_PER_RESPONSE
from narwhal.messages.definitions import (
    MAX_CERTIFICATES_PER_RESPONSE as MAX_CERTIFICATES_PER_RESPONSE,
)
from narwhal.messages.definitions import MAX_COMMITTEE_SIZE as MAX_COMMITTEE_SIZE
from narwhal.messages.definitions import MAX_DIGESTS_PER_REQUEST as MAX_DIGESTS_PER_REQUEST
from narwhal.messages.definitions import MAX_HEADER_PAYLOAD as MAX_HEADER_PAYLOAD
from narwhal.messages.definitions import MAX_OUTPUT_TRANSACTIONS as MAX_OUTPUT_TRANSACTIONS
from narwhal.messages.definitions import MAX_SUBMIT_TRANSACTIONS as MAX_SUBMIT_TRANSACTIONS
from narwhal.messages.definitions import (
    Ack,
    Batch,
    BatchesResponse,
    Certificate,
    CertificatesRequest,
    CertificatesResponse,
    Checkpoint,
    CheckpointRequest,
    Cleanup,
    FetchCertificates,
    Header,
    OrderedOutput,
    OthersBatch,
    OurBatch,
    RequestBatches,
    SubmitTransactions,
    Subscribe,
    SubscribeAccepted,
    Synchronize,
    TransactionsAccepted,
    Vote,
    batch_body_digest,
    batch_length,
)
from narwhal.messages.schema import BYTES as BYTES
from narwhal.messages.schema import DIGEST as DIGEST
from narwhal.messages.schema import PUBLIC_KEY as PUBLIC_KEY
from narwhal.messages.schema import REGISTRY, Link, Message, class_for, schema_of, tag_of
from narwhal.messages.schema import SIGNATURE as SIGNATURE
from narwhal.messages.schema import U32 as U32
from narwhal.messages.schema import U64 as U64
from narwhal.messages.schema import ListOf as ListOf
from narwhal.messages.schema import Nested as Nested
from narwhal.messages.schema import Pair as Pair
from narwhal.messages.schema import Scalar as Scalar

__all__ = [
    "REGISTRY", "Ack", "Batch", "BatchesResponse", "Certificate", "CertificatesRequest",
    "CertificatesResponse", "Checkpoint", "CheckpointRequest", "Cleanup", "Encoded", "EncodedField", "FetchCertificates", "Header",
    "Link", "Message", "OrderedOutput", "OthersBatch", "OurBatch", "RequestBatches",
    "SubmitTransactions", "Subscribe", "SubscribeAccepted", "Synchronize",
    "TransactionsAccepted", "Vote", "batch_body_digest", "batch_length", "class_for", "decode",
    "decode_as", "encode", "schema_of", "splice", "tag_of",
]
