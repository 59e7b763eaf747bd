"""Keys, signatures, digests and key files.

- **Authority keys** sign headers and votes: ed25519 through PyNaCl (libsodium), about 2x
  faster to verify than ``cryptography``. A :class:`SigningKeyPair` is built from a 32-byte
  seed; its public key (32 bytes) is the authority's name in the committee.
- **Network keys** are the static X25519 keys of the Noise handshakes, one per endpoint
  (the primary and each worker): :class:`NetworkKeyPair`, through ``cryptography``.
- :func:`sha256` is the digest of the node: hardware SHA-256 runs ~2.3x faster here than
  BLAKE2b (1.24 vs 0.55 GB/s on 1 MiB inputs).
- **Key files**: one JSON file per authority holding its signing seed and the network key
  pairs of its primary and of every worker, hex-encoded, written atomically with mode 0600::

      {"authority": {"seed": "<64 hex>", "public": "<64 hex>"},
       "primary": {"private": "<64 hex>", "public": "<64 hex>"},
       "workers": {"0": {"private": "<64 hex>", "public": "<64 hex>"}}}

Guarantees: :func:`verify` and :func:`verify_many` never raise, whatever they are given
(wrong types or lengths, garbage, small-order keys): anything that is not a valid signature
is just ``False``. Key files are checked on load (every field present, 32 bytes each, every
stored public key derived from its private key) and every problem is a
:class:`~narwhal.config.ConfigError` naming the file and the field. Private keys never
appear in a ``repr``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import nacl.bindings
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from narwhal.config import (
    AuthorityPublicKeys,
    ConfigError,
    JsonReader,
    as_tuple,
    load_json,
    save_json,
)

__all__ = [
    "PUBLIC_KEY_SIZE", "SEED_SIZE", "SIGNATURE_SIZE", "AuthorityKeys", "NetworkKeyPair",
    "SigningKeyPair", "sha256", "verify", "verify_many",
]

log = logging.getLogger(__name__)

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
#: X25519 private and public keys.
NETWORK_KEY_SIZE = 32
#: Key files are secrets: written owner-only, and a warning is logged when loading one
#: that group or others may read.
KEY_FILE_MODE = 0o600


def sha256(data: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


def _exactly(size: int, what: str) -> Any:
    def validator(instance: object, attribute: attrs.Attribute[bytes], value: object) -> None:
        if not (isinstance(value, bytes) and len(value) == size):
            raise ValueError(f"{what} must be {size} bytes")
    return validator


# --- authority (signing) keys -------------------------------------------------------------


@attrs.frozen(repr=False)
class SigningKeyPair:
    """An ed25519 key pair built from its 32-byte seed."""

    seed: bytes = attrs.field(validator=_exactly(SEED_SIZE, "an ed25519 seed"))
    public_key: bytes = attrs.field(init=False, eq=False)
    _key: nacl.signing.SigningKey = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        key = nacl.signing.SigningKey(self.seed)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "public_key", bytes(key.verify_key))

    @classmethod
    def generate(cls) -> SigningKeyPair:
        return cls(os.urandom(SEED_SIZE))

    def sign(self, digest: bytes) -> bytes:
        """The 64-byte ed25519 signature of ``digest`` (deterministic, ~40 µs)."""
        return self._key.sign(digest).signature

    def __repr__(self) -> str:
        return f"SigningKeyPair(public_key={self.public_key.hex()})"


def verify(public_key: bytes, digest: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid ed25519 signature of ``digest`` by ``public_key``.

    Never raises: non-bytes arguments, a key other than 32 bytes or a signature other
    than 64 bytes are ``False`` (the lengths are checked here because libsodium reads
    fixed-size buffers). libsodium also refuses non-canonical signatures and small-order
    keys. Costs ~100 µs on these loaded 2-core machines (PyNaCl 1.6), so ~10k per second
    per core: verify once per object, never per message copy.
    """
    if not (type(public_key) is bytes and len(public_key) == PUBLIC_KEY_SIZE
            and type(signature) is bytes and len(signature) == SIGNATURE_SIZE
            and type(digest) is bytes):
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + digest, public_key)
    except nacl.exceptions.CryptoError:  # BadSignatureError and any other libsodium refusal
        return False
    return True


def verify_many(items: Iterable[tuple[bytes, bytes, bytes]]) -> bool:
    """True iff every ``(public_key, digest, signature)`` verifies (True when empty).

    A plain loop that stops at the first failure: PyNaCl exposes no batch verification
    (libsodium has none), so n signatures cost n x :func:`verify` (~100 µs each here, e.g.
    ~0.3 ms for the 3 votes of a 4-node certificate). Never raises, as :func:`verify`;
    malformed items (not 3-tuples) are ``False``.
    """
    try:
        return all(verify(pk, digest, sig) for pk, digest, sig in items)
    except (TypeError, ValueError):  # not iterable, or an item that is not a 3-tuple
        return False


# --- network (Noise static) keys ----------------------------------------------------------


@attrs.frozen(repr=False)
class NetworkKeyPair:
    """An X25519 key pair: the static key of one endpoint's Noise handshakes."""

    private: bytes = attrs.field(validator=_exactly(NETWORK_KEY_SIZE, "an X25519 private key"))
    public: bytes = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        key = X25519PrivateKey.from_private_bytes(self.private)
        public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
        object.__setattr__(self, "public", public)

    @classmethod
    def generate(cls) -> NetworkKeyPair:
        return cls(os.urandom(NETWORK_KEY_SIZE))

    @classmethod
    def from_private_bytes(cls, private: bytes) -> NetworkKeyPair:
        return cls(private)

    def __repr__(self) -> str:
        return f"NetworkKeyPair(public={self.public.hex()})"


# --- key files ------------------------------------------------------------------------------


@attrs.frozen(repr=False)
class AuthorityKeys:
    """All secret keys of one authority: signing seed, primary and worker network keys."""

    signing: SigningKeyPair
    primary: NetworkKeyPair
    #: Indexed by worker id (0 .. W-1).
    workers: tuple[NetworkKeyPair, ...] = attrs.field(converter=as_tuple)

    @property
    def name(self) -> bytes:
        """The authority's name: its ed25519 public key."""
        return self.signing.public_key

    @classmethod
    def generate(cls, workers: int) -> AuthorityKeys:
        """Fresh random keys for an authority with ``workers`` (>= 1) workers."""
        if type(workers) is not int or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        return cls(SigningKeyPair.generate(), NetworkKeyPair.generate(),
                   [NetworkKeyPair.generate() for _ in range(workers)])

    def public(self) -> AuthorityPublicKeys:
        return AuthorityPublicKeys(self.name, self.primary.public, [w.public for w in self.workers])

    def __repr__(self) -> str:
        return f"AuthorityKeys(name={self.name.hex()}, workers={len(self.workers)})"

    def to_json(self) -> dict[str, Any]:
        """The key file's content (secrets included)."""
        def pair(key: NetworkKeyPair) -> dict[str, str]:
            return {"private": key.private.hex(), "public": key.public.hex()}
        return {"authority": {"seed": self.signing.seed.hex(), "public": self.name.hex()},
                "primary": pair(self.primary),
                "workers": {str(i): pair(w) for i, w in enumerate(self.workers)}}

    @classmethod
    def from_json(cls, value: Any) -> AuthorityKeys:
        top = JsonReader(value, required=["authority", "primary", "workers"])
        signing = _checked(top.child("authority", required=["seed", "public"]), "seed",
                           SigningKeyPair, "public_key")
        primary = _network_pair(top.child("primary", required=["private", "public"]))
        workers = [_network_pair(JsonReader(entry, path, required=["private", "public"]))
                   for path, entry in top.numbered("workers")]
        return cls(signing, primary, workers)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file atomically, readable by its owner only (mode 0600)."""
        save_json(path, self.to_json(), mode=KEY_FILE_MODE)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AuthorityKeys:
        """Read and check a key file: ``ConfigError("<path>: <field>: ...")`` if it is bad."""
        keys = load_json(path, cls.from_json)
        mode = stat.S_IMODE(Path(path).stat().st_mode)
        if mode & 0o077:
            log.warning("key file %s is readable by others (mode %o): chmod 600 it", path, mode)
        return keys


def _checked(reader: JsonReader, secret: str, make: Any, derived: str) -> Any:
    """Build a key pair from ``reader[secret]`` and check ``reader["public"]`` against it."""
    pair = make(reader.hex(secret))
    if reader.hex("public") != getattr(pair, derived):
        raise ConfigError(f"{reader.path('public')}: does not match {reader.path(secret)}")
    return pair


def _network_pair(reader: JsonReader) -> NetworkKeyPair:
    pair: NetworkKeyPair = _checked(reader, "private", NetworkKeyPair, "public")
    return pair
