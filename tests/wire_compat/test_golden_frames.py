"""Golden application frames (spec section 5), checked both ways by both implementations.

``vectors/frames.json`` holds ``frames`` (kind, request_id, tag, body -> exact hex) and
``invalid`` (hex -> the error a receiver with the default 8 MiB maximum must raise; the
length-only entries must fail on their four length bytes alone).

Regenerate: ``python -m tests.wire_compat.test_golden_frames --print > tests/wire_compat/vectors/frames.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest

from narwhal.errors import FrameError, FrameTooLarge
from narwhal.wire.frames import Frame, FrameDecoder, FrameKind, encode_error_body, encode_frame
from tests.wire.harness import decode_all
from tests.wire_compat import spec_peer

PATH = Path(__file__).parent / "vectors" / "frames.json"
ERRORS = {"FrameError": FrameError, "FrameTooLarge": FrameTooLarge}


def generate() -> dict[str, Any]:
    K = FrameKind
    frames = [
        (K.REQUEST, 1, 0x0101, cbor2.dumps([b"\x00" * 4, 1])),
        (K.REQUEST, 0xFFFFFFFF, 0xFFFF, b""),
        (K.RESPONSE, 0x01020304, 0x0102, b"\xf6"),
        (K.ONEWAY, 0, 0x0200, bytes(range(32))),
        (K.ERROR, 9, 0, encode_error_body(2, "unknown type 0x7777")),
        (K.ERROR, 0, 0, encode_error_body(1, "frame length 3 is shorter than the frame header")),
        (K.PING, 0, 0, b""),
        (K.PING, 0xCAFEBABE, 0, b""),
        (K.PONG, 0xCAFEBABE, 0, b""),
        (K.GOAWAY, 0, 0, encode_error_body(13, "duplicate connection")),
        (K.ONEWAY, 0, 0x0300, b"\xab" * 300),
    ]
    invalid = [
        ("00000000", "FrameError", "length 0 < 7"),
        ("00000006", "FrameError", "length 6 < 7"),
        ("0000000707000000000000", "FrameError", "kind 7"),
        ("00000007ff0000000100000000", "FrameError", "kind 255 (followed by another frame)"),
        ("00800001", "FrameTooLarge", "length 8 MiB + 1, detected on the length bytes"),
        ("ffffffff", "FrameTooLarge", "length 2^32-1, detected on the length bytes"),
    ]
    return {
        "description": "narwhal-py wire v1 application frames (spec section 5); hex strings",
        "frames": [
            {
                "kind": int(kind),
                "kind_name": kind.name,
                "request_id": rid,
                "tag": tag,
                "body": body.hex(),
                "hex": encode_frame(kind, rid, tag, body).hex(),
            }
            for kind, rid, tag, body in frames
        ],
        "invalid": [{"hex": h, "error": e, "why": why} for h, e, why in invalid],
    }


#: A missing file fails test_generator_matches_the_file (and lets --print run without it).
VECTORS = json.loads(PATH.read_text()) if PATH.exists() else {"frames": [], "invalid": []}


def as_frame(v: dict[str, Any]) -> Frame:
    return Frame(FrameKind(v["kind"]), v["request_id"], v["tag"], bytes.fromhex(v["body"]))


@pytest.mark.parametrize("v", VECTORS["frames"], ids=lambda v: v["kind_name"])
def test_encode_and_decode(v: dict[str, Any]) -> None:
    frame = as_frame(v)
    assert FrameKind(v["kind"]).name == v["kind_name"]
    assert encode_frame(frame.kind, frame.request_id, frame.tag, frame.body).hex() == v["hex"]
    assert decode_all(FrameDecoder(), [bytes.fromhex(v["hex"])]) == [frame]


@pytest.mark.parametrize("v", VECTORS["frames"], ids=lambda v: v["kind_name"])
def test_spec_peer_encode_and_decode(v: dict[str, Any]) -> None:
    raw = bytes.fromhex(v["hex"])
    body = bytes.fromhex(v["body"])
    assert spec_peer.encode_frame(v["kind"], v["request_id"], v["tag"], body) == raw
    assert spec_peer.FrameReader().feed(raw) == [(v["kind"], v["request_id"], v["tag"], body)]


def test_whole_stream_decodes_in_order() -> None:
    stream = bytes.fromhex("".join(v["hex"] for v in VECTORS["frames"]))
    expected = [as_frame(v) for v in VECTORS["frames"]]
    assert decode_all(FrameDecoder(), [stream]) == expected
    assert spec_peer.FrameReader().feed(stream) == [
        (f.kind, f.request_id, f.tag, f.body) for f in expected
    ]


@pytest.mark.parametrize("v", VECTORS["invalid"], ids=lambda v: v["why"])
def test_invalid(v: dict[str, Any]) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(bytes.fromhex(v["hex"]))
    with pytest.raises(ERRORS[v["error"]]) as info:
        decoder.next_frame()
    assert type(info.value) is ERRORS[v["error"]]
    with pytest.raises(spec_peer.SpecError):
        spec_peer.FrameReader().feed(bytes.fromhex(v["hex"]))


def test_generator_matches_the_file() -> None:
    assert generate() == VECTORS


if __name__ == "__main__":
    if sys.argv[1:] != ["--print"]:
        sys.exit("usage: python -m tests.wire_compat.test_golden_frames --print")
    print(json.dumps(generate(), indent=2))
