"""Tests for narwhal.messages: round trips, every field kind's failures, canonicity, hostile input.

Strategies, valid examples and bad values are all derived from the message schemas, so a new
message type is covered by adding it to the registry.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from narwhal import messages as m
from narwhal.errors import ErrorCode, MessageError, MessageTooLarge, UnknownMessageType
from narwhal.messages import codec  # the codec's private helpers

CLASSES = sorted(m.REGISTRY.values(), key=m.tag_of)
TAGS = sorted(m.REGISTRY)
DIGESTED = [m.Header, m.Vote, m.Certificate, m.Batch]
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- schema-driven helpers ---------------------------------------------------------------------


def strategy(kind: Any) -> st.SearchStrategy[Any]:
    """Valid values of a kind (lists kept short; limits are tested separately)."""
    if isinstance(kind, m.Scalar):
        if kind.py_type is int:
            return st.integers(kind.lo, kind.hi)
        return st.binary(min_size=kind.size or 0, max_size=kind.size or 40)
    if isinstance(kind, m.Pair):
        return st.tuples(strategy(kind.first), strategy(kind.second))
    if isinstance(kind, m.Nested):
        return st.builds(kind.cls, *(strategy(k) for _, k in m.schema_of(kind.cls)))
    assert isinstance(kind, m.ListOf)
    if not kind.sorted:
        return st.lists(strategy(kind.item), max_size=4).map(tuple)
    key = (lambda p: p[0]) if isinstance(kind.item, m.Pair) else (lambda x: x)
    return st.lists(strategy(kind.item), max_size=4, unique_by=key).map(
        lambda xs: tuple(sorted(xs, key=key)))


def messages() -> st.SearchStrategy[m.Message]:
    return st.one_of(*(strategy(m.Nested(cls)) for cls in CLASSES))


def item(kind: Any, i: int) -> Any:
    """The i-th of a sequence of distinct valid values, increasing with i."""
    if isinstance(kind, m.Scalar):
        if kind.py_type is int:
            return min(kind.lo + i, kind.hi)
        return i.to_bytes(kind.size, "big") if kind.size else b"tx%d" % i
    if isinstance(kind, m.Pair):
        return (item(kind.first, i), item(kind.second, i))
    if isinstance(kind, m.Nested):
        return example(kind.cls)
    return (item(kind.item, i),)


def example(cls: type[m.Message]) -> m.Message:
    """A small valid instance with one item in every list."""
    return cls(*(item(kind, 1) for _, kind in m.schema_of(cls)))


def wire(msg: m.Message) -> Any:
    return m.Nested(type(msg)).to_wire(msg)


def replace(tree: Any, path: tuple[int, ...], value: Any) -> Any:
    if not path:
        return value
    i, rest = path[0], path[1:]
    return tree[:i] + (replace(tree[i], rest, value),) + tree[i + 1:]


def scalar_paths(cls: type[m.Message], prefix: tuple[int, ...] = (), name: str = "") -> Iterator[
        tuple[tuple[int, ...], m.Scalar, str]]:
    """Every scalar position in example(cls): (path in the wire tree, kind, label in errors)."""
    name = name or cls.__name__
    for i, (field, kind) in enumerate(m.schema_of(cls)):
        path, label = prefix + (i,), f"{name}.{field}"
        if isinstance(kind, m.ListOf):
            kind, path, label = kind.item, path + (0,), label + "[0]"
        if isinstance(kind, m.Scalar):
            yield path, kind, label
        elif isinstance(kind, m.Pair):
            yield path + (0,), kind.first, label + "[0]"
            yield path + (1,), kind.second, label + "[1]"
        else:
            yield from scalar_paths(kind.cls, path, label)


def bad_values(kind: m.Scalar) -> list[Any]:
    common = [None, True, 1.5, {}, "text", cbor2.CBORTag(99, 1)]
    if kind.py_type is int:
        return common + [b"\x01", kind.lo - 1, kind.hi + 1, 2**64, -(2**64) - 1]
    sizes = [kind.size - 1, kind.size + 1, 0] if kind.size else []
    return common + [7] + [bytes(n) for n in sizes]


def decode_tree(cls: type[m.Message], tree: Any) -> m.Message:
    return m.decode(m.tag_of(cls), cbor2.dumps(tree, canonical=True))


SCALAR_CASES = [
    pytest.param(cls, path, bad, label, id=f"{label}={bad!r}"[:60])
    for cls in CLASSES
    for path, kind, label in scalar_paths(cls)
    for bad in bad_values(kind)
]
LIST_CASES = [
    pytest.param(cls, i, kind, id=f"{cls.__name__}.{field}")
    for cls in CLASSES
    for i, (field, kind) in enumerate(m.schema_of(cls))
    if isinstance(kind, m.ListOf)
]


# --- registry ----------------------------------------------------------------------------------


def test_registry_is_consistent() -> None:
    assert len(CLASSES) == 21
    for tag, cls in m.REGISTRY.items():
        assert m.class_for(tag) is cls and m.tag_of(cls) == tag == cls.TAG
        assert m.tag_of(example(cls)) == tag
        assert isinstance(cls.direction, m.Link)
        assert cls.response is None or cls.response in CLASSES
    assert m.Header.response is m.Ack and m.FetchCertificates.response is m.CertificatesResponse
    assert m.OrderedOutput.response is None and m.Ack.direction is m.Link.ANY
    with pytest.raises(TypeError):
        m.REGISTRY[0x7777] = m.Ack  # type: ignore[index]


@pytest.mark.parametrize("tag", [0x0001, 0x0100, 0x7777, 0xFFFF, -1, 1 << 16])
def test_unknown_tag(tag: int) -> None:
    with pytest.raises(UnknownMessageType, match="unknown message type") as info:
        m.decode(tag, b"\x80")
    assert info.value.code is ErrorCode.UNKNOWN_TYPE


def test_tag_of_refuses_non_messages() -> None:
    for bad in (m.Message, int, object()):
        with pytest.raises(TypeError):
            m.tag_of(bad)  # type: ignore[arg-type]


# --- round trips and digests -------------------------------------------------------------------


@SLOW
@given(msg=messages())
def test_round_trip(msg: m.Message) -> None:
    body = m.encode(msg)
    assert body == cbor2.dumps(wire(msg), canonical=True)
    decoded = m.decode(m.tag_of(msg), body)
    assert decoded == msg and hash(decoded) == hash(msg)
    assert m.encode(decoded) == body
    assert m.decode(m.tag_of(msg), memoryview(body)) == msg
    assert m.decode(m.tag_of(msg), bytearray(body)) == msg
    if type(msg) in DIGESTED:
        assert decoded.digest() == msg.digest() == type(msg)(*wire_fields(msg)).digest()


def wire_fields(msg: m.Message) -> list[Any]:
    return [getattr(msg, name) for name, _ in m.schema_of(type(msg))]


def sha(domain: bytes, value: Any) -> bytes:
    return hashlib.sha256(domain + cbor2.dumps(value, canonical=True)).digest()


@SLOW
@given(h=strategy(m.Nested(m.Header)), sig=st.binary(min_size=64, max_size=64))
def test_header_digest_excludes_the_signature(h: m.Header, sig: bytes) -> None:
    expected = sha(b"narwhal-py/header\x00", [h.author, h.round, h.payload, h.parents, h.weak_links])
    assert h.digest() == expected == m.Header(*wire_fields(h)[:5], sig).digest()


@SLOW
@given(v=strategy(m.Nested(m.Vote)), voter=st.binary(min_size=32, max_size=32))
def test_vote_digest_excludes_the_voter(v: m.Vote, voter: bytes) -> None:
    expected = sha(b"narwhal-py/vote\x00", [v.header_digest, v.round, v.origin])
    assert v.digest() == expected
    assert m.Vote(v.header_digest, v.round, v.origin, voter, bytes(64)).digest() == expected


@SLOW
@given(c=strategy(m.Nested(m.Certificate)))
def test_certificate_digest(c: m.Certificate) -> None:
    h = c.header
    assert c.digest() == sha(b"narwhal-py/certificate\x00", [h.digest(), h.round, h.author])
    assert m.Certificate(h, ()).digest() == c.digest()  # votes are not part of it


def test_genesis() -> None:
    keys = [bytes([k]) * 32 for k in (9, 3, 7)]
    genesis = m.Certificate.genesis(keys)
    assert [c.header.author for c in genesis] == sorted(keys)
    for c in genesis:
        assert (c.header.round, c.header.payload, c.header.parents, c.votes) == (0, (), (), ())
        assert c.header.signature == bytes(64)
        assert m.decode(m.tag_of(c), m.encode(c)) == c
    again = m.Certificate.genesis(reversed(keys))
    assert [c.digest() for c in again] == [c.digest() for c in genesis]
    assert len({c.digest() for c in genesis}) == 3


def test_large_batch_digest_uses_the_received_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    txs = [os.urandom(512) for _ in range(1000)]
    body = cbor2.dumps([txs], canonical=True)
    assert 500_000 < len(body) < 520_000
    dumps = []
    monkeypatch.setattr(codec, "_dumps", lambda v: dumps.append(v) or cbor2.dumps(v, canonical=True))
    batch = m.decode(m.Batch.TAG, body)
    assert batch.transactions == tuple(txs)
    assert batch.digest() == hashlib.sha256(b"narwhal-py/batch\x00" + body).digest()
    assert m.encode(batch) is body and dumps == []  # never re-encoded
    fresh = m.Batch(txs)
    assert fresh.digest() == batch.digest() and m.encode(fresh) == body
    assert len(dumps) == 1  # encoded once, for the digest and the send


def test_sequence_fields_become_tuples() -> None:
    b = m.Batch([b"a", b"b"])
    assert b.transactions == (b"a", b"b") and b == m.Batch((b"a", b"b"))
    assert hash(b) == hash(m.Batch((b"a", b"b")))


# --- schema violations -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_wrong_arity(cls: type[m.Message]) -> None:
    tree = wire(example(cls))
    for bad in (tree + (0,), tree[:-1], 0, b"", None):
        if bad == tree:  # Ack has no field to drop
            continue
        with pytest.raises(MessageError, match=f"^{cls.__name__}: expected an array") as info:
            decode_tree(cls, bad)
        assert type(info.value) is MessageError


@pytest.mark.parametrize("cls, path, bad, label", SCALAR_CASES)
def test_bad_scalar(cls: type[m.Message], path: tuple[int, ...], bad: Any, label: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_tree(cls, replace(wire(example(cls)), path, bad))
    assert type(info.value) is MessageError and info.value.code is ErrorCode.MALFORMED
    # A container or tag at the deepest position is refused by the depth cap instead.
    assert any(s in str(info.value) for s in (label, "CBOR tag", "nesting depth"))


@pytest.mark.parametrize("cls, index, kind", LIST_CASES)
def test_list_limits(cls: type[m.Message], index: int, kind: m.ListOf) -> None:
    tree = wire(example(cls))
    at_limit = tuple(wire_item(kind.item, i) for i in range(kind.limit + 1))
    decode_tree(cls, replace(tree, (index,), at_limit[:-1]))
    with pytest.raises(MessageTooLarge, match=f"exceed {kind.limit_name}") as info:
        decode_tree(cls, replace(tree, (index,), at_limit))
    assert info.value.code is ErrorCode.TOO_LARGE
    for not_a_list in (b"", 0, None, "x"):
        with pytest.raises(MessageError, match="expected array"):
            decode_tree(cls, replace(tree, (index,), not_a_list))


def wire_item(kind: Any, i: int) -> Any:
    value = item(kind, i)
    return wire(value) if isinstance(kind, m.Nested) else value


@pytest.mark.parametrize(
    "cls, index, kind", [p for p in LIST_CASES if p.values[2].sorted])
def test_sorted_lists(cls: type[m.Message], index: int, kind: m.ListOf) -> None:
    tree = wire(example(cls))
    a, b, c = (item(kind.item, i) for i in range(3))
    decode_tree(cls, replace(tree, (index,), (a, b, c)))
    for bad in ((a, c, b), (b, a), (a, a), (a, b, b)):
        with pytest.raises(MessageError, match="not sorted"):
            decode_tree(cls, replace(tree, (index,), bad))
    if isinstance(kind.item, m.Pair):  # a duplicate key with a different second element
        dup = (a[0], item(kind.item.second, 5))
        with pytest.raises(MessageError, match="not sorted"):
            decode_tree(cls, replace(tree, (index,), (a, dup)))


def test_pair_shape() -> None:
    tree = wire(example(m.Header))
    for bad in ((item(m.DIGEST, 1),), (item(m.DIGEST, 1), 0, 0), b"x", 5):
        with pytest.raises(MessageError, match=r"Header\.payload\[0\]: expected \[digest"):
            decode_tree(m.Header, replace(tree, (2, 0), bad))


def test_errors_name_the_nested_position() -> None:
    certs = [wire(example(m.Certificate))] * 3
    certs[2] = replace(certs[2], (0, 3, 0), b"short")
    with pytest.raises(MessageError, match=r"CertificatesResponse\.certificates\[2\]\.header"
                                           r"\.parents\[0\]: expected digest"):
        decode_tree(m.CertificatesResponse, (tuple(certs),))


def test_fetch_max_items_range() -> None:
    for good in (1, m.MAX_CERTIFICATES_PER_RESPONSE):
        decode_tree(m.FetchCertificates, (0, good))
    for bad in (0, m.MAX_CERTIFICATES_PER_RESPONSE + 1):
        with pytest.raises(MessageError, match="max_items"):
            decode_tree(m.FetchCertificates, (0, bad))


def test_encode_refuses_invalid_messages() -> None:
    d1, d2 = item(m.DIGEST, 1), item(m.DIGEST, 2)
    bad = [
        m.Header(bytes(32), 1, (), (d2, d1), (), bytes(64)),
        m.Vote(bytes(31), 1, bytes(32), bytes(32), bytes(64)),
        m.Cleanup(-1),
        m.OurBatch(d1, True, 1),
        m.Batch(["text"]),
        m.FetchCertificates(0, 0),
    ]
    for msg in bad:
        with pytest.raises(MessageError, match=type(msg).__name__):
            m.encode(msg)


# --- non-canonical and non-CBOR-core bodies ----------------------------------------------------

VOTE = example(m.Vote)
VOTE_BODY = m.encode(VOTE)
CLEANUP_5 = bytes.fromhex("8105")

NON_CANONICAL = {
    "uint in 2 bytes": ("8118" "05"),
    "uint in 3 bytes": ("8119" "0005"),
    "uint in 9 bytes": ("811b" "0000000000000005"),
    "array length in 2 bytes": ("98" "01" "05"),
    "indefinite array": ("9f" "05" "ff"),
    "tagged uint (bignum)": ("81" "c241" "05"),
    "self-described body": ("d9d9f7" "8105"),
    "trailing byte": ("8105" "00"),
    "two items": ("8105" "8105"),
    "float round": ("81" "f94500"),
    "null round": ("81" "f6"),
    "undefined round": ("81" "f7"),
    "simple value round": ("81" "e0"),
    "bool round": ("81" "f5"),
    "map body": ("a1" "00" "05"),
    "negative round": ("81" "24"),
    "empty body": "",
    "truncated": ("81"),
    "reserved additional info": ("81" "1c"),
}


@pytest.mark.parametrize("hexbody", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_cleanup_hostile_bodies(hexbody: str) -> None:
    assert m.decode(m.Cleanup.TAG, CLEANUP_5) == m.Cleanup(5)
    with pytest.raises(MessageError) as info:
        m.decode(m.Cleanup.TAG, bytes.fromhex(hexbody))
    assert type(info.value) is MessageError and str(info.value).startswith("Cleanup")


def test_non_canonical_lengths_in_a_vote() -> None:
    long_bstr = VOTE_BODY.replace(b"\x58\x20", b"\x59\x00\x20", 1)  # digest length in 3 bytes
    indefinite_bstr = b"\x85\x5f\x50" + VOTE.header_digest[:16] + b"\x50" + \
        VOTE.header_digest[16:] + b"\xff" + VOTE_BODY[35:]
    for body, why in ((long_bstr, "non-canonical"), (indefinite_bstr, "indefinite"),
                      (VOTE_BODY + b"\x00", "trailing bytes")):
        assert cbor2.loads(body) == cbor2.loads(VOTE_BODY)  # same value, other bytes
        with pytest.raises(MessageError, match=why):
            m.decode(m.Vote.TAG, body)


def head(major: int, n: int, extra_bytes: int) -> bytes:
    """A CBOR head with its argument in 0 (immediate), 1, 2, 4 or 8 following bytes."""
    if extra_bytes == 0:
        return bytes([major << 5 | n])
    return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[extra_bytes]]) + n.to_bytes(extra_bytes, "big")


BOUNDARIES = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]


@pytest.mark.parametrize("n", BOUNDARIES)
def test_every_longer_head_is_refused(n: int) -> None:
    """At each width boundary the shortest head is accepted and every longer one refused."""
    widths = [w for w in (0, 1, 2, 4, 8) if n < (24 if w == 0 else 1 << (8 * w))]
    for w in widths:
        body = b"\x81" + head(0, n, w)
        if w == widths[0]:
            assert m.decode(m.Cleanup.TAG, body) == m.Cleanup(n) and m.encode(m.Cleanup(n)) == body
        else:
            with pytest.raises(MessageError, match="non-canonical"):
                m.decode(m.Cleanup.TAG, body)
    if n <= 65536:  # the same for byte-string lengths and array lengths
        def batch(array_width: int, tx_width: int) -> bytes:  # [[b"", b"x" * n]]
            return (head(4, 1, 0) + head(4, 2, array_width) + head(2, 0, 0) +
                    head(2, n, tx_width) + b"x" * n)

        assert m.decode(m.Batch.TAG, batch(0, widths[0])) == m.Batch([b"", b"x" * n])
        for body in [batch(1, widths[0])] + [batch(0, w) for w in widths[1:]]:
            with pytest.raises(MessageError, match="non-canonical"):
                m.decode(m.Batch.TAG, body)


@pytest.mark.parametrize("tag", [0, 1, 2, 24, 25, 28, 29, 35, 256, 258, 55799, 2**64 - 1])
def test_every_cbor_tag_is_refused_before_its_decoder_runs(tag: int) -> None:
    body = cbor2.dumps([cbor2.CBORTag(tag, "(a+)+$"), bytes(32)])  # a tag where a list goes
    with pytest.raises(MessageError, match=f"CBOR tag {tag} is not allowed") as info:
        m.decode(m.Synchronize.TAG, body)
    assert isinstance(info.value.__cause__, cbor2.CBORDecodeError)


def test_nesting_deeper_than_the_schema() -> None:
    for cls in CLASSES:
        depth = m.Nested(cls).depth
        body = b"\x81" * (depth + 1) + b"\x00"  # a uint one array deeper than the schema allows
        with pytest.raises(MessageError, match="depth"):
            m.decode(m.tag_of(cls), body)
    with pytest.raises(MessageError, match="depth"):
        m.decode(m.Cleanup.TAG, b"\x81" * 100_000 + b"\x00")


# --- hostile input: nothing but MessageError may escape ------------------------------------------


def cbor_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.integers(-(2**70), 2**70), st.binary(max_size=70), st.text(max_size=8),
        st.floats(), st.none(), st.booleans(), st.just(cbor2.undefined),
        st.integers(0, 19).map(cbor2.CBORSimpleValue),
    )
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.integers() | st.text(), inner, max_size=3),
        st.builds(cbor2.CBORTag, st.integers(0, 2**64 - 1), inner),
    ), max_leaves=20)


def check_hostile(tag: int, body: bytes) -> None:
    """Only MessageError may escape, and the canonicity verdict (a length comparison) must
    agree with the obvious oracle: re-encode the leniently decoded value and compare."""
    try:
        msg = m.decode(tag, body)
    except MessageError as exc:
        if "non-canonical" in str(exc) or "trailing" in str(exc):
            assert cbor2.dumps(cbor2.loads(body), canonical=True) != body
        return
    assert m.encode(msg) == body == cbor2.dumps(cbor2.loads(body), canonical=True)


@SLOW
@given(tag=st.sampled_from(TAGS) | st.integers(0, 0xFFFF), body=st.binary(max_size=300))
def test_random_bytes(tag: int, body: bytes) -> None:
    check_hostile(tag, body)


@SLOW
@given(tag=st.sampled_from(TAGS), value=cbor_values())
def test_random_cbor(tag: int, value: Any) -> None:
    check_hostile(tag, cbor2.dumps(value))


@SLOW
@given(msg=messages(), data=st.data())
def test_mutated_valid_bodies(msg: m.Message, data: st.DataObject) -> None:
    """Flip, insert or delete bytes of a valid body: the verdict must match a re-encoding oracle."""
    body = bytearray(m.encode(msg))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert":
            body.insert(at, data.draw(st.integers(0, 255)))
        elif at < len(body):
            body[at:at + 1] = b"" if op == "delete" else bytes([body[at] ^ data.draw(st.integers(1, 255))])
    check_hostile(m.tag_of(msg), bytes(body))


@SLOW
@given(msg=messages(), data=st.data(), value=cbor_values())
def test_replaced_subtree(msg: m.Message, data: st.DataObject, value: Any) -> None:
    """Replace one node of a valid wire tree with random CBOR."""
    tree, path = wire(msg), []
    node = tree
    while isinstance(node, tuple) and node and data.draw(st.booleans()):
        path.append(data.draw(st.integers(0, len(node) - 1)))
        node = node[path[-1]]
    check_hostile(m.tag_of(msg), cbor2.dumps(replace(tree, tuple(path), value)))


# --- the codec's shortcuts agree with the plain checks -------------------------------------------

FIELD_KINDS = sorted({kind for cls in CLASSES for _, kind in m.schema_of(cls)} |
                     {kind.item for cls in CLASSES for _, kind in m.schema_of(cls)
                      if isinstance(kind, m.ListOf)}, key=repr)
SCALARS = list(dict.fromkeys(
    [k for k in FIELD_KINDS if isinstance(k, m.Scalar)] +
    [part for k in FIELD_KINDS if isinstance(k, m.Pair) for part in (k.first, k.second)]))
#: Every scalar's bad values and range ends, and a valid value of each: what a scalar's inline
#: check must sort exactly as its vectorized check does.
EDGES = list({repr(v): v for k in SCALARS
              for v in bad_values(k) + [k.lo, k.hi, item(k, 1)]}.values())


def frozen(value: Any) -> Any:
    """Lists as tuples, as the decoder (``immutable=True``) returns them."""
    return tuple(map(frozen, value)) if isinstance(value, (list, tuple)) else value


def outcome(check: Any) -> tuple[str, Any]:
    try:
        return "ok", check()
    except MessageError as exc:
        return type(exc).__name__, str(exc)


def assert_parse_one_agrees(kind: Any, value: Any) -> None:
    one = outcome(lambda: kind.parse_one(value, "Msg", "field"))
    every = outcome(lambda: kind.parse_all((value,), "Msg.field")[0])
    assert one == every


@pytest.mark.parametrize("kind", SCALARS, ids=lambda k: k.name)
def test_scalar_parse_one_agrees_with_parse_all(kind: m.Scalar) -> None:
    """A scalar field's inline check accepts and refuses exactly what ``parse_all`` does."""
    for value in EDGES:
        assert_parse_one_agrees(kind, value)


@SLOW
@given(kind=st.sampled_from(FIELD_KINDS), data=st.data())
def test_parse_one_agrees_with_parse_all(kind: Any, data: st.DataObject) -> None:
    """``parse_one`` (the per-field path) accepts, returns and refuses exactly what
    ``parse_all`` does for that single value, with the same error type and message: for
    valid values, and for valid values with one node replaced by an edge value or random CBOR."""
    value = kind.to_wire(data.draw(strategy(kind)))
    if data.draw(st.booleans()):
        path, node = [], value
        while isinstance(node, tuple) and node and data.draw(st.booleans()):
            path.append(data.draw(st.integers(0, len(node) - 1)))
            node = node[path[-1]]
        new = data.draw(st.sampled_from(EDGES) | cbor_values().map(frozen))
        value = replace(value, tuple(path), new)
    assert_parse_one_agrees(kind, value)


@SLOW
@given(data=st.data(), cls=st.sampled_from(CLASSES))
def test_size_all_is_the_canonical_length(data: st.DataObject, cls: type[m.Message]) -> None:
    """Sizing valid values column by column, with constant-size kinds sized by a product,
    gives the length of their canonical encoding, for any number of values at once."""
    nested = m.Nested(cls)
    rows = [nested.to_wire(msg) for msg in data.draw(st.lists(strategy(nested), max_size=4))]
    assert nested.size_all(rows) == sum(len(cbor2.dumps(r, canonical=True)) for r in rows)
    for (_, kind), column in zip(m.schema_of(cls), zip(*rows)):
        assert kind.size_all(column) == sum(len(cbor2.dumps(x, canonical=True)) for x in column)
        if kind.fixed is not None:
            assert {len(cbor2.dumps(x, canonical=True)) for x in column} <= {kind.fixed}


# --- splice: responses built from stored bodies ------------------------------------------------

SPLICED = [m.CertificatesResponse, m.BatchesResponse]


def spliced_fields(msg: m.Message) -> list[Any]:
    """``msg``'s fields, with each list of nested messages given as the items' bodies."""
    return [tuple(map(m.encode, value)) if isinstance(kind, m.ListOf) and isinstance(kind.item, m.Nested)
            else value for (_, kind), value in zip(m.schema_of(type(msg)), wire_fields(msg))]


@SLOW
@given(msg=st.one_of(*(strategy(m.Nested(cls)) for cls in SPLICED)))
def test_splice_gives_the_bytes_encode_gives(msg: m.Message) -> None:
    spliced = m.splice(type(msg), *spliced_fields(msg))
    assert spliced == m.Encoded(m.tag_of(msg), m.encode(msg))
    assert m.decode(spliced.tag, spliced.body) == msg


@pytest.mark.parametrize("count", [0, 1, 23, 24, 255, 256, 1_000])
def test_splice_array_heads_are_canonical_at_every_width(count: int) -> None:
    certificate = example(m.Certificate)
    msg = m.CertificatesResponse((certificate,) * count)
    assert m.splice(m.CertificatesResponse, [m.encode(certificate)] * count).body == m.encode(msg)


@pytest.mark.parametrize(("count", "head"), [
    (23, b"\x97"), (24, b"\x98\x18"), (255, b"\x98\xff"), (256, b"\x99\x01\x00"),
    (65_535, b"\x99\xff\xff"), (65_536, b"\x9a\x00\x01\x00\x00"),
    (1 << 32, b"\x9b" + (1 << 32).to_bytes(8, "big")),
])
def test_array_head_is_the_shortest_cbor_head(count: int, head: bytes) -> None:
    assert codec._array_head(count) == head
    if count <= 65_536:
        assert cbor2.dumps([0] * count).startswith(head)


def test_splice_checks_what_encode_checks() -> None:
    body = m.encode(example(m.Certificate))
    with pytest.raises(MessageTooLarge, match="MAX_CERTIFICATES_PER_RESPONSE"):
        m.splice(m.CertificatesResponse, [body] * (m.MAX_CERTIFICATES_PER_RESPONSE + 1))
    with pytest.raises(MessageError, match="missing"):
        m.splice(m.BatchesResponse, [], (b"short",))  # not a 32-byte digest
    with pytest.raises(MessageError, match="2 fields given, 1 expected"):
        m.splice(m.CertificatesResponse, [body], ())


@pytest.mark.parametrize("count", [0, 1, 23, 24, 255, 256, 1_000, 65_536])
def test_batch_length_reads_the_count_without_decoding(count: int) -> None:
    body = m.encode(m.Batch((b"t",) * count)) if count <= m.MAX_BATCH_TRANSACTIONS else \
        b"\x81" + codec._array_head(count)  # a head alone: the count is all it reads
    assert m.batch_length(body) == count


@pytest.mark.parametrize("body", [b"", b"\x81", b"\x82\x80\x80", b"\x81\x40", b"\x81\x98",
                                  b"\x81\x9f", b"\x80"])
def test_batch_length_refuses_what_is_not_a_batch(body: bytes) -> None:
    with pytest.raises(MessageError):
        m.batch_length(body)
