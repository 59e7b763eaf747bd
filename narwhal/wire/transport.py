"""The Noise transport, sans-IO: the lifted AES-256-GCM ciphers of an open link.

After the handshake (``narwhal/wire/noise.py``) each direction is one AES-256-GCM key and a
64-bit nonce counter (``wire_spec.md`` section 4). :class:`NoiseTransport` holds both and
cuts, seals and opens the length-prefixed Noise messages itself: noiseprotocol's per-call
overhead is off the hot path. Every cryptography exception is mapped to
:class:`~narwhal.errors.DecryptError` here and nowhere else.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from narwhal.errors import DecryptError

__all__ = ["AEAD_TAG_SIZE", "MAX_NOISE_MESSAGE", "MAX_PLAINTEXT", "NOISE_LENGTH", "NoiseTransport"]

#: Noise limits every message to 65535 bytes; each carries a 16-byte AEAD tag.
MAX_NOISE_MESSAGE: Final = 65535
AEAD_TAG_SIZE: Final = 16
MAX_PLAINTEXT: Final = MAX_NOISE_MESSAGE - AEAD_TAG_SIZE
NOISE_LENGTH: Final = struct.Struct(">H")
#: Our nonce counter must never wrap: Noise reserves 2**64-1.
_MAX_NONCE: Final = 2**64 - 1


class NoiseTransport:
    """Lifted transport ciphers: AES-256-GCM with our own 64-bit nonce counters.

    ``encrypt`` cuts any plaintext into Noise messages of at most :data:`MAX_PLAINTEXT`
    bytes, each sent as a 2-byte big-endian length + ciphertext. ``decrypt`` reverses that
    on a byte stream of any split, decrypting straight out of the received bytes (only an
    incomplete trailing message is copied aside). A message that fails authentication
    (tampered, truncated, replayed, reordered) raises :class:`~narwhal.errors.DecryptError`,
    after which the transport is unusable.
    """

    __slots__ = ("_buf", "_dec", "_dec_n", "_enc", "_enc_n", "_failed")

    def __init__(self, enc_key: bytes, enc_nonce: int, dec_key: bytes, dec_nonce: int) -> None:
        self._enc = AESGCM(enc_key)
        self._enc_n = enc_nonce
        self._dec = AESGCM(dec_key)
        self._dec_n = dec_nonce
        self._buf = b""
        self._failed = False

    def encrypt(self, plaintext: bytes | bytearray | memoryview) -> list[bytes]:
        """Noise messages (length prefix and ciphertext as separate items) for ``plaintext``."""
        return self.encrypt_parts([plaintext])

    def encrypt_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> list[bytes]:
        """Like :meth:`encrypt` of the parts' concatenation, without building it: each
        Noise message is cut straight out of the parts, and only a message that spans
        several parts is joined (at most 64 KiB: no large temporary buffer per flush)."""
        out: list[bytes] = []
        pending: list[memoryview] = []
        pending_len = 0
        for part in parts:
            view = memoryview(part)
            pos, size = 0, len(view)
            while pos < size:
                take = min(MAX_PLAINTEXT - pending_len, size - pos)
                pending.append(view[pos : pos + take])
                pending_len += take
                pos += take
                if pending_len == MAX_PLAINTEXT:
                    self._seal(pending, out)
                    pending, pending_len = [], 0
        if pending:
            self._seal(pending, out)
        return out

    def _seal(self, pieces: list[memoryview], out: list[bytes]) -> None:
        n = self._enc_n
        if n >= _MAX_NONCE:
            raise DecryptError("send nonce exhausted; the connection must be re-established")
        plaintext = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        ciphertext = self._enc.encrypt(_nonce(n), plaintext, None)
        self._enc_n = n + 1
        out.append(NOISE_LENGTH.pack(len(ciphertext)))
        out.append(ciphertext)

    def decrypt(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """The plaintexts of every Noise message completed by ``data``, in order."""
        if self._failed:
            raise DecryptError("transport already failed")
        out: list[bytes] = []
        try:
            if self._buf:
                # finish the message left incomplete last time, copying only its bytes
                data = self._complete_pending(data, out)
                if not data:
                    return out
            self._buf = self._decrypt_messages(data, out)
        except DecryptError:
            self._failed = True
            self._buf = b""
            raise
        return out

    def _complete_pending(self, data: bytes | bytearray | memoryview, out: list[bytes]) -> memoryview:
        buf = self._buf
        if len(buf) < 2:
            take = 2 - len(buf)
            buf, data = buf + bytes(data[:take]), memoryview(data)[take:]
            if len(buf) < 2:
                self._buf = buf
                return memoryview(b"")
        need = 2 + ((buf[0] << 8) | buf[1]) - len(buf)
        if len(data) < need:
            self._buf = buf + bytes(data)
            return memoryview(b"")
        self._buf = b""
        rest = self._decrypt_messages(buf + bytes(memoryview(data)[:need]), out)
        assert not rest
        return memoryview(data)[need:]

    def _decrypt_messages(self, source: bytes | bytearray | memoryview, out: list[bytes]) -> bytes:
        """Decrypt the complete messages at the start of ``source``; return the rest."""
        pos, size = 0, len(source)
        dec = self._dec.decrypt
        n = self._dec_n
        with memoryview(source) as view:
            try:
                while size - pos >= 2:
                    length = (view[pos] << 8) | view[pos + 1]
                    end = pos + 2 + length
                    if size < end:
                        break
                    if length < AEAD_TAG_SIZE:
                        raise DecryptError(f"Noise message of {length} bytes is shorter than its tag")
                    try:
                        out.append(dec(_nonce(n), view[pos + 2 : end], None))
                    except InvalidTag as exc:
                        raise DecryptError("Noise message failed authentication") from exc
                    n += 1
                    pos = end
            finally:
                self._dec_n = n
            # at most one incomplete message (< 64 KiB) is kept for the next call
            return bytes(view[pos:]) if pos < size else b""

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer stream bytes for :meth:`decrypt_available` (the two-step form of ``decrypt``;
        use one form or the other on a transport, not both)."""
        if self._failed:
            raise DecryptError("transport already failed")
        self._buf = self._buf + bytes(data)

    def decrypt_available(self) -> list[bytes]:
        """Decrypt every complete Noise message buffered so far, in order."""
        buffered, self._buf = self._buf, b""
        return self.decrypt(buffered)

    @property
    def buffered(self) -> int:
        return len(self._buf)


def _nonce(n: int) -> bytes:
    """The AES-GCM nonce of Noise: 4 zero bytes, then the counter as 8 big-endian bytes."""
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "big")
