"""The independent spec peer (``spec_peer.py``, written from ``wire_spec.md`` alone) against
``narwhal.wire`` in memory, both directions, IK and NK; and the spec peer against the
golden transcripts, so each golden byte is confirmed by two implementations.
At the end, the spec peer's asyncio client against a small echo server built on our
sans-IO layer over 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from narwhal.errors import ErrorCode, HandshakeError, PeerRejected, VersionMismatch
from narwhal.wire.frames import Frame, FrameDecoder, FrameKind, encode_frame
from narwhal.wire.noise import HandshakePayload, NoiseHandshake, Pattern
from narwhal.wire.transport import NoiseTransport
from tests.wire.harness import CLIENT, NETWORK_ID, PRIMARY, cut_points, decode_all, keypair, split
from tests.wire_compat import spec_peer as sp
from tests.wire_compat.test_golden_handshake import EPHEMERAL_WARNING, load, vector_keys

pytestmark = pytest.mark.filterwarnings(f"ignore:{EPHEMERAL_WARNING}")
BOTH = pytest.mark.parametrize("pattern", [Pattern.IK, Pattern.NK])
SPEC_PRIMARY = {
    "role": "primary",
    "authority": b"\xcc" * 32,
    "max_frame_size": 1 << 20,
    "features": [],
}

FRAMES = [
    Frame(FrameKind.REQUEST, 1, 0x0101, cbor2.dumps({"round": 3})),
    Frame(FrameKind.PING, 99, 0, b""),
    Frame(FrameKind.ONEWAY, 0, 0x0200, os.urandom(70_000)),  # spans two Noise messages
    Frame(FrameKind.ERROR, 1, 0, cbor2.dumps([7, "busy"])),
    Frame(FrameKind.REQUEST, 2, 0x0101, os.urandom(1 << 20)),  # 1 MiB: 17 Noise messages
]


def stream_of(frames: list[Frame]) -> bytes:
    return b"".join(encode_frame(f.kind, f.request_id, f.tag, f.body) for f in frames)


class Linked:
    """Our transport and a spec transport that completed a handshake with each other."""

    def __init__(self, ours: NoiseTransport, spec: sp.SpecTransport) -> None:
        self.ours, self.spec = ours, spec

    def ours_to_spec(self, frames: list[Frame], cuts: Sequence[int] = ()) -> list[Frame]:
        reader, out = sp.FrameReader(), []
        for piece in split(b"".join(self.ours.encrypt(stream_of(frames))), cuts):
            out += reader.feed(self.spec.open(piece))
        return [Frame(FrameKind(f.kind), f.request_id, f.tag, f.body) for f in out]

    def spec_to_ours(self, frames: list[Frame], cuts: Sequence[int] = ()) -> list[Frame]:
        decoder, out = FrameDecoder(), []
        for piece in split(self.spec.seal(stream_of(frames)), cuts):
            self.ours.receive_data(piece)
            out += decode_all(decoder, self.ours.decrypt_available())
        return out

    def check_both_ways(self) -> None:
        assert self.ours_to_spec(FRAMES) == FRAMES
        assert self.spec_to_ours(FRAMES) == FRAMES


def spec_initiator_to_our_responder(
    pattern: Pattern, payload: Any = SPEC_PRIMARY
) -> tuple[sp.SpecInitiator, NoiseHandshake, bytes]:
    static, public = keypair()
    initiator_static, initiator_public = keypair()
    ours = NoiseHandshake.responder(
        network_id=NETWORK_ID, local_static=static, accepted_patterns=(pattern,)
    )
    spec = sp.SpecInitiator(
        pattern,
        network_id=NETWORK_ID,
        remote_static=public,
        payload=payload,
        local_static=initiator_static if pattern is Pattern.IK else None,
    )
    return spec, ours, initiator_public


def our_initiator_to_spec_responder(
    pattern: Pattern,
) -> tuple[NoiseHandshake, sp.SpecResponder, bytes]:
    static, public = keypair()
    initiator_static, initiator_public = keypair()
    spec = sp.SpecResponder(network_id=NETWORK_ID, local_static=static)
    ours = NoiseHandshake.initiator(
        pattern=pattern,
        network_id=NETWORK_ID,
        remote_static=public,
        local_static=initiator_static if pattern is Pattern.IK else None,
    )
    ours.initiate(PRIMARY if pattern is Pattern.IK else CLIENT)
    return ours, spec, initiator_public


# --- (a) interop in memory --------------------------------------------------------------------


@BOTH
def test_spec_initiator_to_our_responder(pattern: Pattern) -> None:
    spec, ours, initiator_public = spec_initiator_to_our_responder(pattern)
    ours.receive_data(spec.start())
    assert ours.remote_payload == HandshakePayload("primary", b"\xcc" * 32, None, 1 << 20, ())
    assert ours.remote_static == (initiator_public if pattern is Pattern.IK else None)
    ours.accept(PRIMARY)
    assert spec.receive_data(ours.data_to_send()) == cbor2.loads(PRIMARY.encode())
    assert spec.handshake_hash == ours.handshake_hash
    Linked(ours.transport(), spec.transport()).check_both_ways()


@BOTH
def test_our_initiator_to_spec_responder(pattern: Pattern) -> None:
    ours, spec, initiator_public = our_initiator_to_spec_responder(pattern)
    sent = PRIMARY if pattern is Pattern.IK else CLIENT
    assert spec.receive_data(ours.data_to_send()) == cbor2.loads(sent.encode())
    assert spec.remote_static == (initiator_public if pattern is Pattern.IK else None)
    ours.receive_data(spec.accept(SPEC_PRIMARY))
    assert ours.complete and ours.remote_payload == HandshakePayload.decode(
        sp.encode_payload(SPEC_PRIMARY)
    )
    assert spec.handshake_hash == ours.handshake_hash
    Linked(ours.transport(), spec.transport()).check_both_ways()


@settings(max_examples=30, deadline=None)
@given(st.data(), st.sampled_from([Pattern.IK, Pattern.NK]))
def test_interop_over_random_splits(data: st.DataObject, pattern: Pattern) -> None:
    ours, spec, _ = our_initiator_to_spec_responder(pattern)
    for piece in split(ours.data_to_send(), data.draw(cut_points(200, 5))):
        spec.receive_data(piece)
    for piece in split(spec.accept(SPEC_PRIMARY), data.draw(cut_points(200, 5))):
        ours.receive_data(piece)
    frames = data.draw(st.lists(st.sampled_from(FRAMES[:4]), max_size=6))
    link = Linked(ours.transport(), spec.transport())
    size = len(stream_of(frames)) + 1000
    assert link.ours_to_spec(frames, data.draw(cut_points(size))) == frames
    assert link.spec_to_ours(frames, data.draw(cut_points(size))) == frames


def test_spec_messages_coalesce_and_fill_like_ours() -> None:
    """Both implementations cut a stream into the same Noise messages (65519-byte plaintexts)."""
    ours, spec, _ = our_initiator_to_spec_responder(Pattern.NK)
    spec.receive_data(ours.data_to_send())
    ours.receive_data(spec.accept(SPEC_PRIMARY))
    plaintext = stream_of(FRAMES)
    ours_out = b"".join(ours.transport().encrypt(plaintext))
    spec_out = spec.transport()
    # Same keys in the same direction: the initiator's send cipher, seen from the spec side.
    mirrored = sp.SpecTransport(spec_out.recv_cs, spec_out.send_cs)
    assert mirrored.seal(plaintext) == ours_out


def test_our_rejection_is_read_by_the_spec_peer() -> None:
    spec, ours, _ = spec_initiator_to_our_responder(Pattern.IK)
    ours.receive_data(spec.start())
    ours.reject(ErrorCode.UNAUTHORIZED, "not in committee")
    with pytest.raises(sp.SpecError, match="rejected: 6 not in committee"):
        spec.receive_data(ours.data_to_send())


def test_spec_rejection_is_read_by_us() -> None:
    ours, spec, _ = our_initiator_to_spec_responder(Pattern.IK)
    spec.receive_data(ours.data_to_send())
    with pytest.raises(PeerRejected) as info:
        ours.receive_data(spec.reject(6, "who are you"))
    assert info.value.code is ErrorCode.UNAUTHORIZED


def test_spec_refused_pattern_is_read_by_us() -> None:
    ours, _, _ = our_initiator_to_spec_responder(Pattern.NK)
    spec = sp.SpecResponder(network_id=NETWORK_ID, local_static=keypair()[0], patterns=(sp.IK,))
    with pytest.raises(sp.SpecError) as info:
        spec.receive_data(ours.data_to_send())
    with pytest.raises(HandshakeError):
        ours.receive_data(info.value.reply)


def test_version_negotiation_both_ways() -> None:
    future = b"NWPY\x03\x01\x00\x00"
    ours = NoiseHandshake.responder(network_id=NETWORK_ID, local_static=keypair()[0])
    with pytest.raises(VersionMismatch):
        ours.receive_data(future)
    spec = sp.SpecResponder(network_id=NETWORK_ID, local_static=keypair()[0])
    with pytest.raises(sp.SpecError) as info:
        spec.receive_data(future)
    assert info.value.reply == ours.data_to_send() == b"NWPY\x02\x01\x00\x00"


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00" * 513,  # over the 512-byte payload cap
        cbor2.dumps({"role": "primary", "blob": b"\x00" * 600}),
        cbor2.dumps(["role", "primary"]),
        b"\xff\xff",
    ],
    ids=["513-bytes", "600-byte-map", "array", "not-cbor"],
)
def test_payloads_we_refuse_to_send_are_refused_when_received(payload: bytes) -> None:
    spec, ours, _ = spec_initiator_to_our_responder(Pattern.IK, payload=payload)
    with pytest.raises(HandshakeError):
        ours.receive_data(spec.start())
    assert ours.data_to_send() == b""


def test_spec_peer_reads_what_it_is_given_on_a_version_one_link() -> None:
    """Both implementations encode the same payload dict to the same canonical CBOR."""
    for payload in (
        PRIMARY,
        CLIENT,
        HandshakePayload("worker", b"\x01" * 32, 2**32 - 1, 2**32 - 1, ("a", "b")),
    ):
        fields = cbor2.loads(payload.encode())
        assert sp.encode_payload(fields) == payload.encode()


# --- (b) the golden transcripts, replayed by the spec peer ----------------------------------------


@pytest.mark.parametrize("name", ["ik", "nk"])
def test_spec_peer_reproduces_the_golden_transcript(name: str) -> None:
    v = load(name)
    keys = vector_keys(v)
    pattern = sp.IK if v["pattern"] == "IK" else sp.NK
    network_id = bytes.fromhex(v["network_id"])
    assert sp.prologue(network_id).hex() == v["prologue"]
    assert sp.PROTOCOL_NAMES[pattern].decode() == v["protocol_name"]
    initiator = sp.SpecInitiator(
        pattern,
        network_id=network_id,
        remote_static=bytes.fromhex(v["responder_static_public"]),
        payload=bytes.fromhex(v["initiator_payload"]),
        local_static=keys["initiator_static_private"],
        ephemeral=keys["initiator_ephemeral_private"],
    )
    responder = sp.SpecResponder(
        network_id=network_id,
        local_static=bytes.fromhex(v["responder_static_private"]),
        ephemeral=keys["responder_ephemeral_private"],
    )
    initiator_payload, responder_payload = (
        cbor2.loads(bytes.fromhex(v[k])) for k in ("initiator_payload", "responder_payload")
    )
    assert initiator.start().hex() == v["initiator_sends"]
    assert responder.receive_data(bytes.fromhex(v["initiator_sends"])) == initiator_payload
    remote_static = responder.remote_static
    assert (remote_static.hex() if remote_static else None) == v["initiator_static_public"]
    responder_sends = responder.accept(responder_payload)
    assert responder_sends.hex() == v["responder_sends"]
    assert initiator.receive_data(responder_sends) == responder_payload
    assert initiator.handshake_hash.hex() == responder.handshake_hash.hex() == v["handshake_hash"]
    sides = {"initiator": initiator.transport(), "responder": responder.transport()}
    for message in v["transport"]:
        plaintext, ciphertext = (
            bytes.fromhex(message["plaintext"]),
            bytes.fromhex(message["ciphertext"]),
        )
        assert sides[message["from"]].seal(plaintext) == ciphertext
        receiver = sides["responder" if message["from"] == "initiator" else "initiator"]
        assert receiver.open(ciphertext) == plaintext


# --- the asyncio client against an echo server built on our sans-IO layer -------------------------


async def echo_server(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, static: bytes
) -> None:
    """Handshake (IK or NK), then answer REQUEST with RESPONSE (same body) and PING with PONG."""
    hs = NoiseHandshake.responder(
        network_id=NETWORK_ID, local_static=static, accepted_patterns=(Pattern.IK, Pattern.NK)
    )
    while hs.step.name != "DECIDE":
        hs.receive_data(await reader.read(4096))
    hs.accept(PRIMARY)
    writer.write(hs.data_to_send())
    transport, decoder = hs.transport(), FrameDecoder()
    transport.receive_data(hs.leftover())
    while True:
        for frame in decode_all(decoder, transport.decrypt_available()):
            kind = {FrameKind.REQUEST: FrameKind.RESPONSE, FrameKind.PING: FrameKind.PONG}[
                frame.kind
            ]
            writer.writelines(
                transport.encrypt(encode_frame(kind, frame.request_id, frame.tag, frame.body))
            )
        await writer.drain()
        data = await reader.read(65536)
        if not data:
            writer.close()
            return
        transport.receive_data(data)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("pattern", ["ik", "nk"])
async def test_spec_client_over_a_socket(pattern: str) -> None:
    static, public = keypair()
    server = await asyncio.start_server(lambda r, w: echo_server(r, w, static), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        if pattern == "ik":
            conn = await sp.open_ik(
                "127.0.0.1",
                port,
                network_id=NETWORK_ID,
                local_static=keypair()[0],
                remote_static=public,
                payload=SPEC_PRIMARY,
            )
        else:
            conn = await sp.open_nk(
                "127.0.0.1", port, network_id=NETWORK_ID, remote_static=public, payload=SPEC_PRIMARY
            )
        assert conn.remote_payload["role"] == "primary" and len(conn.handshake_hash) == 32
        big = os.urandom(300_000)
        await conn.send_frame(sp.REQUEST, 5, 0x0101, big)
        await conn.send_frame(sp.PING, 6, 0)
        assert await conn.read_frame() == (sp.RESPONSE, 5, 0x0101, big)
        assert await conn.read_frame() == (sp.PONG, 6, 0, b"")
        await conn.close()
