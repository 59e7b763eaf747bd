"""Typed Narwhal messages, one registry of type tags, and a strict canonical CBOR codec.

Every message is an ``@attrs.frozen`` class registered under a u16 type tag (``REGISTRY``); the
frame layer carries the tag, so a body is only the message: a CBOR array of its fields in
declared order, nested messages as nested arrays. Each field declares its *kind* once
(``DIGEST``, ``U64``, ``ListOf(DIGEST, limit, sorted=True)``, ``Nested(Header)``, ...) and one
generic walker reads those kinds to validate, flatten and measure every message, so there is no
hand-written validator per class. Sequence fields hold tuples (lists are converted).

Guarantees (the spec fragment ``docs/wire_spec_messages.md`` states the same rules):

* ``encode(msg)`` validates ``msg`` exactly as ``decode`` would and returns its RFC 8949
  §4.2.1 core deterministic encoding, so we never send what we would refuse ourselves.
* ``decode(tag, body)`` accepts only a body that is the canonical encoding of one valid
  message, hence ``encode(decode(tag, body)) == body`` for every accepted body: digests
  computed over canonical bytes cannot be forged by re-encoding. It raises only
  ``MessageError`` (``UnknownMessageType`` for an unregistered tag, ``MessageTooLarge`` for a
  collection over its limit), naming the message class and field and chaining the cause.

How canonicity is checked without re-encoding: the decoder refuses CBOR tags (every tag is
routed to ``_NO_TAGS``) and indefinite lengths, and the schema admits only unsigned ints,
byte strings and definite arrays. For those, the canonical encoding is the unique shortest
one (every head in its shortest form, RFC 8949 §4.2.1): any other encoding has a longer head
somewhere, and trailing bytes add length too. So a decoded body is canonical iff its length
equals the canonical length of the decoded value, which ``size_all`` computes from the
validated value: a product for every kind of constant size (digests, keys, signatures, vote
pairs), a few C-speed passes per list otherwise (~0.13 ms for a 500 KB batch of 1,000
transactions on these loaded 2-core machines, against ~0.5 ms to re-encode it; tests check
the verdict against re-encoding).

The walker's cost is per message and per list, not per item: each class's codec
(``Nested``) is built once, a scalar field is checked inline, and a location string for
errors is only built on the way to an error or into a nested array (``bench/codec.py``).

Digests are SHA-256 over a domain string and canonical bytes, cached on the instance. A
``Batch`` keeps its canonical body (the decoded bytes, or its first encoding), so a 500 KB
batch is never encoded twice and its digest is computed from the bytes that travelled.
"""

from __future__ import annotations

import enum
import hashlib
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import repeat
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import attrs
import cbor2

from narwhal.errors import MessageError, MessageTooLarge, UnknownMessageType

__all__ = [
    "REGISTRY", "Ack", "Batch", "BatchesResponse", "Certificate", "CertificatesRequest",
    "CertificatesResponse", "Cleanup", "Encoded", "FetchCertificates", "Header", "Link", "Message",
    "OrderedOutput", "OthersBatch", "OurBatch", "RequestBatches",
    "SubmitTransactions", "Subscribe", "SubscribeAccepted", "Synchronize",
    "TransactionsAccepted", "Vote", "batch_length", "class_for", "decode", "decode_as", "encode",
    "schema_of", "splice", "tag_of",
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

# --- field kinds: declared once per field, read by the generic walker -------------------------

T = TypeVar("T")


def _describe(v: object) -> str:
    """Name a decoded value in CBOR terms for error messages."""
    if isinstance(v, (bytes, tuple)):
        return f"{'bstr' if isinstance(v, bytes) else 'array'} of length {len(v)}"
    if type(v) is int:
        return f"uint {v}" if v >= 0 else f"negative int {v}"
    names = {str: "tstr", float: "float", bool: "bool", type(None): "null"}
    return names.get(type(v), "map" if isinstance(v, Mapping) else type(v).__name__)


def _reject(values: Sequence[Any], where: str, bad: Callable[[Any], bool], expected: str) -> None:
    """Raise MessageError for the first value failing a vectorized check. ``where`` holds a
    ``{}`` where the value's index goes when ``values`` are the items of a list."""
    i = next(i for i, v in enumerate(values) if bad(v))
    raise MessageError(f"{where.format(i)}: expected {expected}, got {_describe(values[i])}")


def _head_len(n: int) -> int:
    """Bytes of the shortest CBOR head for argument ``n`` (RFC 8949 §3, §4.2.1)."""
    return 1 if n < 24 else 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5 if n < 1 << 32 else 9


def _heads_len(args: Sequence[int]) -> int:
    """Sum of ``_head_len`` over ``args``: one multiplication when all heads share a width."""
    if len(args) < 2:  # one list's length, one uint field: no min/max passes
        return _head_len(args[0]) if args else 0
    width = _head_len(min(args))
    return width * len(args) if width == _head_len(max(args)) else sum(map(_head_len, args))


# Every kind offers the same members to the walker:
#
# * ``parse_all(values, where)`` validates a sequence of values (say the items of one list)
#   and returns them parsed, raising MessageError at ``where``. Vectorized: a few C-speed passes per
#   sequence, not one Python call per item.
# * ``parse_one(value, where, name)`` validates one field of one message: the same verdict,
#   result and error as ``parse_all((value,), f"{where}.{name}")[0]`` (tests check it), for
#   less. A scalar tests the common valid case inline and leaves every other value to
#   ``parse_all``, which decides; the location string is built only then, or to descend into
#   an array (a list, a nested message), never per scalar field.
# * ``size_all(values)`` is the canonical encoded size of a sequence of *valid* values (decode
#   measures only what ``_parse`` accepted): a product when ``fixed``, else a few C-speed
#   passes, and for nested messages one call per field over all the values, not per value.
# * ``fixed`` is the canonical size shared by every valid value when there is one (a digest:
#   34 bytes; a (key, signature) pair: 101), else None: such values are sized by a product.


@attrs.frozen
class Scalar:
    """A uint or a bstr. ``parse_all``/``size_all`` take a sequence of values, so a list of
    100,000 transactions costs a few C-speed passes, not 100,000 Python calls."""

    name: str  # how the spec and errors call it
    py_type: type  # exact Python type: bool is not an int here
    size: int | None = None  # exact length of a bstr
    lo: int = 0  # inclusive range of a uint
    hi: int = 2**64 - 1
    fixed: int | None = attrs.field(init=False, eq=False, repr=False)
    depth: ClassVar[int] = 0

    @fixed.default
    def _fixed(self) -> int | None:
        return None if self.size is None else _head_len(self.size) + self.size

    def parse_all(self, values: Sequence[Any], where: str) -> Sequence[Any]:
        if not set(map(type, values)) <= {self.py_type}:
            _reject(values, where, lambda v: type(v) is not self.py_type, self.name)
        if self.size is not None and not set(map(len, values)) <= {self.size}:
            _reject(values, where, lambda v: len(v) != self.size, self.name)
        if self.py_type is int and values and not self.lo <= min(values) <= max(values) <= self.hi:
            _reject(values, where, lambda v: not self.lo <= v <= self.hi, self.name)
        return values

    def parse_one(self, value: Any, where: str, name: str) -> Any:
        exact_type = type(value) is self.py_type
        if exact_type and (self.lo <= value <= self.hi if self.py_type is int
                           else self.size is None or len(value) == self.size):
            return value
        return self.parse_all((value,), f"{where}.{name}")[0]

    def size_all(self, values: Sequence[Any]) -> int:
        if self.fixed is not None:
            return self.fixed * len(values)
        if self.py_type is int:
            return _heads_len(values)
        lengths = list(map(len, values))
        return sum(lengths) + _heads_len(lengths)

    def to_wire(self, value: T) -> T:
        return value


DIGEST = Scalar("digest (bstr of 32 bytes)", bytes, size=32)
PUBLIC_KEY = Scalar("public key (bstr of 32 bytes)", bytes, size=32)
SIGNATURE = Scalar("signature (bstr of 64 bytes)", bytes, size=64)
BYTES = Scalar("bstr", bytes)
U64 = Scalar("u64", int)
U32 = Scalar("u32", int, hi=2**32 - 1)


@attrs.frozen
class Pair:
    """A 2-element array of two scalars."""

    first: Scalar
    second: Scalar
    fixed: int | None = attrs.field(init=False, eq=False, repr=False)
    depth: ClassVar[int] = 1

    @fixed.default
    def _fixed(self) -> int | None:
        if self.first.fixed is None or self.second.fixed is None:
            return None
        return 1 + self.first.fixed + self.second.fixed

    @property
    def name(self) -> str:
        return f"[{self.first.name}, {self.second.name}]"

    def parse_all(self, values: Sequence[Any], where: str) -> Sequence[Any]:
        if not set(map(type, values)) <= {tuple}:
            _reject(values, where, lambda v: type(v) is not tuple, self.name)
        if not set(map(len, values)) <= {2}:
            _reject(values, where, lambda v: len(v) != 2, self.name)
        firsts, seconds = zip(*values) if values else ((), ())
        self.first.parse_all(firsts, where + "[0]")
        self.second.parse_all(seconds, where + "[1]")
        return values

    def parse_one(self, value: Any, where: str, name: str) -> Any:
        return self.parse_all((value,), f"{where}.{name}")[0]

    def size_all(self, values: Sequence[Any]) -> int:
        if self.fixed is not None:
            return self.fixed * len(values)
        firsts, seconds = zip(*values) if values else ((), ())
        return len(values) + self.first.size_all(firsts) + self.second.size_all(seconds)

    def to_wire(self, value: T) -> T:
        return value


@attrs.frozen
class Nested:
    """Another message's fields as a nested array (a Header in a Certificate). It is also a
    message class's codec: ``decode`` and ``encode`` use one instance per class
    (``_NESTED``), and what sizing and flattening need from the schema is derived once, here."""

    cls: type[Message]
    #: Array head plus the fields whose canonical size is ``fixed``: the same for every value.
    _constant: int = attrs.field(init=False, eq=False, repr=False)
    #: (index, kind) of the other fields, sized column by column.
    _variable: tuple[tuple[int, Kind], ...] = attrs.field(init=False, eq=False, repr=False)
    _names: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)
    #: Some field holds messages, which ``to_wire`` must turn into arrays.
    _holds_messages: bool = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        fields = schema_of(self.cls)
        kinds = [kind for _, kind in fields]
        init = object.__setattr__  # frozen: set the derived attributes once
        init(self, "_constant", _head_len(len(fields)) + sum(
            kind.fixed for kind in kinds if kind.fixed is not None))
        init(self, "_variable", tuple((i, k) for i, k in enumerate(kinds) if k.fixed is None))
        init(self, "_names", tuple(name for name, _ in fields))
        init(self, "_holds_messages", any(
            isinstance(k, Nested) or isinstance(k, ListOf) and isinstance(k.item, Nested)
            for k in kinds))

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def depth(self) -> int:
        return 1 + max((kind.depth for _, kind in schema_of(self.cls)), default=0)

    @property
    def fixed(self) -> int | None:
        return None if self._variable else self._constant

    def parse_all(self, values: Sequence[Any], where: str) -> Sequence[Any]:
        return tuple(_parse(self.cls, v, where.format(i)) for i, v in enumerate(values))

    def parse_one(self, value: Any, where: str, name: str) -> Any:
        return _parse(self.cls, value, f"{where}.{name}")

    def size_all(self, values: Sequence[Any]) -> int:
        """Column by column: one ``size_all`` per variable field over all the values (the
        rows are valid, so each is a tuple of one value per field)."""
        size = self._constant * len(values)
        if self._variable and values:
            columns = tuple(zip(*values))
            size += sum(kind.size_all(columns[i]) for i, kind in self._variable)
        return size

    def to_wire(self, value: Message) -> tuple[Any, ...]:
        wire = tuple(map(getattr, repeat(value), self._names))
        if self._holds_messages:
            wire = tuple(kind.to_wire(v) for (_, kind), v in zip(schema_of(self.cls), wire))
        return wire


@attrs.frozen
class ListOf:
    """A definite array of at most ``limit`` items; ``sorted`` demands strictly increasing
    keys (the item, or a pair's first element): sorted bytewise, without duplicates."""

    item: Scalar | Pair | Nested
    limit: int
    limit_name: str
    sorted: bool = False
    fixed: ClassVar[None] = None  # the item count varies

    @property
    def name(self) -> str:
        order = ", sorted, unique" if self.sorted else ""
        return f"array of {self.item.name} (at most {self.limit_name} = {self.limit}{order})"

    @property
    def depth(self) -> int:
        return 1 + self.item.depth

    def parse_all(self, values: Sequence[Any], where: str) -> Sequence[Any]:
        if not set(map(type, values)) <= {tuple}:
            _reject(values, where, lambda v: type(v) is not tuple, "array")
        return [self._parse_list(items, where.format(i)) for i, items in enumerate(values)]

    def parse_one(self, value: Any, where: str, name: str) -> Any:
        at = f"{where}.{name}"
        if type(value) is not tuple:
            _reject((value,), at, lambda v: True, "array")
        return self._parse_list(value, at)

    def _parse_list(self, items: tuple[Any, ...], at: str) -> Sequence[Any]:
        if len(items) > self.limit:
            raise MessageTooLarge(f"{at}: {len(items)} items exceed {self.limit_name} = {self.limit}")
        parsed = self.item.parse_all(items, at + "[{}]")
        if self.sorted:
            keys = tuple(map(operator.itemgetter(0), parsed)) if isinstance(self.item, Pair) else parsed
            if not all(map(operator.lt, keys, keys[1:])):
                j = next(j for j in range(1, len(keys)) if not keys[j - 1] < keys[j])
                raise MessageError(f"{at}[{j}]: not sorted strictly after item {j - 1}")
        return parsed

    def size_all(self, values: Sequence[Any]) -> int:
        lengths = list(map(len, values))
        if self.item.fixed is not None:
            return _heads_len(lengths) + self.item.fixed * sum(lengths)
        return _heads_len(lengths) + sum(map(self.item.size_all, values))

    def to_wire(self, value: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(map(self.item.to_wire, value)) if isinstance(self.item, Nested) else value


Kind = Scalar | Pair | Nested | ListOf


def _field(kind: Kind) -> Any:
    """Declare a message field of the given kind (sequence fields accept any iterable)."""
    return attrs.field(metadata={"kind": kind}, converter=tuple if isinstance(kind, ListOf) else None)


def _cache() -> Any:
    """A per-instance cache slot, outside the schema, equality and repr."""
    return attrs.field(default=None, init=False, eq=False, repr=False)


def schema_of(cls: type[Message]) -> tuple[tuple[str, Kind], ...]:
    """The wire fields of a registered message class, in order: (name, kind)."""
    return _SCHEMA[cls]


# --- the registry -----------------------------------------------------------------------------


class Link(enum.Enum):
    """Which link may carry a message as a request or one-way; a response travels back on
    its request's link. The connection layer refuses a message on any other link."""

    ANY = "any"  # Ack answers requests on every link
    PRIMARY_PRIMARY = "primary<->primary"
    WORKER_WORKER = "worker<->worker"  # worker i to worker i of another authority
    WORKER_TO_PRIMARY = "worker->primary"  # to its own primary
    PRIMARY_TO_WORKER = "primary->worker"  # to its own workers
    CLIENT_TO_WORKER = "client->worker"
    CLIENT_PRIMARY = "client<->primary"  # ordered-output subscription


@attrs.frozen
class Message:
    """Base of every message. Class attributes set by registration: ``TAG`` (u16),
    ``direction`` (a Link), ``response`` (the answer's class, None if it is itself a response
    or one-way)."""

    TAG: ClassVar[int]
    direction: ClassVar[Link]
    response: ClassVar[type[Message] | None]
    KEEP_BODY: ClassVar[bool] = False  # cache the canonical body on the instance (Batch)


_registry: dict[int, type[Message]] = {}
#: tag -> message class, read-only.
REGISTRY: Mapping[int, type[Message]] = MappingProxyType(_registry)
_SCHEMA: dict[type[Message], tuple[tuple[str, Kind], ...]] = {}
_DEPTH: dict[type[Message], int] = {}  # deepest CBOR nesting each class's schema allows
_NESTED: dict[type[Message], Nested] = {}  # each class's codec, built once

M = TypeVar("M", bound=type[Message])


def _message(tag: int, direction: Link, response: type[Message] | None = None) -> Callable[[M], M]:
    def register(cls: M) -> M:
        assert 0 <= tag <= 0xFFFF and tag not in _registry, hex(tag)
        cls.TAG, cls.direction, cls.response = tag, direction, response
        _registry[tag] = cls
        _SCHEMA[cls] = tuple(
            (a.name, a.metadata["kind"]) for a in attrs.fields(cls) if "kind" in a.metadata)
        _NESTED[cls] = Nested(cls)
        _DEPTH[cls] = _NESTED[cls].depth
        return cls

    return register


def _memo_digest(msg: Any, domain: bytes, preimage: Callable[[], bytes]) -> bytes:
    """SHA-256(domain || preimage()), computed once per instance."""
    if msg._digest is None:
        h = hashlib.sha256(domain)
        h.update(preimage())
        object.__setattr__(msg, "_digest", h.digest())
    return msg._digest  # type: ignore[no-any-return]


def _dumps(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


# --- the messages -----------------------------------------------------------------------------

DIGESTS = ListOf(DIGEST, MAX_DIGESTS_PER_REQUEST, "MAX_DIGESTS_PER_REQUEST")
PARENTS = ListOf(DIGEST, MAX_COMMITTEE_SIZE, "MAX_COMMITTEE_SIZE", sorted=True)
PAYLOAD = ListOf(Pair(DIGEST, U32), MAX_HEADER_PAYLOAD, "MAX_HEADER_PAYLOAD", sorted=True)
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
    signature: bytes = _field(SIGNATURE)
    _digest: bytes | None = _cache()

    def digest(self) -> bytes:
        """SHA-256 of the domain and the header array without its signature."""
        return _memo_digest(self, b"narwhal-py/header\x00", lambda: _dumps(
            (self.author, self.round, self.payload, self.parents)))


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
        return [cls(Header(a, 0, (), (), bytes(64)), ()) for a in sorted(authorities)]


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
        return _memo_digest(self, b"narwhal-py/batch\x00", lambda: encode(self))


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


# --- the codec --------------------------------------------------------------------------------


def class_for(tag: int) -> type[Message]:
    """The message class registered under ``tag``; UnknownMessageType otherwise."""
    try:
        return _registry[tag]
    except (KeyError, TypeError):
        raise UnknownMessageType(f"unknown message type tag {tag!r}") from None


def tag_of(msg: Message | type[Message]) -> int:
    """The type tag of a message or message class."""
    cls = msg if isinstance(msg, type) else type(msg)
    if _registry.get(getattr(cls, "TAG", -1)) is not cls:
        raise TypeError(f"{cls!r} is not a registered message class")
    return cls.TAG


M2 = TypeVar("M2", bound=Message)


def _fields(cls: type[Message], value: Any, where: str) -> list[Any]:
    """Validate a decoded CBOR value against ``cls``'s schema; its parsed field values."""
    fields = _SCHEMA[cls]
    if type(value) is not tuple or len(value) != len(fields):
        names = ", ".join(name for name, _ in fields)
        raise MessageError(f"{where}: expected an array of {len(fields)} fields [{names}], "
                           f"got {_describe(value)}")
    return [kind.parse_one(v, where, name) for (name, kind), v in zip(fields, value)]


def _parse(cls: type[M2], value: Any, where: str) -> M2:
    """Validate a decoded CBOR value against ``cls``'s schema and build the message."""
    return cls(*_fields(cls, value, where))


class _NoTags(dict[int, Any]):
    """cbor2 ``semantic_decoders`` that refuses every tag before its built-in decoder runs."""

    def __missing__(self, tag: int) -> Callable[..., Any]:
        def refuse(*_: object) -> Any:
            raise MessageError(f"CBOR tag {tag} is not allowed")

        return refuse


_NO_TAGS = _NoTags()


def encode(msg: Message) -> bytes:
    """The canonical CBOR body of ``msg``; MessageError if ``msg`` breaks its schema."""
    body: bytes | None = getattr(msg, "_body", None)
    if body is None:
        cls = type(msg)
        wire = _NESTED[cls].to_wire(msg)
        _fields(cls, wire, cls.__name__)  # the checks decode makes (without building a copy)
        body = _dumps(wire)
        if msg.KEEP_BODY:
            object.__setattr__(msg, "_body", body)
    return body


def decode(tag: int, body: bytes | bytearray | memoryview) -> Message:
    """Decode and fully validate a body; see the module docstring for the guarantees."""
    cls = class_for(tag)
    data = bytes(body)  # no copy when body is already bytes
    try:
        value = cbor2.loads(data, immutable=True, allow_indefinite=False,
                            max_depth=_DEPTH[cls], semantic_decoders=_NO_TAGS)
    except cbor2.CBORDecodeError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, MessageError) else exc
        raise MessageError(f"{cls.__name__}: invalid CBOR: {cause}") from exc
    msg = _parse(cls, value, cls.__name__)
    if len(data) != _NESTED[cls].size_all((value,)):
        canonical = _dumps(value)  # only on failure: say why
        why = "trailing bytes after" if data.startswith(canonical) else "non-canonical CBOR in"
        raise MessageError(f"{cls.__name__}: {why} the body (RFC 8949 §4.2.1 required)")
    if cls.KEEP_BODY:
        object.__setattr__(msg, "_body", data)
    return msg


@attrs.frozen
class Encoded:
    """A message already in canonical wire form. A handler returns one to answer with bytes
    it holds (stored certificates, stored batches) instead of decoding them into messages
    only for ``encode`` to turn them back into the same bytes."""

    tag: int
    body: bytes


def _array_head(n: int) -> bytes:
    """The shortest CBOR head of a definite array of ``n`` items (major type 4)."""
    if n < 24:
        return bytes((0x80 | n,))
    width = _head_len(n) - 1
    return bytes((0x80 | {1: 24, 2: 25, 4: 26, 8: 27}[width],)) + n.to_bytes(width, "big")


def splice(cls: type[Message], *fields: Any) -> Encoded:
    """``cls``'s canonical body, with each list-of-messages field given as its items'
    canonical bodies rather than as messages.

    Why it is sound: a canonical CBOR array is its head followed by its items' canonical
    encodings, and a nested message encodes exactly as its own body. So the result is the
    bytes ``encode`` would produce, without decoding or re-encoding a single item (serving
    a page of 1,000 stored certificates that way took ~140 ms of event loop). The caller
    vouches for the items, which must be valid bodies of the nested type: ours come from
    the store, which only holds messages that passed ``decode``. Every other field, and the
    item counts, are checked as ``encode`` checks them.
    """
    schema = _SCHEMA[cls]
    if len(fields) != len(schema):
        raise MessageError(f"{cls.__name__}: {len(fields)} fields given, {len(schema)} expected")
    parts = [_array_head(len(schema))]
    for (name, kind), value in zip(schema, fields):
        if isinstance(kind, ListOf) and isinstance(kind.item, Nested):
            if len(value) > kind.limit:
                raise MessageTooLarge(f"{cls.__name__}.{name}: {len(value)} items exceed "
                                      f"{kind.limit_name} = {kind.limit}")
            parts.append(_array_head(len(value)))
            parts.extend(value)
        else:
            kind.parse_one(value, cls.__name__, name)
            parts.append(_dumps(kind.to_wire(value)))
    return Encoded(tag_of(cls), b"".join(parts))


MessageT = TypeVar("MessageT", bound=Message)


def decode_as(cls: type[MessageT], body: bytes | bytearray | memoryview) -> MessageT:
    """``decode`` of a body known to hold a ``cls`` (e.g. read back from our store), typed."""
    msg = decode(tag_of(cls), body)
    assert isinstance(msg, cls)
    return msg
