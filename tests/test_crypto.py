"""Signing and network keys, digests, and key files (narwhal/crypto.py)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from narwhal.config import ConfigError
from narwhal.crypto import (
    AuthorityKeys,
    NetworkKeyPair,
    SigningKeyPair,
    sha256,
    verify,
    verify_many,
)

# RFC 8032 section 7.1, TEST 1 (empty message) and RFC 7748 section 6.1 (Alice).
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
    "d25bf5f0595bbe24655141438e7a100b"
)
RFC7748_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC7748_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")

DIGEST = sha256(b"a header")


@pytest.fixture(scope="module")
def signer() -> SigningKeyPair:
    return SigningKeyPair.generate()


# --- digests and signatures ---------------------------------------------------------------


def test_sha256_known_answer():
    assert (
        sha256(b"abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert sha256(memoryview(b"abc")) == sha256(b"abc")


def test_signing_key_pair_matches_rfc8032():
    pair = SigningKeyPair(RFC8032_SEED)
    assert pair.public_key == RFC8032_PUBLIC
    assert pair.sign(b"") == RFC8032_SIGNATURE
    assert verify(RFC8032_PUBLIC, b"", RFC8032_SIGNATURE)


def test_sign_then_verify(signer: SigningKeyPair):
    signature = signer.sign(DIGEST)
    assert len(signature) == 64
    assert signer.sign(DIGEST) == signature  # ed25519 is deterministic
    assert verify(signer.public_key, DIGEST, signature)


def test_verify_rejects_wrong_key_digest_or_signature(signer: SigningKeyPair):
    signature = signer.sign(DIGEST)
    other = SigningKeyPair.generate()
    assert not verify(other.public_key, DIGEST, signature)
    assert not verify(signer.public_key, sha256(b"another header"), signature)
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify(signer.public_key, DIGEST, tampered)


def _garbage(signer: SigningKeyPair) -> list[tuple[Any, Any, Any]]:
    pk, sig = signer.public_key, signer.sign(DIGEST)
    return [
        (pk[:31], DIGEST, sig),  # short key (libsodium would read past it)
        (pk + b"\0", DIGEST, sig),  # long key
        (pk, DIGEST, sig[:63]),  # short signature
        (pk, DIGEST, sig + b"\0"),  # long signature
        (b"", b"", b""),
        (bytes(32), DIGEST, sig),  # small-order (identity) key
        (pk, DIGEST, b"\xff" * 64),  # non-canonical S
        (pk.hex(), DIGEST, sig),  # wrong types
        (pk, DIGEST.hex(), sig),
        (pk, DIGEST, bytearray(sig)),
        (None, None, None),
        (1, 2, 3),
    ]


def test_verify_never_raises_on_garbage(signer: SigningKeyPair):
    for public_key, digest, signature in _garbage(signer):
        assert verify(public_key, digest, signature) is False, (public_key, digest, signature)


def test_verify_many(signer: SigningKeyPair):
    other = SigningKeyPair.generate()
    good = [(k.public_key, DIGEST, k.sign(DIGEST)) for k in (signer, other)]
    assert verify_many(good)
    assert verify_many(iter(good))
    assert verify_many([])
    assert not verify_many([*good, (other.public_key, DIGEST, signer.sign(DIGEST))])
    for item in _garbage(signer):
        assert not verify_many([*good, item])


@pytest.mark.parametrize("items", [None, 5, [None], [(b"", b"")], [(b"", b"", b"", b"")], ["abc"]])
def test_verify_many_never_raises_on_malformed_items(items: Any):
    assert verify_many(items) is False


def test_bad_seed_length_is_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        SigningKeyPair(b"\0" * 31)


# --- network keys ---------------------------------------------------------------------------


def test_network_key_pair_matches_rfc7748():
    pair = NetworkKeyPair.from_private_bytes(RFC7748_PRIVATE)
    assert pair.public == RFC7748_PUBLIC
    assert pair == NetworkKeyPair(RFC7748_PRIVATE)


def test_network_keys_are_random_and_checked():
    a, b = NetworkKeyPair.generate(), NetworkKeyPair.generate()
    assert a.private != b.private and a.public != b.public
    assert len(a.private) == len(a.public) == 32
    with pytest.raises(ValueError, match="32 bytes"):
        NetworkKeyPair(b"\0" * 33)


def test_reprs_never_show_secrets():
    keys = AuthorityKeys.generate(2)
    secrets = [keys.signing.seed, keys.primary.private, *(w.private for w in keys.workers)]
    for shown in (repr(keys), repr(keys.signing), repr(keys.primary), repr(keys.workers)):
        assert not any(secret.hex() in shown for secret in secrets)


# --- key files ------------------------------------------------------------------------------


def test_key_file_round_trip(tmp_path: Path):
    keys = AuthorityKeys.generate(3)
    path = tmp_path / "validator-0.json"
    keys.save(path)
    loaded = AuthorityKeys.load(path)
    assert loaded == keys
    assert loaded.name == keys.signing.public_key
    assert loaded.public() == keys.public()
    assert keys.public().workers == tuple(w.public for w in keys.workers)
    assert len(keys.public().workers) == 3


def test_key_file_is_owner_only_even_when_overwriting(tmp_path: Path):
    path = tmp_path / "keys.json"
    path.write_text("{}")
    path.chmod(0o644)
    AuthorityKeys.generate(1).save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]  # no temp file left


def test_loading_a_readable_key_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "keys.json"
    AuthorityKeys.generate(1).save(path)
    with caplog.at_level(logging.WARNING, logger="narwhal.crypto"):
        AuthorityKeys.load(path)
        assert not caplog.records
        path.chmod(0o644)
        AuthorityKeys.load(path)
    assert "chmod 600" in caplog.text


def test_generate_needs_at_least_one_worker():
    with pytest.raises(ValueError, match="workers"):
        AuthorityKeys.generate(0)


def _corrupt(tmp_path: Path, change: Any) -> str:
    """Save a key file, let ``change`` edit its JSON, and return the load error message."""
    path = tmp_path / "keys.json"
    data = AuthorityKeys.generate(2).to_json()
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        AuthorityKeys.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message


def _set(*where: str, value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        for key in where[:-1]:
            data = data[key]
        data[where[-1]] = value

    return change


def _other_key() -> str:
    return os.urandom(32).hex()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set("authority", "seed", value="ab" * 31), "authority.seed: expected 32 bytes"),
        (_set("primary", "private", value="ab" * 33), "primary.private: expected 32 bytes"),
        (_set("workers", "1", "public", value="zz" * 32), "workers.1.public: not a hex string"),
        (_set("workers", "0", "private", value=7), "workers.0.private: expected a hex string"),
        (
            _set("authority", "public", value=_other_key()),
            "authority.public: does not match authority.seed",
        ),
        (
            _set("primary", "public", value=_other_key()),
            "primary.public: does not match primary.private",
        ),
        (_set("workers", "1", "public", value=_other_key()), "workers.1.public: does not match"),
        (lambda d: d["primary"].pop("public"), "primary.public: missing"),
        (lambda d: d.pop("workers"), "workers: missing"),
        (_set("primary", "comment", value="x"), "primary.comment: unknown field"),
        (lambda d: d["workers"].pop("0"), "workers: worker ids must be"),
        (_set("workers", value={}), "workers: worker ids must be"),
        (_set("workers", value=[]), "workers: expected an object"),
    ],
)
def test_corrupt_key_file_names_the_field(tmp_path: Path, change: Any, expected: str):
    assert expected in _corrupt(tmp_path, change)


def test_missing_key_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="nope.json: file not found"):
        AuthorityKeys.load(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{", "invalid JSON"),
        ("", "invalid JSON"),
        ("[]", "(top level): expected an object"),
        ('{"authority": {}, "authority": {}}', "authority: duplicate JSON key"),
        ('{"x": NaN}', "NaN is not a JSON number"),
        (b"\xff\xfe", "cannot read"),
    ],
)
def test_unreadable_key_file(tmp_path: Path, text: str | bytes, expected: str):
    path = tmp_path / "keys.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as info:
        AuthorityKeys.load(path)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)
