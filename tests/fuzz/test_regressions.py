"""Regression tests for what the fuzzing work found (README.md: every finding becomes a
test here).

Each test holds the finding's input as a literal. A bug in ``narwhal/`` that is not fixed yet
is marked ``xfail(strict=True)``: the test passes while the bug is there, and the fix must
remove the mark. Fixed: the handshake payload decoder now refuses every CBOR tag (string
references, bignums), as the message codec does.
"""

from __future__ import annotations

import cbor2
import pytest

from narwhal.errors import HandshakeError
from narwhal.wire.noise import MAX_HANDSHAKE_PAYLOAD, HandshakePayload
from tests.fuzz import targets as t

#: A client payload whose 30 features are one 100-character text, sent once and then
#: referenced (CBOR string references, tags 256 and 25): 236 bytes on the wire.
STRINGREF_PAYLOAD = cbor2.dumps(
    {"role": "client", "max_frame_size": 65536, "features": ["x" * 100] * 30},
    string_referencing=True)


def test_stringref_payload_is_within_the_cap_on_the_wire() -> None:
    assert len(STRINGREF_PAYLOAD) == 236 <= MAX_HANDSHAKE_PAYLOAD
    assert STRINGREF_PAYLOAD.startswith(bytes.fromhex("d90100"))  # tag 256: stringref namespace


def test_payload_decoder_refuses_string_references() -> None:
    """Found while writing ``check_payload`` (review of the decoder, then confirmed by the
    check), not by a fuzzer run: no random mutation builds a string-reference namespace."""
    t.fuzz_payload(STRINGREF_PAYLOAD)  # check_payload: refused, or re-encoding fits the cap
    with pytest.raises(HandshakeError):
        HandshakePayload.decode(STRINGREF_PAYLOAD)


#: ``max_frame_size`` as a bignum (tag 2 over the bytes 01 00 00), i.e. 65536.
BIGNUM_PAYLOAD = cbor2.dumps(
    {"role": "client", "max_frame_size": cbor2.CBORTag(2, b"\x01\x00\x00"), "features": []})


def test_payload_decoder_refuses_a_bignum_uint() -> None:
    with pytest.raises(HandshakeError):
        HandshakePayload.decode(BIGNUM_PAYLOAD)
