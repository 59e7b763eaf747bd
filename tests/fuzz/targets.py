"""Fuzz targets for the wire decoders, and the checks they share with ``test_properties.py``.

Each ``check_*`` function drives one decoder with structured input and asserts what must hold
for *any* input: only the project's typed error for that layer escapes (anything else, an
``AssertionError`` included, is a finding), bounded buffering, and the round trips and
authenticity guarantees the module promises. Each ``fuzz_*`` function turns raw bytes from a
fuzzer into a ``check_*`` call (the first byte or two choose the mode), and ``seeds(name)``
gives the golden vectors of ``tests/wire_compat/vectors`` in that byte layout.

``TARGETS`` maps a target name to ``(fuzz function, seeds function)``; ``run.py`` runs them.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cbor2

from narwhal import messages as m
from narwhal.errors import (
    DecryptError,
    FrameError,
    FrameTooLarge,
    HandshakeError,
    MessageError,
    UnknownMessageType,
)
from narwhal.wire.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_HEADER,
    FRAME_HEADER_TAIL,
    Frame,
    FrameDecoder,
    FrameKind,
    decode_error_body,
    encode_frame,
)
from narwhal.wire.noise import (
    MAX_HANDSHAKE_PAYLOAD,
    HandshakePayload,
    HandshakeStep,
    NoiseHandshake,
    Pattern,
)
from narwhal.wire.transport import NoiseTransport

VECTORS = Path(__file__).resolve().parent.parent / "wire_compat" / "vectors"


@functools.cache
def vector(name: str) -> dict[str, Any]:
    """One golden vector file (``frames``, ``messages``, ``handshake_ik``, ``handshake_nk``)."""
    data: dict[str, Any] = json.loads((VECTORS / f"{name}.json").read_text())
    return data


def split_every(data: bytes, size: int) -> list[bytes]:
    """``data`` in pieces of ``size`` bytes (one piece when ``size`` is 0)."""
    if size <= 0 or size >= len(data):
        return [data]
    return [data[i : i + size] for i in range(0, len(data), size)]


#: Values on the limits of the formats (u8/u16/u32 ends, CBOR head boundaries, the frame
#: and handshake limits): what ``mutate`` writes into its input.
INTERESTING = (0, 1, 7, 23, 24, 255, 256, 1023, 1024, 1025, 0xFFFF, 0x10000, 0x7FFFFFFF,
               0x800000, 0x800001, 0xFFFFFFFF)


def mutate(seed: bytes, ops: bytes) -> bytes:
    """``seed`` edited by ``ops``, 4 bytes per edit (kind, position u16, argument): the edits
    a fuzzer makes (flip a bit, set a byte, insert, delete, truncate, repeat a range, write a
    limit value). Cheap, and driven by plain bytes, so a hypothesis property draws only two
    byte strings per example."""
    data = bytearray(seed)
    for i in range(0, len(ops) - 3, 4):
        op, arg = ops[i], ops[i + 3]
        at = int.from_bytes(ops[i + 1 : i + 3], "big") % (len(data) + 1)
        kind, extra = op & 7, op >> 3
        if kind == 0 and at < len(data):
            data[at] ^= 1 << (arg & 7)
        elif kind == 1 and at < len(data):
            data[at] = arg
        elif kind == 2:
            data[at:at] = bytes([arg]) * (1 + extra % 8)
        elif kind == 3:
            del data[at : at + 1 + arg % 16]
        elif kind == 4:
            del data[at:]
        elif kind == 5:
            data[at:at] = data[at : at + 1 + arg % 32]
        elif kind == 6:
            width = (1, 2, 4)[extra % 3]
            value = INTERESTING[arg % len(INTERESTING)] % (1 << 8 * width)
            data[at : at + width] = value.to_bytes(width, "big")
        elif kind == 7:  # splice: copy a range from elsewhere in the input
            start = arg * len(data) // 256
            data[at:at] = data[start : start + 1 + extra % 16]
    return bytes(data)


def cuts_from(control: bytes, length: int) -> list[int]:
    """Offsets into a ``length``-byte stream, 2 bytes of ``control`` each."""
    return [int.from_bytes(control[i : i + 2], "big") % (length + 1)
            for i in range(0, len(control) - 1, 2)]


# --- frames ----------------------------------------------------------------------------------

MAX_SIZES = (FRAME_HEADER_TAIL, 8, 64, 1024, 65536, DEFAULT_MAX_FRAME_SIZE)
SLACKS = (0, 1, 100, 65536)
_KINDS = frozenset(int(k) for k in FrameKind)


def reference_frames(stream: bytes, max_size: int) -> tuple[list[Frame], int | None, type | None]:
    """The frames of a whole stream, parsed the obvious way (wire_spec.md section 5), and the
    first error: ``(frames, position, error type)``, where the error is due as soon as
    ``stream[:position]`` has arrived (the length field for a bad length, the kind byte for
    a bad kind), before any of that frame's body."""
    frames: list[Frame] = []
    pos = 0
    while len(stream) - pos >= 4:
        length = int.from_bytes(stream[pos : pos + 4], "big")
        if length > max_size:
            return frames, pos + 4, FrameTooLarge
        if length < FRAME_HEADER_TAIL:
            return frames, pos + 4, FrameError
        if len(stream) - pos >= 5 and stream[pos + 4] not in _KINDS:
            return frames, pos + 5, FrameError
        if len(stream) < pos + 4 + length:
            break
        _, kind, request_id, tag = FRAME_HEADER.unpack_from(stream, pos)
        frames.append(Frame(FrameKind(kind), request_id, tag, stream[pos + 11 : pos + 4 + length]))
        pos += 4 + length
    return frames, None, None


def check_frames(
    pieces: list[bytes], max_size: int, slack: int = 65536, batch: bool = False
) -> list[Frame]:
    """Feed ``pieces`` to a FrameDecoder, draining it after each; compare with the reference.

    Holds for any input: only FrameError escapes; the error comes exactly when the offending
    header bytes arrive and the decoder stays failed; the decoded frames are the reference
    frames; at most one partial frame is held between calls (never its declared size) and the
    receive buffer never exceeds ``max_size + 4 + slack``; error bodies never fail to parse.
    """
    stream = b"".join(pieces)
    expected, error_at, error_type = reference_frames(stream, max_size)
    decoder = FrameDecoder(max_size, slack=slack)
    cap = max_size + 4 + slack
    got: list[Frame] = []
    fed = pending = 0
    for piece in pieces:
        over_cap = (pending > 0 or type(piece) is not bytes) and pending + len(piece) > cap
        fed += len(piece)
        due = error_at is not None and fed >= error_at
        try:
            decoder.receive_data(piece)
            assert not over_cap, f"{pending} + {len(piece)} bytes buffered over the cap {cap}"
            assert decoder.buffered == pending + len(piece)
            if batch:
                got += check_each(decoder.frames(), max_size)
            else:
                while (frame := decoder.next_frame()) is not None:
                    got += check_each([frame], max_size)
        except FrameError as exc:
            assert over_cap or due, f"{exc!r} at byte {fed}, expected {error_type} at {error_at}"
            if not over_cap:
                assert type(exc) is error_type, f"{exc!r}, expected {error_type}"
                if not batch:  # frames() drops the frames of the call that failed
                    assert got == expected
            assert got == expected[: len(got)]
            assert_failed(decoder)
            return got
        assert not due, f"no error at byte {fed}, expected {error_type} at {error_at}"
        pending = fed - sum(4 + FRAME_HEADER_TAIL + len(f.body) for f in got)
        assert decoder.buffered == pending < 4 + max_size
    assert got == expected
    assert b"".join(encode_frame(*f) for f in got) == stream[: len(stream) - pending]
    return got


def check_each(frames: list[Frame], max_size: int) -> list[Frame]:
    """Per frame: a ``bytes`` body within the limit; an ERROR/GOAWAY body parses."""
    for frame in frames:
        assert type(frame.body) is bytes and len(frame.body) <= max_size - FRAME_HEADER_TAIL
        if frame.kind in (FrameKind.ERROR, FrameKind.GOAWAY):
            code, text = decode_error_body(frame.body)
            assert type(code) is int and isinstance(text, str)
    return frames


def assert_failed(decoder: FrameDecoder) -> None:
    """After an error every call raises FrameError again and nothing stays buffered."""
    for call in (lambda: decoder.receive_data(b"\0"), decoder.next_frame, decoder.frames):
        try:
            call()
        except FrameError:
            continue
        raise AssertionError("the decoder is usable after an error")
    assert decoder.buffered == 0


def fuzz_frames(data: bytes) -> None:
    """data[0]: max frame size (low nibble) and slack (high); data[1]: piece size (low 7
    bits, 0 for one piece) and ``frames()`` instead of ``next_frame()`` (top bit)."""
    if len(data) < 2:
        return
    max_size = MAX_SIZES[(data[0] & 0x0F) % len(MAX_SIZES)]
    slack = SLACKS[(data[0] >> 4) % len(SLACKS)]
    check_frames(split_every(data[2:], data[1] & 0x7F), max_size, slack, bool(data[1] & 0x80))


def frame_seeds() -> list[bytes]:
    golden = vector("frames")
    streams = [bytes.fromhex(f["hex"]) for f in golden["frames"]]
    streams.append(b"".join(streams))
    streams += [bytes.fromhex(f["hex"]) for f in golden["invalid"]]
    for name in ("handshake_ik", "handshake_nk"):  # the transport plaintexts are frames too
        streams += [bytes.fromhex(t["plaintext"]) for t in vector(name)["transport"]]
    modes = [bytes([0x05, 0x00]), bytes([0x13, 0x03]), bytes([0x03, 0x81])]
    return [mode + s for s in streams for mode in modes]


# --- Noise: the handshake from either side, then the transport ----------------------------------

#: (pattern, which side we play): the index is the low two bits of a noise input's first byte.
SIDES = ((Pattern.IK, "responder"), (Pattern.NK, "responder"),
         (Pattern.IK, "initiator"), (Pattern.NK, "initiator"))


def _hex(v: dict[str, Any], key: str) -> bytes | None:
    return bytes.fromhex(v[key]) if v[key] else None


def golden_handshake(pattern: Pattern, side: str) -> NoiseHandshake:
    """A handshake with the golden keys (ephemeral ones too), ready to read the peer's bytes:
    the golden transcript of the other side completes it."""
    v = vector(f"handshake_{pattern.name.lower()}")
    network_id = bytes.fromhex(v["network_id"])
    if side == "responder":
        return NoiseHandshake.responder(
            network_id=network_id, local_static=bytes.fromhex(v["responder_static_private"]),
            accepted_patterns=(pattern,), ephemeral=_hex(v, "responder_ephemeral_private"))
    hs = NoiseHandshake.initiator(
        pattern=pattern, network_id=network_id,
        remote_static=bytes.fromhex(v["responder_static_public"]),
        local_static=_hex(v, "initiator_static_private"),
        ephemeral=_hex(v, "initiator_ephemeral_private"))
    hs.initiate(HandshakePayload.decode(bytes.fromhex(v["initiator_payload"])))
    assert hs.data_to_send().hex() == v["initiator_sends"]
    return hs


def peer_bytes(pattern: Pattern, side: str) -> tuple[bytes, list[bytes], list[bytes]]:
    """What the golden peer of ``side`` sends: (handshake bytes, transport ciphertexts, their
    plaintexts)."""
    v = vector(f"handshake_{pattern.name.lower()}")
    peer = "initiator" if side == "responder" else "responder"
    transport = [t for t in v["transport"] if t["from"] == peer]
    return (bytes.fromhex(v[f"{peer}_sends"]), [bytes.fromhex(t["ciphertext"]) for t in transport],
            [bytes.fromhex(t["plaintext"]) for t in transport])


def check_handshake(pattern: Pattern, side: str, pieces: list[bytes]) -> list[bytes]:
    """Play ``side`` of a golden-key handshake against ``pieces`` (arbitrary or mutated peer
    bytes), then decrypt the rest as transport.

    Holds for any input: the handshake raises only HandshakeError (and is FAILED after it),
    the transport only DecryptError; the handshake completes only if the peer's golden
    handshake bytes were sent unchanged, with the golden payload and static key (the AEAD
    binds every byte); every plaintext out of the transport is the golden peer's, in order.
    """
    v = vector(f"handshake_{pattern.name.lower()}")
    golden, _, plaintexts = peer_bytes(pattern, side)
    hs = golden_handshake(pattern, side)
    transport: NoiseTransport | None = None
    out: list[bytes] = []
    received = b""
    try:
        for piece in pieces:
            received += piece
            if transport is not None:
                out += transport.decrypt(piece)
                continue
            hs.receive_data(piece)
            if hs.step is HandshakeStep.DECIDE:
                assert received.startswith(golden), "msg1 accepted on altered bytes"
                assert hs.remote_payload == HandshakePayload.decode(
                    bytes.fromhex(v["initiator_payload"]))
                assert hs.remote_static == _hex(v, "initiator_static_public")
                hs.accept(HandshakePayload.decode(bytes.fromhex(v["responder_payload"])))
                assert hs.data_to_send().hex() == v["responder_sends"]
            if hs.step is HandshakeStep.DONE:
                assert received.startswith(golden), "handshake completed on altered bytes"
                if side == "initiator":
                    assert hs.remote_payload == HandshakePayload.decode(
                        bytes.fromhex(v["responder_payload"]))
                assert hs.handshake_hash == bytes.fromhex(v["handshake_hash"])
                transport = hs.transport()
                out += transport.decrypt(hs.leftover())
    except HandshakeError:
        assert transport is None and hs.step is HandshakeStep.FAILED
    except DecryptError:
        assert transport is not None
    assert out == plaintexts[: len(out)], "the transport returned a forged plaintext"
    return out


@functools.cache
def transport_keys(pattern: Pattern, side: str) -> tuple[bytes, int, bytes, int]:
    """The transport keys and nonces of ``side`` after the golden handshake (computed once:
    a property then builds a fresh transport per example without a handshake)."""
    hs = golden_handshake(pattern, side)
    golden, _, _ = peer_bytes(pattern, side)
    hs.receive_data(golden)
    if hs.step is HandshakeStep.DECIDE:
        v = vector(f"handshake_{pattern.name.lower()}")
        hs.accept(HandshakePayload.decode(bytes.fromhex(v["responder_payload"])))
    assert hs.step is HandshakeStep.DONE
    proto = hs._noise.noise_protocol  # type: ignore[union-attr]  # test-only peek at the keys
    enc, dec = proto.cipher_state_encrypt, proto.cipher_state_decrypt
    return enc.k, enc.n, dec.k, dec.n


def check_transport(pattern: Pattern, side: str, pieces: list[bytes]) -> list[bytes]:
    """Decrypt ``pieces`` (arbitrary or mutated ciphertext) on a golden transport: only
    DecryptError escapes, a failed transport stays failed, and every plaintext it returns is
    the golden peer's, in order (nothing forged, replayed or reordered gets through)."""
    _, _, plaintexts = peer_bytes(pattern, side)
    transport = NoiseTransport(*transport_keys(pattern, side))
    out: list[bytes] = []
    try:
        for piece in pieces:
            out += transport.decrypt(piece)
    except DecryptError:
        try:
            transport.decrypt(b"")
        except DecryptError:
            pass
        else:
            raise AssertionError("the transport is usable after a decryption error") from None
    assert out == plaintexts[: len(out)], "the transport returned a forged plaintext"
    return out


def fuzz_handshake(data: bytes) -> None:
    """data[0]: side (low two bits, see SIDES) and piece size (the other six, 0 = whole)."""
    if not data:
        return
    pattern, side = SIDES[data[0] & 3]
    check_handshake(pattern, side, split_every(data[1:], (data[0] >> 2) * 3))


def fuzz_transport(data: bytes) -> None:
    """data[0] as for fuzz_handshake; the rest is transport ciphertext."""
    if not data:
        return
    pattern, side = SIDES[data[0] & 3]
    check_transport(pattern, side, split_every(data[1:], (data[0] >> 2) * 3))


def handshake_seeds() -> list[bytes]:
    out = []
    for i, (pattern, side) in enumerate(SIDES):
        golden, ciphertexts, _ = peer_bytes(pattern, side)
        for size in (0, 1, 17):
            out.append(bytes([i | size << 2]) + golden + b"".join(ciphertexts))
            out.append(bytes([i | size << 2]) + golden)
    return out


def transport_seeds() -> list[bytes]:
    out = []
    for i, (pattern, side) in enumerate(SIDES):
        _, ciphertexts, _ = peer_bytes(pattern, side)
        for size in (0, 1, 17):
            out.append(bytes([i | size << 2]) + b"".join(ciphertexts))
    return out


# --- the handshake payload -------------------------------------------------------------------


def check_payload(data: bytes) -> HandshakePayload | None:
    """HandshakePayload.decode: only HandshakeError escapes; an accepted payload re-encodes
    within the payload cap to the same payload (what we accept we could have sent)."""
    try:
        payload = HandshakePayload.decode(data)
    except HandshakeError:
        return None
    encoded = payload.encode()
    assert len(encoded) <= MAX_HANDSHAKE_PAYLOAD, f"accepted payload re-encodes to {len(encoded)} B"
    assert HandshakePayload.decode(encoded) == payload
    return payload


def fuzz_payload(data: bytes) -> None:
    check_payload(data)


def payload_seeds() -> list[bytes]:
    return [bytes.fromhex(vector(name)[key]) for name in ("handshake_ik", "handshake_nk")
            for key in ("initiator_payload", "responder_payload")]


# --- messages ----------------------------------------------------------------------------------


def random_message(rnd: random.Random, cls: type[m.Message] | None = None) -> m.Message:
    """A valid message built from the schemas (every registered type; values often on
    the CBOR head boundaries, lists of 0..30 items, sorted lists sorted and unique)."""
    cls = cls or rnd.choice(MESSAGE_CLASSES)
    return cls(*(_random_value(kind, rnd) for _, kind in m.schema_of(cls)))


MESSAGE_CLASSES = [m.REGISTRY[tag] for tag in sorted(m.REGISTRY)]


def _random_value(kind: Any, rnd: random.Random) -> Any:
    if isinstance(kind, m.Scalar):
        if kind.py_type is int:
            edge = min(max(rnd.choice(INTERESTING + (2**32, 2**64 - 1)), kind.lo), kind.hi)
            return rnd.choice([edge, kind.lo, kind.hi, rnd.randint(kind.lo, kind.hi)])
        size = kind.size if kind.size is not None else rnd.choice([0, 1, 23, 24, 255, 256, 600])
        return rnd.randbytes(size)
    if isinstance(kind, m.Pair):
        return (_random_value(kind.first, rnd), _random_value(kind.second, rnd))
    if isinstance(kind, m.Nested):
        return random_message(rnd, kind.cls)
    assert isinstance(kind, m.ListOf)
    count = min(rnd.choice([0, 1, 2, 3, rnd.randint(0, 30)]), kind.limit)
    items = [_random_value(kind.item, rnd) for _ in range(count)]
    if kind.sorted:
        key: Callable[[Any], Any] = (
            (lambda p: p[0]) if isinstance(kind.item, m.Pair) else (lambda x: x))
        items = sorted({key(item): item for item in items}.values(), key=key)
    return tuple(items)


TAGS = sorted(m.REGISTRY)


def check_message(tag: int, body: bytes) -> m.Message | None:
    """narwhal.messages.decode: only MessageError escapes (UnknownMessageType exactly for
    unregistered tags); an accepted body is canonical (the bytes ``encode`` gives back, and
    cbor2's own canonical re-encoding), decodes again to an equal message, and its digest
    can be computed."""
    try:
        msg = m.decode(tag, body)
    except UnknownMessageType:
        assert tag not in m.REGISTRY
        return None
    except MessageError:
        assert tag in m.REGISTRY
        return None
    assert m.encode(msg) == body
    assert cbor2.dumps(cbor2.loads(body), canonical=True) == body
    assert m.decode(tag, body) == msg
    digest = getattr(msg, "digest", None)
    if callable(digest):
        assert len(digest()) == 32
    return msg


def fuzz_messages(data: bytes) -> None:
    """data[0] below len(TAGS): that registered tag, body data[1:]; otherwise the tag is
    data[1:3] (big-endian) and the body data[3:]."""
    if not data:
        return
    if data[0] < len(TAGS):
        check_message(TAGS[data[0]], data[1:])
    else:
        check_message(int.from_bytes(data[1:3], "big"), data[3:])


def message_seeds() -> list[bytes]:
    golden = vector("messages")
    out = [bytes([TAGS.index(v["tag"])]) + bytes.fromhex(v["body"]) for v in golden["messages"]]
    for v in golden["invalid"]:
        body = bytes.fromhex(v["body"])
        if len(body) > 4096:  # the 10,001-transaction one: a fuzzer input stays small
            continue
        out.append(bytes([TAGS.index(v["tag"])]) + body if v["tag"] in m.REGISTRY
                   else bytes([255]) + v["tag"].to_bytes(2, "big") + body)
    return out


TARGETS: dict[str, tuple[Callable[[bytes], None], Callable[[], Iterable[bytes]]]] = {
    "frames": (fuzz_frames, frame_seeds),
    "handshake": (fuzz_handshake, handshake_seeds),
    "transport": (fuzz_transport, transport_seeds),
    "payload": (fuzz_payload, payload_seeds),
    "messages": (fuzz_messages, message_seeds),
}
