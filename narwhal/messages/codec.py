"""The strict canonical CBOR codec: ``encode``, ``decode``, ``decode_as`` and ``splice``.

It knows no message in particular: it finds a class by its type tag and reads its schema in
:mod:`~narwhal.messages.schema`, where the classes of :mod:`~narwhal.messages.definitions`
register themselves, and never imports those classes (they import it, for their digests).

Guarantees (``wire_spec.md`` §9 states the same rules for a peer written from it):

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

Digests are SHA-256 over a domain string and canonical bytes, cached on the instance. A
``Batch`` keeps its canonical body (the decoded bytes, or its first encoding), so a 500 KB
batch is never encoded twice and its digest is computed from the bytes that travelled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import cbor2

from narwhal.errors import MessageError, MessageTooLarge
from narwhal.messages.schema import (
    _DEPTH,
    _NESTED,
    _SCHEMA,
    ListOf,
    Message,
    Nested,
    _fields,
    _head_len,
    _parse,
    class_for,
    tag_of,
)

__all__ = ["Encoded", "EncodedField", "decode", "decode_as", "encode", "splice"]


def _memo_digest(msg: Any, domain: bytes, preimage: Callable[[], bytes]) -> bytes:
    """SHA-256(domain || preimage()), computed once per instance."""
    if msg._digest is None:
        h = hashlib.sha256(domain)
        h.update(preimage())
        object.__setattr__(msg, "_digest", h.digest())
    return msg._digest  # type: ignore[no-any-return]


def _dumps(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


# --- the codec --------------------------------------------------------------------------------


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


@attrs.frozen
class EncodedField:
    """One field of a message given to :func:`splice` already in canonical CBOR: e.g. the
    transactions of an ``OrderedOutput``, which are a stored batch body minus its head."""

    cbor: bytes | memoryview


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
    item counts, are checked as ``encode`` checks them, except an :class:`EncodedField`,
    which the caller vouches for as a whole.
    """
    schema = _SCHEMA[cls]
    if len(fields) != len(schema):
        raise MessageError(f"{cls.__name__}: {len(fields)} fields given, {len(schema)} expected")
    parts: list[bytes | memoryview] = [_array_head(len(schema))]
    for (name, kind), value in zip(schema, fields):
        if isinstance(value, EncodedField):
            parts.append(value.cbor)
        elif isinstance(kind, ListOf) and isinstance(kind.item, Nested):
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
