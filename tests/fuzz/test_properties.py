"""Fuzz properties of the wire decoders, 10,000 examples each (the ``fuzz`` profile of
``conftest.py``; ``NARWHAL_FUZZ_EXAMPLES`` changes the count).

Hostile input comes from the golden vectors (``tests/wire_compat/vectors``) mutated the way a
fuzzer mutates (``targets.mutate``), from structured garbage and from random bytes. What must
hold is asserted by the shared checks of ``targets.py`` (the coverage-guided targets of
``run.py`` run the same checks): only the layer's typed error escapes, buffering stays
bounded, round trips hold, and nothing altered gets through the Noise AEAD. The unit and
golden tests of each module (``tests/wire``, ``tests/test_messages.py``,
``tests/wire_compat``) cover specific cases; these properties add volume.

Speed: hypothesis costs ~0.3 ms per example and per draw before the test does anything, so
each property draws a couple of byte strings and builds its input from them in plain Python
(``mutate``, ``cuts_from``, ``random_message``), and the round trips run on the same
examples as the hostile inputs. Measured on the shared 2-core dev machine (load ~2.5): the
five properties, 10,000 examples each, take 34 s in all; each one's time is above it.
"""

from __future__ import annotations

import random

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from narwhal import messages as m
from narwhal.wire.frames import DEFAULT_MAX_FRAME_SIZE, FrameKind, encode_frame
from narwhal.wire.noise import HandshakePayload
from tests.fuzz import targets as t
from tests.wire.harness import split

FUZZ = settings.get_profile("fuzz")

#: Mutation edits (4 bytes each, at most 6) and cut points (2 bytes each, at most 12).
ops = st.binary(max_size=24)
control = st.binary(min_size=2, max_size=26)


# --- (1) frames ------------------------------------------------------------------------------------

#: Golden frame streams (valid, invalid, transport plaintexts) without the target's mode bytes,
#: and hostile headers: lengths at the limits, every kind.
FRAME_STREAMS = sorted({seed[2:] for seed in t.frame_seeds()}) + [
    length.to_bytes(4, "big") + bytes([kind]) + b"\x00\x00\x00\x01\x01\x02body"
    for length in t.INTERESTING for kind in (0, 6, 7, 255)
]
PIECE_TYPES = (bytes, bytes, bytes, bytearray, memoryview)


# 10,000 examples: 7.3 s (two checks per example: hypothesis's ~0.3 ms per example and per
# draw is most of the cost, so each example also runs the round trip)
@FUZZ
@given(st.sampled_from(FRAME_STREAMS) | st.binary(max_size=120), ops, control)
def test_frame_decoder_on_any_stream_in_any_chunks(seed: bytes, edits: bytes, ctl: bytes) -> None:
    """Only FrameError, exactly when the reference parse says; never a buffer over the cap;
    the same frames whatever the chunking (``check_frames`` states it all). And valid frames
    built from the same bytes round-trip through any chunking."""
    stream = t.mutate(seed, edits)
    max_size = t.MAX_SIZES[ctl[0] % len(t.MAX_SIZES)] if ctl[0] < 128 else 7 + ctl[0]
    slack = t.SLACKS[ctl[1] % len(t.SLACKS)]
    wrap = PIECE_TYPES[(ctl[1] >> 2) % len(PIECE_TYPES)]
    chunks = split(stream, t.cuts_from(ctl[2:], len(stream)))
    t.check_frames([wrap(c) for c in chunks], max_size, slack, batch=bool(ctl[1] & 0x80))
    assert_round_trip(stream + edits, ctl)


def assert_round_trip(material: bytes, ctl: bytes) -> None:
    """Frames built from ``material`` (any kind, id, tag; bodies of 0-63 bytes) are decoded
    back, equal, from any chunking of their encoding."""
    frames, pos = [], 0
    while pos + 8 <= len(material):
        size = material[pos + 7] % 64
        frames.append((FrameKind(material[pos] % 7), int.from_bytes(material[pos + 1 : pos + 5]),
                       int.from_bytes(material[pos + 5 : pos + 7]),
                       material[pos + 8 : pos + 8 + size]))
        pos += 8 + size
    stream = b"".join(encode_frame(*f) for f in frames)
    max_size = DEFAULT_MAX_FRAME_SIZE if ctl[0] & 1 else 7 + 63
    got = t.check_frames(split(stream, t.cuts_from(ctl[2:], len(stream))), max_size,
                         batch=bool(ctl[1] & 1))
    assert [tuple(f) for f in got] == frames


# --- (2) Noise: the handshake state machine and the transport ----------------------------------------

#: (side, golden peer bytes): the handshake alone, with the transport messages after it,
#: the preamble alone (mutations then append garbage), nothing (garbage only).
HANDSHAKE_SEEDS = [
    (side, stream)
    for side in t.SIDES
    for golden, ciphertexts, _ in [t.peer_bytes(*side)]
    for stream in (golden, golden + b"".join(ciphertexts), golden[:8], golden[:10], b"")
]


# 10,000 examples: 8.3 s (each runs a real handshake side: X25519, AES-GCM, CBOR)
@FUZZ
@given(st.sampled_from(HANDSHAKE_SEEDS), ops, control)
def test_noise_handshake_on_hostile_peer_bytes(
    seed: tuple[tuple[t.Pattern, str], bytes], edits: bytes, ctl: bytes
) -> None:
    """Only HandshakeError (handshake) or DecryptError (transport); the handshake completes
    only on the peer's unaltered golden bytes, and decrypts only its golden plaintexts."""
    side, golden = seed
    stream = t.mutate(golden, edits) + ctl[:1] * (ctl[1] & 0x3F)  # junk after it too
    t.check_handshake(*side, split(stream, t.cuts_from(ctl[2:], len(stream))))


def transport_streams(side: tuple[t.Pattern, str]) -> list[bytes]:
    _, (first, second), _ = t.peer_bytes(*side)
    return [first + second, second + first, first + first, first[:-1], first + second[:2], b""]


#: Golden ciphertexts in order, reordered, replayed, truncated.
TRANSPORT_SEEDS = [(side, s) for side in t.SIDES for s in transport_streams(side)]


# 10,000 examples: 5.8 s
@FUZZ
@given(st.sampled_from(TRANSPORT_SEEDS), ops, control)
def test_noise_transport_on_hostile_ciphertext(
    seed: tuple[tuple[t.Pattern, str], bytes], edits: bytes, ctl: bytes
) -> None:
    """Only DecryptError; nothing but the golden plaintexts, in order, comes out."""
    side, golden = seed
    stream = t.mutate(golden, edits)
    t.check_transport(*side, split(stream, t.cuts_from(ctl[2:], len(stream))))


# --- (3) the handshake payload -------------------------------------------------------------------

#: The golden payloads, and maps that break each rule of wire_spec.md §3.4 once (plus some
#: CBOR tags and value sharing, which a lenient decoder may turn into accepted values).
_GOOD = cbor2.loads(bytes.fromhex(t.vector("handshake_ik")["initiator_payload"]))
_BAD_VALUES = [None, True, -1, 2**32, 2**64, 1.5, "", "x" * 40, b"", b"\x01" * 31, [], {},
               ["a", 1], cbor2.CBORTag(2, b"\x04\x00"), cbor2.CBORTag(1, 0)]
PAYLOAD_SEEDS = t.payload_seeds() + [
    cbor2.dumps({**_GOOD, key: bad}) for key in (*_GOOD, "error", "reason") for bad in _BAD_VALUES
] + [
    cbor2.dumps({k: v for k, v in _GOOD.items() if k != key}) for key in _GOOD
] + [
    cbor2.dumps({**_GOOD, "role": "client", "authority": None}),
    bytes.fromhex("a1c11a00000000f6"),  # a map with a tagged key
    cbor2.dumps(_GOOD, value_sharing=True),
]


# 10,000 examples: 5.8 s (with the round trip on the same bytes)
@FUZZ
@given(st.sampled_from(PAYLOAD_SEEDS) | st.binary(max_size=600), ops)
def test_handshake_payload_decoder(seed: bytes, edits: bytes) -> None:
    """Only HandshakeError; what is accepted re-encodes within the cap to the same payload.
    And a valid payload built from the same bytes round-trips."""
    data = t.mutate(seed, edits)
    t.check_payload(data)
    raw = (edits + data).ljust(41, b"\0")
    role = ("primary", "worker", "client")[raw[0] % 3]
    features = [raw[i : i + 16].decode("utf-16-le", "replace")
                for i in range(41, len(raw), 16)][: raw[0] >> 6]
    payload = HandshakePayload(
        role, None if role == "client" else raw[1:33],
        int.from_bytes(raw[33:37]) if role == "worker" else None,
        max(1024, int.from_bytes(raw[37:41])), tuple(features))
    assert t.check_payload(payload.encode()) == payload


# --- (4) messages -------------------------------------------------------------------------------------

#: (tag, body): every golden body under its own tag and under every other registered tag,
#: the golden invalid bodies, and a few unregistered tags.
_BODIES = [bytes.fromhex(v["body"]) for v in t.vector("messages")["messages"]]
MESSAGE_SEEDS = [(tag, body) for tag in t.TAGS for body in _BODIES] + [
    (v["tag"], bytes.fromhex(v["body"])) for v in t.vector("messages")["invalid"]
    if len(v["body"]) < 8192
] + [(tag, b"\x80") for tag in (0x0001, 0x00FF, 0x7777, 0xFFFF)]


# 10,000 examples: 6.9 s (with the round trip of a message built from the same bytes)
@FUZZ
@given(st.sampled_from(MESSAGE_SEEDS) | st.tuples(st.sampled_from(t.TAGS), st.binary(max_size=120)),
       ops)
def test_message_decoder(seed: tuple[int, bytes], edits: bytes) -> None:
    """Only MessageError; what is accepted is canonical and round-trips. And a valid message
    of a random registered type (seeded by the same bytes) round-trips:
    decode(encode(msg)) == msg."""
    tag, body = seed
    mutated = t.mutate(body, edits)
    t.check_message(tag, mutated)
    msg = t.random_message(random.Random(mutated + edits))
    assert t.check_message(m.tag_of(msg), m.encode(msg)) == msg
