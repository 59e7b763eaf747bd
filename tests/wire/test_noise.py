"""Tests of ``narwhal.wire.noise``: handshakes, the transport cipher and hostile input
(spec sections 2-4). Both sides are ours, wired in memory by ``tests.wire.harness``."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from narwhal.errors import (
    DecryptError,
    ErrorCode,
    HandshakeError,
    NarwhalError,
    PeerRejected,
    VersionMismatch,
)
from narwhal.wire.noise import (
    WIRE_VERSION,
    HandshakePayload,
    HandshakeStep,
    NoiseHandshake,
    Pattern,
)
from narwhal.wire.transport import MAX_NOISE_MESSAGE, MAX_PLAINTEXT, NoiseTransport
from tests.wire.harness import (
    CLIENT,
    NETWORK_ID,
    OTHER_NETWORK_ID,
    PRIMARY,
    WORKER,
    Pair,
    RawPayload,
    byte_at_a_time,
    connected,
    cut_points,
    keypair,
    pump,
    split,
)

BOTH = pytest.mark.parametrize("pattern", [Pattern.IK, Pattern.NK])


def preamble(
    version: int = WIRE_VERSION, pattern: int = 1, reserved: bytes = b"\0\0", magic: bytes = b"NWPY"
) -> bytes:
    return magic + bytes([version, pattern]) + reserved


def responder(accepted: tuple[Pattern, ...] = (Pattern.IK, Pattern.NK)) -> NoiseHandshake:
    return NoiseHandshake.responder(
        network_id=NETWORK_ID, local_static=keypair()[0], accepted_patterns=accepted
    )


def fails_with(
    hs: NoiseHandshake, data: bytes, error: type[HandshakeError] = HandshakeError
) -> bytes:
    """Feed ``data``; it must raise ``error``. Returns what the side wants to send."""
    with pytest.raises(error):
        hs.receive_data(data)
    assert hs.step is HandshakeStep.FAILED
    with pytest.raises(HandshakeError):
        hs.transport()
    return hs.data_to_send()


# --- successful handshakes ------------------------------------------------------------------


@BOTH
def test_handshake_completes(pattern: Pattern) -> None:
    pair = Pair(pattern, payload=WORKER if pattern is Pattern.IK else CLIENT)
    pair.msg1()
    assert pair.responder.step is HandshakeStep.DECIDE
    assert pair.responder.pattern is pattern
    assert pair.responder.remote_payload == (WORKER if pattern is Pattern.IK else CLIENT)
    expected_static = pair.initiator_public if pattern is Pattern.IK else None
    assert pair.responder.remote_static == expected_static
    pair.msg2(PRIMARY)
    assert pair.initiator.remote_payload == PRIMARY
    assert pair.initiator.remote_static == pair.responder_public
    assert pair.initiator.handshake_hash == pair.responder.handshake_hash
    assert len(pair.initiator.handshake_hash or b"") == 32


@BOTH
def test_message_sizes(pattern: Pattern) -> None:
    """IK msg1 = e(32) + s(32+16) + payload+16; NK msg1 = e(32) + payload+16; msg2 = e + payload+16."""
    pair = Pair(pattern, payload=CLIENT)
    out1 = pair.msg1()
    key_bytes = 32 + 48 if pattern is Pattern.IK else 32
    assert len(out1) == 8 + 2 + key_bytes + len(CLIENT.encode()) + 16
    assert int.from_bytes(out1[8:10], "big") == len(out1) - 10
    out2 = pair.msg2(PRIMARY)
    assert len(out2) == 8 + 2 + 32 + len(PRIMARY.encode()) + 16
    assert out2[:8] == out1[:8] == preamble(pattern=pattern)


@BOTH
@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_byte_at_a_time_and_bytes_like(pattern: Pattern, wrap: type) -> None:
    pair = Pair(pattern)
    for piece in byte_at_a_time(pair.initiator.data_to_send()):
        pair.responder.receive_data(wrap(piece))
    pair.responder.accept(PRIMARY)
    for piece in byte_at_a_time(pair.responder.data_to_send()):
        assert not pair.initiator.complete
        pair.initiator.receive_data(wrap(piece))
    assert pair.initiator.complete
    sender, receiver = pair.initiator.transport(), pair.responder.transport()
    assert pump(sender, receiver, b"hello", range(30)) == b"hello"


def test_transport_bytes_coalesced_with_msg2_are_leftover() -> None:
    pair = Pair(Pattern.IK)
    pair.msg1()
    pair.responder.accept(PRIMARY)
    responder_transport = pair.responder.transport()
    data = pair.responder.data_to_send() + b"".join(responder_transport.encrypt(b"early"))
    pair.initiator.receive_data(data)
    transport = pair.initiator.transport()
    transport.receive_data(pair.initiator.leftover())
    assert transport.decrypt_available() == [b"early"]


def raise_handshake_errors(*calls: Callable[[], object]) -> None:
    for call in calls:
        with pytest.raises(HandshakeError):
            call()


def test_transport_only_when_complete_and_only_once() -> None:
    pair = Pair(Pattern.IK)
    pair.msg1()
    sides = (pair.initiator, pair.responder)
    raise_handshake_errors(*(hs.transport for hs in sides), *(hs.leftover for hs in sides))
    pair.msg2()
    for hs in sides:
        hs.transport()
    raise_handshake_errors(*(hs.transport for hs in sides))


def _unreachable_after(run: Callable[[], object]) -> list[str]:
    """The types a garbage collection would free after ``run()`` (collector off meanwhile):
    empty when reference counting alone freed everything ``run`` dropped."""
    gc.collect()
    gc.disable()
    try:
        run()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return sorted({type(o).__qualname__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@BOTH
def test_a_finished_handshake_leaves_no_reference_cycles(pattern: Pattern) -> None:
    """noiseprotocol's objects point at each other; a handshake cuts those links when it is
    done with them, so a flood of handshakes is freed as it goes (not by full collections)."""
    def handshake() -> None:
        pair = Pair(pattern, payload=WORKER if pattern is Pattern.IK else CLIENT)
        pair.complete()
    assert _unreachable_after(handshake) == []


@BOTH
def test_a_failed_or_abandoned_handshake_leaves_no_reference_cycles(pattern: Pattern) -> None:
    def garbage_message1() -> None:
        pair = Pair(pattern)
        message1 = pair.initiator.data_to_send()
        pair.initiator.discard()  # (its connection closes too)
        hs = responder()
        with pytest.raises(HandshakeError):
            hs.receive_data(message1[:10] + os.urandom(len(message1) - 10))

    def abandoned_after_message1() -> None:
        pair = Pair(pattern)
        pair.msg1()
        pair.responder.discard()  # the connection closed before the responder answered
        pair.initiator.discard()
    assert _unreachable_after(garbage_message1) == []
    assert _unreachable_after(abandoned_after_message1) == []


def test_local_misuse_is_a_value_error() -> None:
    static, public = keypair()
    with pytest.raises(ValueError):
        NoiseHandshake.initiator(
            pattern=Pattern.NK, network_id=NETWORK_ID, remote_static=public, local_static=static
        )
    with pytest.raises(ValueError):
        NoiseHandshake.initiator(pattern=Pattern.IK, network_id=NETWORK_ID, remote_static=public)
    with pytest.raises(ValueError):
        NoiseHandshake.initiator(
            pattern=Pattern.NK, network_id=NETWORK_ID[:31], remote_static=public
        )
    with pytest.raises(ValueError):
        NoiseHandshake.responder(network_id=NETWORK_ID, local_static=static[:31])
    initiator = NoiseHandshake.initiator(
        pattern=Pattern.NK, network_id=NETWORK_ID, remote_static=public
    )
    with pytest.raises(ValueError, match="512"):  # our own oversize payload: a local bug
        initiator.initiate(RawPayload(b"\xa0" * 513))  # type: ignore[arg-type]
    initiator.initiate(CLIENT)
    with pytest.raises(HandshakeError):
        initiator.initiate(CLIENT)
    with pytest.raises(HandshakeError):
        responder().accept(PRIMARY)  # nothing read yet


# --- transport --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 1 << 20])
def test_transport_sizes_and_message_limit(size: int) -> None:
    initiator, responder_ = connected()
    data = os.urandom(size)
    pieces = initiator.encrypt(data)
    assert len(pieces) == 2 * -(-size // MAX_PLAINTEXT)
    for length, ciphertext in zip(pieces[::2], pieces[1::2], strict=True):
        assert int.from_bytes(length, "big") == len(ciphertext) <= MAX_NOISE_MESSAGE
    responder_.receive_data(b"".join(pieces))
    assert b"".join(responder_.decrypt_available()) == data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from([0, 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 1 << 20]))
def test_transport_round_trips_over_random_splits(data: st.DataObject, size: int) -> None:
    initiator, responder_ = connected()
    payload = os.urandom(size)
    stream_size = size + 18 * -(-size // MAX_PLAINTEXT)
    assert pump(initiator, responder_, payload, data.draw(cut_points(stream_size))) == payload
    assert pump(responder_, initiator, payload[:999], data.draw(cut_points(1200))) == payload[:999]


@pytest.mark.parametrize("wrap", [bytearray, memoryview])
def test_transport_bytes_like(wrap: type) -> None:
    initiator, responder_ = connected()
    stream = b"".join(initiator.encrypt(wrap(b"abc" * 30000)))
    responder_.receive_data(wrap(stream))
    assert b"".join(responder_.decrypt_available()) == b"abc" * 30000


def two_messages() -> tuple[bytes, bytes, NoiseTransport]:
    initiator, responder_ = connected()
    first = b"".join(initiator.encrypt(b"first"))
    second = b"".join(initiator.encrypt(b"second"))
    return first, second, responder_


def assert_decrypt_fails(transport: NoiseTransport, data: bytes) -> None:
    transport.receive_data(data)
    with pytest.raises(DecryptError):
        transport.decrypt_available()
    with pytest.raises(DecryptError):  # unusable afterwards
        transport.decrypt_available()


@pytest.mark.parametrize("index", [2, 3, 10, -1])
def test_tampered_byte(index: int) -> None:
    first, _, transport = two_messages()
    tampered = bytearray(first)
    tampered[index] ^= 0x01
    assert_decrypt_fails(transport, bytes(tampered))


def test_replayed_message() -> None:
    first, _, transport = two_messages()
    assert_decrypt_fails(transport, first + first)


def test_reordered_messages() -> None:
    first, second, transport = two_messages()
    assert_decrypt_fails(transport, second + first)


def test_dropped_message() -> None:
    _, second, transport = two_messages()
    assert_decrypt_fails(transport, second)


@pytest.mark.parametrize("length", [0, 1, 15])
def test_message_shorter_than_tag(length: int) -> None:
    _, _, transport = two_messages()
    assert_decrypt_fails(transport, length.to_bytes(2, "big") + b"\0" * length)


def test_wrong_direction_fails() -> None:
    initiator, _ = connected()
    assert_decrypt_fails(initiator, b"".join(initiator.encrypt(b"to myself")))


def test_partial_message_waits() -> None:
    first, _, transport = two_messages()
    transport.receive_data(first[:-1])
    assert transport.decrypt_available() == []
    transport.receive_data(first[-1:])
    assert transport.decrypt_available() == [b"first"]


# --- hostile handshakes: the responder ----------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        preamble(magic=b"HTTP"),
        preamble(reserved=b"\0\1"),
        preamble(reserved=b"\1\0"),
        b"GET / HTTP/1.1\r\n",
    ],
)
def test_bad_preamble_is_closed_without_answer(bad: bytes) -> None:
    assert fails_with(responder(), bad) == b""


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_unknown_version_gets_our_preamble(version: int) -> None:
    out = fails_with(responder(), preamble(version=version), VersionMismatch)
    assert out[:6] == preamble(version=2)[:6]  # our magic and version ...
    assert out[6:] == b"\0\0" and len(out) == 8  # ... and nothing else
    # pattern byte: spec 2 does not say; ours echoes the requested pattern (see report).


@pytest.mark.parametrize(
    ("accepted", "asked"),
    [((Pattern.IK,), 2), ((Pattern.NK,), 1), ((Pattern.IK,), 0), ((Pattern.IK,), 9)],
)
def test_pattern_not_accepted_answers_pattern_zero(
    accepted: tuple[Pattern, ...], asked: int
) -> None:
    assert fails_with(responder(accepted), preamble(pattern=asked)) == preamble(pattern=0)


def test_initiator_reading_refused_pattern_raises() -> None:
    pair = Pair(Pattern.NK, accepted=(Pattern.IK,))
    refusal = fails_with(pair.responder, pair.initiator.data_to_send())
    fails_with(pair.initiator, refusal, PeerRejected)


@pytest.mark.parametrize("length", [1025, 0xFFFF])
def test_handshake_message_over_1024_rejected_on_its_length(length: int) -> None:
    fails_with(responder(), preamble() + length.to_bytes(2, "big"))


def test_handshake_message_of_1024_is_read() -> None:
    hs = responder()
    hs.receive_data(preamble() + (1024).to_bytes(2, "big") + b"\0" * 1023)
    assert hs.step is HandshakeStep.AWAIT_MESSAGE
    with pytest.raises(HandshakeError):
        hs.receive_data(b"\0")  # complete now, and garbage


@pytest.mark.parametrize("size", [0, 1, 31, 32, 95, 96, 200])
def test_garbage_msg1(size: int) -> None:
    assert fails_with(responder(), preamble() + size.to_bytes(2, "big") + os.urandom(size)) == b""


def test_wrong_network_id_fails_at_the_responder() -> None:
    pair = Pair(Pattern.IK, initiator_network_id=OTHER_NETWORK_ID)
    assert fails_with(pair.responder, pair.initiator.data_to_send()) == b""


@BOTH
def test_wrong_responder_static_key_fails_at_the_responder(pattern: Pattern) -> None:
    pair = Pair(pattern, remote_static=keypair()[1])
    assert fails_with(pair.responder, pair.initiator.data_to_send()) == b""


def test_tampered_msg1_byte_fails() -> None:
    pair = Pair(Pattern.IK)
    data = bytearray(pair.initiator.data_to_send())
    data[50] ^= 0x80
    fails_with(pair.responder, bytes(data))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff",
        cbor2.dumps([1, 2]),
        cbor2.dumps("role"),
        cbor2.dumps({1: "primary"}),
        cbor2.dumps({"role": "validator", "max_frame_size": 1024, "features": []}),
        cbor2.dumps({"role": "client", "max_frame_size": 1023, "features": []}),
        cbor2.dumps({"role": "client", "max_frame_size": 2**32, "features": []}),
        cbor2.dumps({"role": "client", "features": []}),
        cbor2.dumps({"role": "client", "max_frame_size": 1024, "features": [1]}),
        cbor2.dumps({"role": "worker", "max_frame_size": 1024, "features": [], "worker_id": -1}),
        cbor2.dumps(
            {"role": "worker", "max_frame_size": 1024, "features": [], "authority": b"\0" * 31}
        ),
    ],
    ids=lambda p: p.hex()[:24],
)
def test_bad_payload_fails_at_the_responder(payload: bytes) -> None:
    pair = Pair(Pattern.IK, payload=RawPayload(payload))
    fails_with(pair.responder, pair.initiator.data_to_send())


def test_unknown_payload_keys_are_ignored() -> None:
    raw = cbor2.dumps(
        {"role": "client", "max_frame_size": 4096, "features": ["x"], "future": {"a": 1}}
    )
    pair = Pair(Pattern.NK, payload=RawPayload(raw))
    pair.msg1()
    assert pair.responder.remote_payload == HandshakePayload(
        "client", max_frame_size=4096, features=("x",)
    )


def test_bad_payload_in_msg2_fails_at_the_initiator() -> None:
    pair = Pair(Pattern.IK)
    pair.msg1()
    pair.responder.accept(RawPayload(cbor2.dumps({"role": "nobody"})))  # type: ignore[arg-type]
    fails_with(pair.initiator, pair.responder.data_to_send())


@pytest.mark.parametrize("version", [1, 3, 0])
def test_initiator_reading_other_version_raises_version_mismatch(version: int) -> None:
    pair = Pair(Pattern.IK)
    fails_with(pair.initiator, preamble(version=version), VersionMismatch)


def test_initiator_reading_bad_preamble() -> None:
    fails_with(Pair(Pattern.IK).initiator, preamble(reserved=b"\x80\x00"))


def test_too_much_early_data_while_deciding() -> None:
    pair = Pair(Pattern.IK)
    pair.msg1()
    pair.responder.receive_data(b"\0" * MAX_NOISE_MESSAGE)  # one early Noise message fits
    with pytest.raises(HandshakeError):
        pair.responder.receive_data(b"\0" * 3)


def test_msg1_replayed_to_a_second_responder() -> None:
    """Observed: IK msg1 carries no freshness, so a second responder with the same key reads
    it, learns the (genuine) initiator key and payload, and can answer. The replay yields
    nothing usable: the answer is keyed to the real initiator's ephemeral key, and the real
    session's traffic does not decrypt on the replayed one."""
    pair = Pair(Pattern.IK)
    msg1 = pair.msg1()
    pair.msg2()
    real = pair.initiator.transport()
    replayed = NoiseHandshake.responder(network_id=NETWORK_ID, local_static=pair.responder_static)
    replayed.receive_data(msg1)
    assert replayed.remote_static == pair.initiator_public
    assert replayed.remote_payload == PRIMARY
    replayed.accept(PRIMARY)
    assert replayed.handshake_hash != pair.responder.handshake_hash  # a fresh responder ephemeral
    assert_decrypt_fails(replayed.transport(), b"".join(real.encrypt(b"secret")))


# --- rejection ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code", [ErrorCode.UNAUTHORIZED, ErrorCode.OVERLOADED, ErrorCode.VERSION_MISMATCH]
)
def test_reject_raises_peer_rejected_with_code(code: ErrorCode) -> None:
    pair = Pair(Pattern.IK)
    pair.msg1()
    pair.responder.reject(code, "not in committee")
    assert pair.responder.step is HandshakeStep.FAILED
    with pytest.raises(HandshakeError):
        pair.responder.transport()
    out = pair.responder.data_to_send()
    assert out[:8] == preamble(pattern=1)
    with pytest.raises(PeerRejected, match="not in committee") as info:
        pair.initiator.receive_data(out)
    assert info.value.code is code


def test_reject_reason_truncated_to_200_characters() -> None:
    pair = Pair(Pattern.IK)
    pair.msg1()
    pair.responder.reject(ErrorCode.UNAUTHORIZED, "x" * 300)
    with pytest.raises(PeerRejected, match="x" * 200 + r" \(") as info:
        pair.initiator.receive_data(pair.responder.data_to_send())
    assert "x" * 201 not in str(info.value)


def test_reject_with_unknown_code_is_internal() -> None:
    pair = Pair(Pattern.IK)
    pair.msg1()
    pair.responder.reject(999, "from the future")  # type: ignore[arg-type]
    with pytest.raises(PeerRejected) as info:
        pair.initiator.receive_data(pair.responder.data_to_send())
    assert info.value.code is ErrorCode.INTERNAL


def test_reject_with_long_multibyte_reason_is_still_peer_rejected() -> None:
    pair = Pair(Pattern.IK)
    pair.msg1()
    pair.responder.reject(ErrorCode.UNAUTHORIZED, "€" * 200)  # 600 bytes of UTF-8
    with pytest.raises(PeerRejected):
        pair.initiator.receive_data(pair.responder.data_to_send())


# --- only narwhal errors escape ----------------------------------------------------------------


def assert_only_narwhal_errors(hs: NoiseHandshake, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            hs.receive_data(chunk)
    except NarwhalError as exc:
        assert isinstance(exc, HandshakeError)
        assert hs.step is HandshakeStep.FAILED


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=1200), st.lists(st.integers(0, 1200), max_size=4), st.booleans())
def test_garbage_after_a_valid_preamble(
    garbage: bytes, cuts: list[int], as_initiator: bool
) -> None:
    hs = Pair(Pattern.IK).initiator if as_initiator else responder()
    assert_only_narwhal_errors(hs, split(preamble() + garbage, cuts))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_handshake_bytes(garbage: bytes) -> None:
    assert_only_narwhal_errors(responder(), [garbage])
    assert_only_narwhal_errors(Pair(Pattern.NK).initiator, [garbage])


@settings(max_examples=100, deadline=None)
@given(
    st.binary(max_size=512)
    | st.builds(
        cbor2.dumps,
        st.dictionaries(
            st.text(max_size=15),
            st.integers() | st.text(max_size=10) | st.binary(max_size=40),
            max_size=6,
        ),
    )
)
def test_garbage_payload(payload: bytes) -> None:
    pair = Pair(Pattern.IK, payload=RawPayload(payload[:512]))
    assert_only_narwhal_errors(pair.responder, [pair.initiator.data_to_send()])
    if pair.responder.step is HandshakeStep.DECIDE:
        pair.responder.accept(RawPayload(payload[:512]))  # type: ignore[arg-type]
        assert_only_narwhal_errors(pair.initiator, [pair.responder.data_to_send()])
