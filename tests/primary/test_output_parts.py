"""Output parts spliced from stored batch bodies are byte for byte what ``encode`` makes."""

from __future__ import annotations

import random

import pytest

from narwhal.errors import MessageError
from narwhal.messages import (
    Batch,
    BatchesResponse,
    OrderedOutput,
    batch_body_digest,
    decode,
    encode,
    tag_of,
)
from narwhal.primary.output_parts import EMPTY_BATCH_BODY, batch_body_of_response, output_part

AUTHOR, CERTIFICATE = bytes(range(32)), bytes(range(32, 64))


@pytest.mark.parametrize("count", [0, 1, 23, 24, 255, 256, 1000, 65536])
def test_a_spliced_part_is_the_canonical_encoding(count):
    rng = random.Random(count)
    txs = tuple(rng.randbytes(rng.choice((0, 1, 23, 24, 300, 70_000 if count < 30 else 8)))
                for _ in range(count))
    batch = Batch(txs)
    response = encode(BatchesResponse((batch,), ()))
    body = batch_body_of_response(response)
    assert body is not None and bytes(body) == encode(batch)
    assert batch_body_digest(body) == batch.digest()
    for index, part, parts in ((1, 0, 1), (24, 3, 9), (2**40, 9_999, 10_000)):
        spliced = output_part(index, 7, AUTHOR, CERTIFICATE, part, parts, body)
        expected = OrderedOutput(index, 7, AUTHOR, CERTIFICATE, part, parts, txs)
        assert spliced.tag == tag_of(OrderedOutput)
        assert spliced.body == encode(expected)
        assert decode(spliced.tag, spliced.body) == expected


def test_an_empty_certificate_is_one_part_without_transactions():
    part = output_part(5, 2, AUTHOR, CERTIFICATE, 0, 1, EMPTY_BATCH_BODY)
    assert part.body == encode(OrderedOutput(5, 2, AUTHOR, CERTIFICATE, 0, 1, ()))


def test_a_response_without_exactly_one_batch_holds_no_body():
    digest = bytes(32)
    two = Batch((b"a",)), Batch((b"b",))
    assert batch_body_of_response(encode(BatchesResponse((), (digest,)))) is None
    assert batch_body_of_response(encode(BatchesResponse(two, ()))) is None
    assert batch_body_of_response(encode(BatchesResponse((two[0],), (digest,)))) is None
    assert batch_body_of_response(b"") is None


def test_the_other_fields_are_checked_as_encode_checks_them():
    with pytest.raises(MessageError):
        output_part(1, 1, b"short", CERTIFICATE, 0, 1, EMPTY_BATCH_BODY)
    with pytest.raises(MessageError):
        output_part(1, 1, AUTHOR, CERTIFICATE, 0, 0, EMPTY_BATCH_BODY)  # batches >= 1
    with pytest.raises(MessageError):
        output_part(1, 1, AUTHOR, CERTIFICATE, 0, 1, b"\x80")  # not a batch body
