"""An independent narwhal-py wire peer, written only from ``wire_spec.md`` sections 1-8.

It exists to keep the spec honest: if our node and this file agree byte for byte, the spec
is enough to build a compatible peer. It therefore imports nothing from ``narwhal`` and does
not use the ``noise`` package; the Noise Protocol Framework (revision 34) pieces needed for
``Noise_IK_25519_AESGCM_BLAKE2s`` and ``Noise_NK_25519_AESGCM_BLAKE2s`` are written
out below from the Noise specification (sections 5 and 7), using ``cryptography`` for X25519
and AES-256-GCM and ``hashlib``/``hmac`` for BLAKE2s and HKDF.

Layout (sans-IO: bytes in, bytes out; plus a small asyncio client at the bottom):

* ``CipherState`` / ``SymmetricState`` / ``HandshakeState`` — Noise, spec section 3.1.
* ``SpecInitiator`` / ``SpecResponder`` — preamble (2), handshake framing (3.3), payloads (3.4).
* ``SpecTransport`` — Noise transport messages (4) carrying a byte stream.
* ``encode_frame`` / ``FrameReader`` — application frames (5).
* ``open_ik`` / ``open_nk`` -> ``SpecConnection`` — a client over a real TCP socket.

Errors are all ``SpecError``; when the spec says the responder answers before closing
(version mismatch, refused pattern) the bytes to send are in ``SpecError.reply``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import struct
from typing import Any, NamedTuple, TypeVar

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# --- constants (spec sections 2-5) -----------------------------------------------------

MAGIC = b"NWPY"
VERSION = 2
IK, NK, REFUSED = 1, 2, 0
PROLOGUE_LABEL = b"narwhal-py wire v1\x00"  # 18 ASCII bytes + one zero byte (3.2)
MAX_HANDSHAKE_MESSAGE = 1024  # 3.3
MAX_PAYLOAD = 512  # 3.4
MAX_PLAINTEXT = 65519  # 4: 65535 - 16-byte tag
DEFAULT_MAX_FRAME_SIZE = 8 * 1024 * 1024  # 5
FRAME_HEADER = struct.Struct(">IBIH")  # length, kind, request_id, tag
REQUEST, RESPONSE, ONEWAY, ERROR, PING, PONG, GOAWAY = range(7)
PROTOCOL_NAMES = {
    IK: b"Noise_IK_25519_AESGCM_BLAKE2s",
    NK: b"Noise_NK_25519_AESGCM_BLAKE2s",
}
HASHLEN = 32
T = TypeVar("T")


class SpecError(Exception):
    """Any protocol failure; ``reply`` holds bytes the spec says to send before closing."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


# --- Noise primitives (Noise spec section 4) -------------------------------------------


def need(value: T | None) -> T:
    if value is None:
        raise SpecError("a key this pattern needs is missing")
    return value


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def as_private(key: bytes | X25519PrivateKey) -> X25519PrivateKey:
    return key if isinstance(key, X25519PrivateKey) else X25519PrivateKey.from_private_bytes(key)


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # low-order point: all-zero shared secret
        raise SpecError(f"bad DH public key: {exc}") from exc


def hash_(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
    def mac(key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.blake2s).digest()

    temp_key = mac(chaining_key, ikm)
    out, prev = [], b""
    for i in range(1, outputs + 1):
        prev = mac(temp_key, prev + bytes([i]))
        out.append(prev)
    return out


class CipherState:
    """A key and a 64-bit nonce; nonce 2^64-1 is reserved (Noise 5.1)."""

    def __init__(self, key: bytes | None = None) -> None:
        self.k, self.n = key, 0

    def _nonce(self) -> bytes:
        if self.n >= 2**64 - 1:
            raise SpecError("nonce exhausted")
        return b"\x00\x00\x00\x00" + self.n.to_bytes(8, "big")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        ciphertext = AESGCM(self.k).encrypt(self._nonce(), plaintext, ad)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        try:
            plaintext = AESGCM(self.k).decrypt(self._nonce(), ciphertext, ad)
        except InvalidTag as exc:
            raise SpecError("authentication failed") from exc
        self.n += 1
        return plaintext


class SymmetricState:
    """Noise 5.2: chaining key ``ck``, handshake hash ``h`` and a CipherState."""

    def __init__(self, protocol_name: bytes) -> None:
        padded = protocol_name.ljust(HASHLEN, b"\x00")
        self.h = padded if len(protocol_name) <= HASHLEN else hash_(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, key = hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(key)

    def mix_hash(self, data: bytes) -> None:
        self.h = hash_(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return CipherState(k1), CipherState(k2)


# Message patterns (Noise 7.4 / 7.5). Both have the pre-message "<- s".
MESSAGES = {
    IK: (("e", "es", "s", "ss"), ("e", "ee", "se")),
    NK: (("e", "es"), ("e", "ee")),
}


class HandshakeState:
    """Noise 5.3 for the two two-message patterns above."""

    def __init__(
        self,
        pattern: int,
        initiator: bool,
        prologue: bytes,
        s: X25519PrivateKey | None,
        rs: bytes | None,
        e: X25519PrivateKey | None = None,
    ) -> None:
        self.pattern, self.initiator = pattern, initiator
        self.s, self.e, self.rs = s, e, rs
        self.re: bytes | None = None
        self.ss = SymmetricState(PROTOCOL_NAMES[pattern])
        self.ss.mix_hash(prologue)
        self.ss.mix_hash(need(rs) if initiator else public_bytes(need(s)))  # pre-message <- s
        self.turn = 0

    def _dh(self, token: str) -> bytes:
        # token "xy": x is the initiator's key, y the responder's.
        mine, theirs = (token[0], token[1]) if self.initiator else (token[1], token[0])
        local = self.e if mine == "e" else self.s
        remote = self.re if theirs == "e" else self.rs
        return dh(need(local), need(remote))

    def write_message(self, payload: bytes) -> bytes:
        out = b""
        for token in MESSAGES[self.pattern][self.turn]:
            if token == "e":
                self.e = self.e or X25519PrivateKey.generate()
                out += public_bytes(self.e)
                self.ss.mix_hash(public_bytes(self.e))
            elif token == "s":
                out += self.ss.encrypt_and_hash(public_bytes(need(self.s)))
            else:
                self.ss.mix_key(self._dh(token))
        self.turn += 1
        return out + self.ss.encrypt_and_hash(payload)

    def read_message(self, message: bytes) -> bytes:
        for token in MESSAGES[self.pattern][self.turn]:
            if token == "e":
                if len(message) < 32:
                    raise SpecError("handshake message too short")
                self.re, message = message[:32], message[32:]
                self.ss.mix_hash(self.re)
            elif token == "s":
                size = 48 if self.ss.cipher.k is not None else 32
                if len(message) < size:
                    raise SpecError("handshake message too short")
                self.rs = self.ss.decrypt_and_hash(message[:size])
                message = message[size:]
            else:
                self.ss.mix_key(self._dh(token))
        self.turn += 1
        return self.ss.decrypt_and_hash(message)


# --- preamble, handshake framing and payloads (spec sections 2, 3.3, 3.4) --------------


def preamble(pattern: int, version: int = VERSION) -> bytes:
    return MAGIC + bytes([version, pattern]) + b"\x00\x00"


def prologue(network_id: bytes, label: bytes = PROLOGUE_LABEL) -> bytes:
    return label + network_id


def frame_handshake(message: bytes) -> bytes:
    return struct.pack(">H", len(message)) + message


def encode_payload(payload: dict[str, Any] | bytes) -> bytes:
    return payload if isinstance(payload, bytes) else cbor2.dumps(payload, canonical=True)


def decode_payload(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_PAYLOAD:
        raise SpecError("handshake payload over 512 bytes")
    try:
        payload = cbor2.loads(raw)
    except Exception as exc:  # cbor2 raises several types on garbage
        raise SpecError(f"payload is not CBOR: {exc}") from exc
    if not isinstance(payload, dict) or not all(isinstance(k, str) for k in payload):
        raise SpecError("payload is not a map with text keys")
    return payload


class _Reader:
    """A byte buffer that reads an 8-byte preamble and length-prefixed messages."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def take(self, n: int) -> bytes | None:
        if len(self.buf) < n:
            return None
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def take_preamble(self) -> tuple[int, int] | None:
        """(version, pattern), or None if incomplete; raises on wrong magic / reserved bytes."""
        data = self.take(8)
        if data is not None and (data[:4] != MAGIC or data[6:8] != b"\x00\x00"):
            raise SpecError("bad preamble")
        return None if data is None else (data[4], data[5])

    def take_message(self, limit: int = MAX_HANDSHAKE_MESSAGE) -> bytes | None:
        if len(self.buf) < 2:
            return None
        (length,) = struct.unpack_from(">H", self.buf)
        if length > limit:
            raise SpecError(f"handshake message of {length} bytes")
        if len(self.buf) < 2 + length:
            return None
        del self.buf[:2]
        return self.take(length)


class _Side:
    """What both handshake sides share: read the peer's preamble, then its one message."""

    hs: HandshakeState | None

    def __init__(self) -> None:
        self.reader = _Reader()
        self.remote_payload: dict[str, Any] | None = None
        self._preamble_seen = False

    def receive_data(self, data: bytes) -> dict[str, Any] | None:
        """Returns the peer's payload once its handshake message is read, else None."""
        self.reader.buf += data  # after the handshake: early transport bytes, kept for transport()
        if self.remote_payload is not None:
            return self.remote_payload
        if not self._preamble_seen:
            head = self.reader.take_preamble()
            if head is None:
                return None
            self._on_preamble(*head)
            self._preamble_seen = True
        message = self.reader.take_message()
        if message is None:
            return None
        self.remote_payload = self._on_payload(decode_payload(need(self.hs).read_message(message)))
        return self.remote_payload

    def _on_preamble(self, version: int, pattern: int) -> None:
        raise NotImplementedError

    def _on_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    @property
    def handshake_hash(self) -> bytes:
        return need(self.hs).ss.h

    def transport(self) -> SpecTransport:
        """Split (3.1): the first cipher encrypts initiator -> responder."""
        hs = need(self.hs)
        first, second = hs.ss.split()
        send, recv = (first, second) if hs.initiator else (second, first)
        return SpecTransport(send, recv, bytes(self.reader.buf))


class SpecInitiator(_Side):
    """``start()`` gives preamble + message 1; feed the reply to ``receive_data`` until it
    returns the responder's payload. Then ``transport()``."""

    def __init__(
        self,
        pattern: int,
        *,
        network_id: bytes,
        remote_static: bytes,
        payload: dict[str, Any] | bytes,
        local_static: bytes | X25519PrivateKey | None = None,
        ephemeral: bytes | X25519PrivateKey | None = None,
    ) -> None:
        super().__init__()
        static = as_private(local_static) if local_static is not None else None
        if pattern == IK and static is None:
            raise SpecError("IK needs a local static key")
        e = as_private(ephemeral) if ephemeral is not None else None
        self.pattern = pattern
        self.hs = HandshakeState(pattern, True, prologue(network_id), static, remote_static, e)
        self.payload = encode_payload(payload)

    def start(self) -> bytes:
        return preamble(self.pattern) + frame_handshake(need(self.hs).write_message(self.payload))

    def _on_preamble(self, version: int, pattern: int) -> None:
        if version != VERSION:
            raise SpecError(f"VERSION_MISMATCH: responder speaks version {version}")
        if pattern != self.pattern:
            raise SpecError(f"responder refused pattern (answered {pattern})")

    def _on_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        if "error" in payload:
            raise SpecError(f"rejected: {payload.get('error')} {payload.get('reason')}")
        return payload


class SpecResponder(_Side):
    """Feed bytes to ``receive_data`` until it returns the initiator's payload, then call
    ``accept(payload)`` or ``reject(code, reason)`` for the bytes to send."""

    def __init__(
        self,
        *,
        network_id: bytes,
        local_static: bytes | X25519PrivateKey,
        patterns: tuple[int, ...] = (IK, NK),
        ephemeral: bytes | X25519PrivateKey | None = None,
    ) -> None:
        super().__init__()
        self.network_id, self.static = network_id, as_private(local_static)
        self.patterns = patterns
        self.ephemeral = as_private(ephemeral) if ephemeral is not None else None
        self.hs = None

    def _on_preamble(self, version: int, pattern: int) -> None:
        if version != VERSION:
            raise SpecError(f"unknown version {version}", reply=preamble(pattern))
        if pattern not in self.patterns:
            raise SpecError(f"pattern {pattern} refused", reply=preamble(REFUSED))
        self.hs = HandshakeState(
            pattern, False, prologue(self.network_id), self.static, None, self.ephemeral
        )

    @property
    def remote_static(self) -> bytes | None:
        return self.hs.rs if self.hs and self.hs.pattern == IK else None

    def accept(self, payload: dict[str, Any] | bytes) -> bytes:
        hs = need(self.hs)
        return preamble(hs.pattern) + frame_handshake(hs.write_message(encode_payload(payload)))

    def reject(self, code: int, reason: str) -> bytes:
        return self.accept({"error": code, "reason": reason[:200]})


# --- transport messages and application frames (spec sections 4, 5) -------------------


class SpecTransport:
    """``seal`` turns stream bytes into framed Noise messages; ``open`` does the reverse."""

    def __init__(self, send: CipherState, recv: CipherState, leftover: bytes = b"") -> None:
        self.send_cs, self.recv_cs = send, recv
        self.reader = _Reader()
        self.reader.buf += leftover

    def seal(self, plaintext: bytes) -> bytes:
        out = bytearray()
        for start in range(0, max(len(plaintext), 1), MAX_PLAINTEXT):
            chunk = plaintext[start : start + MAX_PLAINTEXT]
            ciphertext = self.send_cs.encrypt_with_ad(b"", chunk)
            out += struct.pack(">H", len(ciphertext)) + ciphertext
        return bytes(out)

    def open(self, data: bytes) -> bytes:
        self.reader.buf += data
        out = bytearray()
        while (ciphertext := self.reader.take_message(limit=0xFFFF)) is not None:
            if len(ciphertext) < 16:
                raise SpecError("transport message shorter than its tag")
            out += self.recv_cs.decrypt_with_ad(b"", ciphertext)
        return bytes(out)


class Frame(NamedTuple):
    kind: int
    request_id: int
    tag: int
    body: bytes


def encode_frame(kind: int, request_id: int, tag: int, body: bytes = b"") -> bytes:
    return FRAME_HEADER.pack(7 + len(body), kind, request_id, tag) + body


class FrameReader:
    """Splits the decrypted stream into frames; rejects bad lengths on the length bytes."""

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        frames = []
        while len(self.buf) >= 4:
            (length,) = struct.unpack_from(">I", self.buf)
            if length < 7 or length > self.max_frame_size:
                raise SpecError(f"bad frame length {length}")
            if len(self.buf) < 4 + length:
                break
            _, kind, request_id, tag = FRAME_HEADER.unpack_from(self.buf)
            if kind > GOAWAY:
                raise SpecError(f"unknown frame kind {kind}")
            frames.append(Frame(kind, request_id, tag, bytes(self.buf[11 : 4 + length])))
            del self.buf[: 4 + length]
        return frames


# --- a small asyncio client ------------------------------------------------------------


class SpecConnection:
    """An established link: frames in, frames out, over one TCP connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        transport: SpecTransport,
        remote_payload: dict[str, Any],
        handshake_hash: bytes,
    ) -> None:
        self.reader, self.writer, self.transport = reader, writer, transport
        self.remote_payload, self.handshake_hash = remote_payload, handshake_hash
        self.frames = FrameReader()
        self.pending: list[Frame] = self.frames.feed(transport.open(b""))

    async def send_frame(self, kind: int, request_id: int, tag: int, body: bytes = b"") -> None:
        self.writer.write(self.transport.seal(encode_frame(kind, request_id, tag, body)))
        await self.writer.drain()

    async def read_frame(self) -> Frame:
        """The next frame; raises ``EOFError`` if the peer closes first."""
        while not self.pending:
            data = await self.reader.read(65536)
            if not data:
                raise EOFError("connection closed by peer")
            self.pending += self.frames.feed(self.transport.open(data))
        return self.pending.pop(0)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def _open(host: str, port: int, initiator: SpecInitiator) -> SpecConnection:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(initiator.start())
        await writer.drain()
        while (payload := initiator.receive_data(await reader.read(4096) or b"")) is None:
            if reader.at_eof():
                raise SpecError("connection closed during the handshake")
    except BaseException:
        writer.close()
        raise
    return SpecConnection(reader, writer, initiator.transport(), payload, initiator.handshake_hash)


async def open_ik(
    host: str,
    port: int,
    *,
    network_id: bytes,
    local_static: bytes | X25519PrivateKey,
    remote_static: bytes,
    payload: dict[str, Any],
) -> SpecConnection:
    """Dial a validator port with Noise IK and complete the handshake."""
    initiator = SpecInitiator(
        IK,
        network_id=network_id,
        remote_static=remote_static,
        payload=payload,
        local_static=local_static,
    )
    return await _open(host, port, initiator)


async def open_nk(
    host: str, port: int, *, network_id: bytes, remote_static: bytes, payload: dict[str, Any]
) -> SpecConnection:
    """Dial a client port with Noise NK (anonymous initiator)."""
    initiator = SpecInitiator(
        NK, network_id=network_id, remote_static=remote_static, payload=payload
    )
    return await _open(host, port, initiator)
