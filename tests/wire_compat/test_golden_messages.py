"""Golden message bodies (spec fragment ``docs/wire_spec_messages.md``), checked both ways.

``vectors/messages.json`` holds ``messages``, one fixed instance of every registered message
(tag, name, CBOR diagnostic notation, exact body hex and, for Header/Vote/Certificate/Batch,
digest hex), and ``invalid``: bodies that each break exactly one rule, with the error code a
receiver must answer. The tests check ``encode`` and ``decode`` against the file, and also
re-derive each body and digest with ``spec_encode`` below, a ten-line RFC 8949 §4.2.1
encoder written from the spec alone, so the vectors do not merely restate what cbor2 does.

The tests never write the file. Regenerate after a deliberate wire change with:
``python -m tests.wire_compat.test_golden_messages --print > tests/wire_compat/vectors/messages.json``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from narwhal import messages as m
from narwhal.errors import ErrorCode, MessageError

PATH = Path(__file__).parent / "vectors" / "messages.json"

KEY_A, KEY_B, KEY_C = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))
SIG_A, SIG_B, SIG_C = bytes(range(64)), bytes(range(64, 128)), bytes(range(128, 192))
D1, D2, D3, D4 = (bytes([b]) * 32 for b in (0xD1, 0xD2, 0xD3, 0xD4))
DOMAINS = {"Header": b"narwhal-py/header\x00", "Vote": b"narwhal-py/vote\x00",
           "Certificate": b"narwhal-py/certificate\x00", "Batch": b"narwhal-py/batch\x00"}


def instances() -> list[m.Message]:
    """One fixed instance per message type, in tag order."""
    header = m.Header(KEY_A, 3, ((D1, 0), (D2, 1)), (D3, D4), ((D1, 1),), SIG_A)
    certificate = m.Certificate(header, ((KEY_B, SIG_B), (KEY_C, SIG_C)))
    batch = m.Batch((b"", b"tx-1", bytes(300)))
    out = [
        m.Ack(),
        header,
        m.Vote(header.digest(), 3, KEY_A, KEY_B, SIG_B),
        certificate,
        m.CertificatesRequest((D1, D2)),
        m.CertificatesResponse((m.Certificate.genesis([KEY_A])[0], certificate)),
        m.FetchCertificates(2, 100),
        m.CheckpointRequest(40),
        m.Checkpoint(40, 123, ((KEY_A, 40), (KEY_B, 39))),
        batch,
        m.RequestBatches((batch.digest(),)),
        m.BatchesResponse((batch,), (D4,)),
        m.OurBatch(batch.digest(), 0, 3),
        m.OthersBatch(batch.digest(), 7, 3),
        m.Synchronize((D1, D2), KEY_C),
        m.Cleanup(2**32),
        m.SubmitTransactions((b"hello", b"world")),
        m.TransactionsAccepted(2),
        m.Subscribe(0),
        m.SubscribeAccepted(1000),
        m.OrderedOutput(41, 3, KEY_A, certificate.digest(), 1, 2, (b"hello",)),
    ]
    return sorted(out, key=m.tag_of)


def wire(msg: m.Message) -> Any:
    return m.Nested(type(msg)).to_wire(msg)


def diagnostic(v: Any) -> str:
    """RFC 8949 §8 diagnostic notation of a wire tree."""
    if isinstance(v, bytes):
        return f"h'{v.hex()}'"
    if isinstance(v, tuple):
        return "[" + ", ".join(map(diagnostic, v)) + "]"
    return str(v)


def invalid() -> list[tuple[int, str, ErrorCode, str]]:
    """(tag, body hex, code, why): each body breaks exactly one rule of spec section 9."""
    header = wire(instances()[1])
    MAL = ErrorCode.MALFORMED
    tag = {cls.__name__: t for t, cls in m.REGISTRY.items()}
    return [
        (0x7777, "80", ErrorCode.UNKNOWN_TYPE, "unregistered tag"),
        (0x0000, "", MAL, "empty body"),
        (0x0000, "8000", MAL, "a byte after the item"),
        (tag["Cleanup"], "811805", MAL, "uint 5 in a 2-byte head"),
        (tag["Cleanup"], "9f05ff", MAL, "indefinite-length array"),
        (tag["Cleanup"], "81c24105", MAL, "bignum tag"),
        (tag["Cleanup"], "81f94500", MAL, "float"),
        (tag["Cleanup"], "8124", MAL, "negative integer"),
        (tag["Cleanup"], "816135", MAL, "text string"),
        (tag["Cleanup"], "a10005", MAL, "map instead of array"),
        (tag["Cleanup"], "80", MAL, "missing field"),
        (tag["Cleanup"], "820505", MAL, "extra field"),
        (tag["FetchCertificates"], "820200", MAL, "max_items 0"),
        (tag["Checkpoint"], spec_encode((40, 123, ((KEY_B, 39), (KEY_A, 40)))).hex(), MAL,
         "last_committed not sorted"),
        (tag["OurBatch"], spec_encode((D1, 2**32, 0)).hex(), MAL, "worker id 2^32"),
        (tag["Vote"], spec_encode((D1[:31],) + wire(instances()[2])[1:]).hex(), MAL,
         "31-byte digest"),
        (tag["Header"], spec_encode(header[:3] + ((D4, D3),) + header[4:]).hex(), MAL,
         "parents out of order"),
        (tag["Header"], spec_encode(header[:2] + (((D1, 0), (D1, 1)),) + header[3:]).hex(), MAL,
         "duplicate payload digest"),
        (tag["SubmitTransactions"], spec_encode(((b"",) * 10_001,)).hex(), ErrorCode.TOO_LARGE,
         "MAX_SUBMIT_TRANSACTIONS + 1 transactions"),
    ]


def generate() -> dict[str, Any]:
    vectors = []
    for msg in instances():
        entry = {"tag": m.tag_of(msg), "name": type(msg).__name__,
                 "diagnostic": diagnostic(wire(msg)), "body": m.encode(msg).hex()}
        if hasattr(msg, "digest") and callable(msg.digest):
            entry["digest"] = msg.digest().hex()
        vectors.append(entry)
    return {"description": "narwhal-py wire v1 message bodies (canonical CBOR); hex strings",
            "messages": vectors,
            "invalid": [{"tag": tag, "body": body, "code": code.name, "why": why}
                        for tag, body, code, why in invalid()]}


#: A missing file fails test_generator_matches_the_file (and lets --print run without it).
VECTORS = json.loads(PATH.read_text()) if PATH.exists() else {"messages": [], "invalid": []}
CASES = [pytest.param(msg, v, id=v["name"]) for msg, v in zip(instances(), VECTORS["messages"])]


def spec_encode(v: Any) -> bytes:
    """Canonical CBOR of uints, byte strings and arrays, from RFC 8949 §3 and §4.2.1 alone."""
    major, n = (0, v) if type(v) is int else (2 if type(v) is bytes else 4, len(v))
    if n < 24:
        head = bytes([major << 5 | n])
    else:
        size = next(s for s in (1, 2, 4, 8) if n < 1 << (8 * s))
        head = bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[size]]) + n.to_bytes(size, "big")
    if major == 4:
        return head + b"".join(map(spec_encode, v))
    return head + (v if major == 2 else b"")


def spec_digest(msg: Any) -> bytes:
    preimage = {
        "Header": lambda: spec_encode(wire(msg)[:5]),
        "Vote": lambda: spec_encode(wire(msg)[:3]),
        "Certificate": lambda: spec_encode(
            (spec_digest(msg.header), msg.header.round, msg.header.author)),
        "Batch": lambda: spec_encode(wire(msg)),
    }[type(msg).__name__]
    return hashlib.sha256(DOMAINS[type(msg).__name__] + preimage()).digest()


def test_every_message_type_has_a_vector() -> None:
    assert [v["tag"] for v in VECTORS["messages"]] == sorted(m.REGISTRY)
    assert [v["name"] for v in VECTORS["messages"]] == [
        m.REGISTRY[t].__name__ for t in sorted(m.REGISTRY)]


@pytest.mark.parametrize("msg, v", CASES)
def test_encode_and_decode(msg: m.Message, v: dict[str, Any]) -> None:
    body = bytes.fromhex(v["body"])
    assert v["tag"] == m.tag_of(msg) and v["name"] == type(msg).__name__
    assert m.encode(msg) == body == spec_encode(wire(msg))
    decoded = m.decode(v["tag"], body)
    assert decoded == msg
    assert diagnostic(wire(decoded)) == v["diagnostic"]


@pytest.mark.parametrize("msg, v", [c for c in CASES if "digest" in c.values[1]])
def test_digests(msg: Any, v: dict[str, Any]) -> None:
    decoded: Any = m.decode(v["tag"], bytes.fromhex(v["body"]))
    assert msg.digest().hex() == decoded.digest().hex() == v["digest"]
    assert spec_digest(msg).hex() == v["digest"]


@pytest.mark.parametrize("v", VECTORS.get("invalid", []), ids=lambda v: v["why"])
def test_invalid(v: dict[str, Any]) -> None:
    with pytest.raises(MessageError) as info:
        m.decode(v["tag"], bytes.fromhex(v["body"]))
    assert info.value.code is ErrorCode[v["code"]]


def test_generator_matches_the_file() -> None:
    assert generate() == VECTORS


if __name__ == "__main__":
    if sys.argv[1:] != ["--print"]:
        sys.exit("usage: python -m tests.wire_compat.test_golden_messages --print")
    print(json.dumps(generate(), indent=2))
