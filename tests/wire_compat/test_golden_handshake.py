"""Golden handshake transcripts: fixed keys in, exact bytes out (spec sections 2-5).

``vectors/handshake_ik.json`` and ``vectors/handshake_nk.json`` record, for fixed static and
ephemeral keys, every byte both sides send: preamble + message 1, preamble + message 2, the
handshake hash, then two transport messages each way. Our implementation must reproduce them
exactly and decrypt them; ``test_spec_peer_sansio.py`` checks the independent spec peer
against the same files.

Regenerate (after an intended wire change only, and say so in spec section 11)::

    python -m tests.wire_compat.test_golden_handshake --print ik > tests/wire_compat/vectors/handshake_ik.json
    python -m tests.wire_compat.test_golden_handshake --print nk > tests/wire_compat/vectors/handshake_nk.json
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import cbor2
import pytest

from narwhal.wire.frames import FrameKind, encode_error_body, encode_frame
from narwhal.wire.noise import HandshakePayload, NoiseHandshake, Pattern, prologue
from narwhal.wire.transport import NoiseTransport
from tests.wire.harness import public_of

VECTORS = Path(__file__).parent / "vectors"
FILES = {"ik": "handshake_ik.json", "nk": "handshake_nk.json"}
#: noiseprotocol warns whenever an ephemeral key is preset, which is the point here.
EPHEMERAL_WARNING = "One of ephemeral keypairs is already set"
pytestmark = pytest.mark.filterwarnings(f"ignore:{EPHEMERAL_WARNING}")


def load(name: str) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads((VECTORS / FILES[name]).read_text())
    return vector


def fixed_key(label: str) -> bytes:
    return hashlib.sha256(f"narwhal-py golden {label}".encode()).digest()


def transport_plaintexts() -> list[tuple[str, bytes]]:
    """Two messages each way, alternating; each is whole application frames."""
    return [
        ("initiator", encode_frame(FrameKind.REQUEST, 1, 0x0102, cbor2.dumps([b"\x01" * 8, 42]))),
        ("responder", encode_frame(FrameKind.RESPONSE, 1, 0x0103, cbor2.dumps(["ok"]))),
        (
            "initiator",
            encode_frame(FrameKind.PING, 7) + encode_frame(FrameKind.ONEWAY, 0, 0x0200, b"\xa0"),
        ),
        ("responder", encode_frame(FrameKind.GOAWAY, 0, 0, encode_error_body(10, "bye"))),
    ]


def payloads(pattern: Pattern) -> tuple[HandshakePayload, HandshakePayload]:
    worker = HandshakePayload("worker", authority=fixed_key("authority A"), worker_id=0)
    if pattern is Pattern.NK:
        return HandshakePayload("client", max_frame_size=65536), worker
    return HandshakePayload("worker", authority=fixed_key("authority B"), worker_id=0), worker


def generate(name: str) -> dict[str, Any]:
    """Run our implementation on the fixed keys and record everything."""
    pattern = Pattern[name.upper()]
    network_id = hashlib.sha256(b"narwhal-py golden committee").digest()
    responder_static = fixed_key(f"{name} responder static")
    keys = {
        "initiator_static_private": fixed_key(f"{name} initiator static")
        if pattern is Pattern.IK
        else None,
        "responder_static_private": responder_static,
        "initiator_ephemeral_private": fixed_key(f"{name} initiator ephemeral"),
        "responder_ephemeral_private": fixed_key(f"{name} responder ephemeral"),
    }
    sides = handshake(pattern, network_id, keys, *payloads(pattern))
    initiator, responder, initiator_sends, responder_sends = sides
    assert initiator.handshake_hash == responder.handshake_hash
    transports = {"initiator": initiator.transport(), "responder": responder.transport()}
    messages = [
        {
            "from": sender,
            "plaintext": plaintext.hex(),
            "ciphertext": seal(transports[sender], plaintext).hex(),
        }
        for sender, plaintext in transport_plaintexts()
    ]
    initiator_payload, responder_payload = payloads(pattern)
    static = keys["initiator_static_private"]
    return {
        "description": (
            f"narwhal-py wire v1 {pattern.protocol_name.decode()} handshake and transport, "
            "fixed keys; all byte strings hex. *_sends are the exact bytes each side writes."
        ),
        "pattern": pattern.name,
        "protocol_name": pattern.protocol_name.decode(),
        "network_id": network_id.hex(),
        "prologue": prologue(network_id).hex(),
        **{k: v.hex() if v else None for k, v in keys.items()},
        "initiator_static_public": public_of(static).hex() if static else None,
        "responder_static_public": public_of(responder_static).hex(),
        "initiator_payload": initiator_payload.encode().hex(),
        "responder_payload": responder_payload.encode().hex(),
        "initiator_sends": initiator_sends.hex(),
        "responder_sends": responder_sends.hex(),
        "handshake_hash": (initiator.handshake_hash or b"").hex(),
        "transport": messages,
    }


def seal(transport: NoiseTransport, plaintext: bytes) -> bytes:
    return b"".join(transport.encrypt(plaintext))


def handshake(
    pattern: Pattern,
    network_id: bytes,
    keys: dict[str, bytes | None],
    initiator_payload: HandshakePayload,
    responder_payload: HandshakePayload,
) -> tuple[NoiseHandshake, NoiseHandshake, bytes, bytes]:
    responder_static = keys["responder_static_private"]
    assert responder_static is not None
    initiator = NoiseHandshake.initiator(
        pattern=pattern,
        network_id=network_id,
        remote_static=public_of(responder_static),
        local_static=keys["initiator_static_private"],
        ephemeral=keys["initiator_ephemeral_private"],
    )
    responder = NoiseHandshake.responder(
        network_id=network_id,
        local_static=responder_static,
        accepted_patterns=(pattern,),
        ephemeral=keys["responder_ephemeral_private"],
    )
    initiator.initiate(initiator_payload)
    initiator_sends = initiator.data_to_send()
    responder.receive_data(initiator_sends)
    responder.accept(responder_payload)
    responder_sends = responder.data_to_send()
    initiator.receive_data(responder_sends)
    return initiator, responder, initiator_sends, responder_sends


def vector_keys(vector: dict[str, Any]) -> dict[str, bytes | None]:
    names = [
        "initiator_static_private",
        "responder_static_private",
        "initiator_ephemeral_private",
        "responder_ephemeral_private",
    ]
    return {k: bytes.fromhex(vector[k]) if vector[k] else None for k in names}


@pytest.fixture(params=sorted(FILES))
def vector(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_payloads_are_canonical(vector: dict[str, Any]) -> None:
    for key in ("initiator_payload", "responder_payload"):
        raw = bytes.fromhex(vector[key])
        assert HandshakePayload.decode(raw).encode() == raw
        assert cbor2.dumps(cbor2.loads(raw), canonical=True) == raw


def test_keys_match_their_public_halves(vector: dict[str, Any]) -> None:
    for side in ("initiator", "responder"):
        private, public = vector[f"{side}_static_private"], vector[f"{side}_static_public"]
        assert (public_of(bytes.fromhex(private)).hex() if private else None) == public
    assert (vector["initiator_static_public"] is None) == (vector["pattern"] == "NK")


def test_we_reproduce_the_transcript(vector: dict[str, Any]) -> None:
    pattern = Pattern[vector["pattern"]]
    network_id = bytes.fromhex(vector["network_id"])
    assert prologue(network_id).hex() == vector["prologue"]
    initiator, responder, initiator_sends, responder_sends = handshake(
        pattern,
        network_id,
        vector_keys(vector),
        HandshakePayload.decode(bytes.fromhex(vector["initiator_payload"])),
        HandshakePayload.decode(bytes.fromhex(vector["responder_payload"])),
    )
    assert initiator_sends.hex() == vector["initiator_sends"]
    assert responder_sends.hex() == vector["responder_sends"]
    assert initiator.remote_payload == HandshakePayload.decode(
        bytes.fromhex(vector["responder_payload"])
    )
    assert responder.remote_payload == HandshakePayload.decode(
        bytes.fromhex(vector["initiator_payload"])
    )
    expected_static = vector["initiator_static_public"]
    assert (responder.remote_static.hex() if responder.remote_static else None) == expected_static
    assert (initiator.handshake_hash or b"").hex() == vector["handshake_hash"]
    assert (responder.handshake_hash or b"").hex() == vector["handshake_hash"]
    sides = {"initiator": initiator.transport(), "responder": responder.transport()}
    for message in vector["transport"]:
        plaintext, ciphertext = (
            bytes.fromhex(message["plaintext"]),
            bytes.fromhex(message["ciphertext"]),
        )
        assert seal(sides[message["from"]], plaintext) == ciphertext
        receiver = sides["responder" if message["from"] == "initiator" else "initiator"]
        receiver.receive_data(ciphertext)
        assert receiver.decrypt_available() == [plaintext]


def test_we_read_the_recorded_bytes_from_a_fresh_responder(vector: dict[str, Any]) -> None:
    """The responder side alone, fed the recorded initiator bytes (no shared state)."""
    keys = vector_keys(vector)
    responder = NoiseHandshake.responder(
        network_id=bytes.fromhex(vector["network_id"]),
        local_static=bytes.fromhex(vector["responder_static_private"]),
        accepted_patterns=(Pattern[vector["pattern"]],),
        ephemeral=keys["responder_ephemeral_private"],
    )
    responder.receive_data(bytes.fromhex(vector["initiator_sends"]))
    responder.accept(HandshakePayload.decode(bytes.fromhex(vector["responder_payload"])))
    assert responder.data_to_send().hex() == vector["responder_sends"]
    transport = responder.transport()
    from_initiator = [m for m in vector["transport"] if m["from"] == "initiator"]
    transport.receive_data(b"".join(bytes.fromhex(m["ciphertext"]) for m in from_initiator))
    assert [p.hex() for p in transport.decrypt_available()] == [
        m["plaintext"] for m in from_initiator
    ]


def test_generator_matches_the_files(vector: dict[str, Any]) -> None:
    assert generate(vector["pattern"].lower()) == vector


def test_fixed_ephemeral_keys_do_not_warn() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate("nk")
    assert [str(w.message) for w in caught] == []


if __name__ == "__main__":
    warnings.filterwarnings("ignore", EPHEMERAL_WARNING)
    if sys.argv[1:2] != ["--print"]:
        sys.exit(
            f"usage: python -m tests.wire_compat.test_golden_handshake --print [{'|'.join(FILES)}]"
        )
    chosen = sys.argv[2:] or sorted(FILES)
    out = {FILES[n]: generate(n) for n in chosen}
    print(json.dumps(out[FILES[chosen[0]]] if len(chosen) == 1 else out, indent=2))
