"""Shared test helpers for the wire layer: keys, payloads, in-memory handshakes, byte splits.

A paired harness in the h11 style: what one side's ``data_to_send()`` produces is fed,
in whatever chunks the test chooses, to the other side's ``receive_data()``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import strategies as st

from narwhal.wire.frames import Frame, FrameDecoder
from narwhal.wire.noise import HandshakePayload, NoiseHandshake, Pattern
from narwhal.wire.transport import NoiseTransport

NETWORK_ID = bytes(range(32))
OTHER_NETWORK_ID = bytes(range(1, 33))

PRIMARY = HandshakePayload(role="primary", authority=b"\xaa" * 32, max_frame_size=1 << 20)
WORKER = HandshakePayload(role="worker", authority=b"\xbb" * 32, worker_id=3)
CLIENT = HandshakePayload(role="client", max_frame_size=1024)


def keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 (private, public) pair as raw bytes."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), public_of(private.private_bytes_raw())


def public_of(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class RawPayload:
    """Duck-types :class:`HandshakePayload` to send arbitrary payload bytes (hostile tests)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def encode(self) -> bytes:
        return self.data


class Pair:
    """One initiator and one responder handshake wired to each other in memory."""

    def __init__(
        self,
        pattern: Pattern,
        *,
        initiator_network_id: bytes = NETWORK_ID,
        responder_network_id: bytes = NETWORK_ID,
        accepted: Iterable[Pattern] = (Pattern.IK, Pattern.NK),
        remote_static: bytes | None = None,
        payload: HandshakePayload | RawPayload = PRIMARY,
    ) -> None:
        self.responder_static, self.responder_public = keypair()
        self.initiator_static, self.initiator_public = keypair()
        self.initiator = NoiseHandshake.initiator(
            pattern=pattern,
            network_id=initiator_network_id,
            remote_static=remote_static or self.responder_public,
            local_static=self.initiator_static if pattern is Pattern.IK else None,
        )
        self.responder = NoiseHandshake.responder(
            network_id=responder_network_id,
            local_static=self.responder_static,
            accepted_patterns=accepted,
        )
        self.initiator.initiate(payload)  # type: ignore[arg-type]

    def msg1(self) -> bytes:
        """Deliver preamble + msg1 to the responder (which then has to decide)."""
        data = self.initiator.data_to_send()
        self.responder.receive_data(data)
        return data

    def msg2(self, payload: HandshakePayload = PRIMARY) -> bytes:
        """Accept and deliver preamble + msg2 to the initiator."""
        self.responder.accept(payload)
        data = self.responder.data_to_send()
        self.initiator.receive_data(data)
        return data

    def complete(self) -> tuple[NoiseTransport, NoiseTransport]:
        """Run the whole handshake; return (initiator transport, responder transport)."""
        self.msg1()
        self.msg2()
        assert self.initiator.complete and self.responder.complete
        return self.initiator.transport(), self.responder.transport()


def connected(pattern: Pattern = Pattern.IK) -> tuple[NoiseTransport, NoiseTransport]:
    return Pair(pattern).complete()


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (clamped and sorted); empty pieces are kept."""
    points = sorted(min(max(c, 0), len(data)) for c in cuts)
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def cut_points(draw: st.DrawFn, size: int, max_cuts: int = 20) -> list[int]:
    """Offsets at which to split a ``size``-byte stream: near the edges and anywhere."""
    return draw(st.lists(st.integers(0, size), max_size=max_cuts))


def byte_at_a_time(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


def pump(
    sender: NoiseTransport, receiver: NoiseTransport, data: bytes, cuts: Sequence[int] = ()
) -> bytes:
    """Encrypt ``data`` on one side and decrypt it on the other, delivered in pieces."""
    stream = b"".join(sender.encrypt(data))
    out = bytearray()
    for piece in split(stream, cuts):
        receiver.receive_data(piece)
        for plaintext in receiver.decrypt_available():
            out += plaintext
    return bytes(out)


def decode_all(decoder: FrameDecoder, chunks: Iterable[bytes]) -> list[Frame]:
    """Feed chunks one by one, draining ``next_frame()`` after each."""
    frames = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    return frames
