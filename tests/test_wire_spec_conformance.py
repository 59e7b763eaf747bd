"""wire_spec.md against a real node, for the points a peer written from the spec alone had
to guess (issue 12, item 9). The node side is a real Worker (and a real Primary for its
output port) on 127.0.0.1; the client side is, where the bytes matter, the independent
spec peer (``tests/wire_compat/spec_peer.py``); the committee hash is recomputed from the
spec's rules without ``narwhal/config/committee.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import re
from pathlib import Path

import cbor2
import pytest

from narwhal import messages
from narwhal.config import Committee
from narwhal.errors import ErrorCode, RemoteError
from narwhal.net.rate_limit import RouteLimit
from narwhal.primary.primary import Primary
from narwhal.store import Store
from narwhal.wire.frames import decode_error, decode_error_body, encode_error_body
from tests.wire_compat import spec_peer

from .net.cluster import eventually
from .worker.harness import Cluster, fast_parameters, submit

SPEC = (Path(__file__).resolve().parents[1] / "wire_spec.md").read_text()
CLIENT_PAYLOAD = {"role": "client", "max_frame_size": 8 * 1024 * 1024, "features": []}
SUBMIT, CLEANUP = messages.tag_of(messages.SubmitTransactions), messages.tag_of(messages.Cleanup)


def body(message) -> tuple[int, bytes]:
    return messages.tag_of(message), messages.encode(message)


async def open_client_port(cluster: Cluster, i: int, port: str) -> spec_peer.SpecConnection:
    """The spec peer dials authority ``i``'s worker transactions port or primary output port."""
    host, number = cluster.sockets[i][port].getsockname()[:2]
    keys = cluster.keys[i]
    server = keys.workers[0].public if port == "txs" else keys.primary.public
    return await spec_peer.open_nk(host, number, network_id=cluster.committee.network_id(),
                                   remote_static=server, payload=CLIENT_PAYLOAD)


async def answers(conn: spec_peer.SpecConnection, ids: set[int]) -> dict[int, spec_peer.Frame]:
    """The RESPONSE/ERROR frames answering ``ids`` (the node's keepalive PINGs skipped)."""
    got: dict[int, spec_peer.Frame] = {}
    while set(got) != ids:
        frame = await asyncio.wait_for(conn.read_frame(), 10)
        if frame.kind in (spec_peer.RESPONSE, spec_peer.ERROR):
            got[frame.request_id] = frame
    return got


def assert_canonical_error_body(raw: bytes) -> tuple[int, str]:
    """Section 8.1: a 2-array of a uint and a text string, core deterministic encoding."""
    value = cbor2.loads(raw)
    assert isinstance(value, list) and len(value) == 2
    assert type(value[0]) is int and isinstance(value[1], str)
    assert cbor2.dumps(value, canonical=True) == raw
    assert len(value[1].encode()) <= 1024
    return value[0], value[1]


def error_codes(frames: dict[int, spec_peer.Frame]) -> dict[int, int | str]:
    return {i: assert_canonical_error_body(f.body)[0] if f.kind == spec_peer.ERROR else "response"
            for i, f in frames.items()}


@pytest.fixture
async def cluster(tmp_path):
    net = Cluster(tmp_path, 4, fast_parameters(
        rate_limits={"SubmitTransactions": RouteLimit(1, 3)}))
    yield net
    await net.close()


@pytest.fixture
async def primary(cluster):
    """Authority 0's real Primary (its peers stay down: only its ports matter here)."""
    store = Store.open(cluster.tmp_path / "primary0.db", synchronous="NORMAL")
    node = Primary(cluster.keys[0], cluster.committee, cluster.parameters, store)
    await node.start(primary_sock=cluster.sockets[0]["primary"],
                     client_sock=cluster.sockets[0]["client"])
    yield node
    await node.stop()
    await store.close()


# --- section 6 / 9.5: UNAUTHORIZED for a registered type on the wrong link ----------------


async def test_registered_types_on_the_wrong_link_are_unauthorized(cluster, primary):
    worker = await cluster.start_worker(0)
    conn = await open_client_port(cluster, 0, "txs")
    await conn.send_frame(spec_peer.REQUEST, 1, *body(messages.Subscribe(0)))
    await conn.send_frame(spec_peer.REQUEST, 2, *body(messages.Cleanup(1)))
    await conn.send_frame(spec_peer.REQUEST, 3, 0x7777, b"\x80")
    await conn.send_frame(spec_peer.REQUEST, 4, CLEANUP, b"\xff\xff")  # refused before decoding
    await conn.send_frame(spec_peer.REQUEST, 5, *body(messages.SubmitTransactions((b"tx",))))
    assert error_codes(await answers(conn, {1, 2, 3, 4, 5})) == {
        1: ErrorCode.UNAUTHORIZED, 2: ErrorCode.UNAUTHORIZED, 3: ErrorCode.UNKNOWN_TYPE,
        4: ErrorCode.UNAUTHORIZED, 5: "response"}
    await conn.close()

    output = await open_client_port(cluster, 0, "client")
    await output.send_frame(spec_peer.REQUEST, 1, *body(messages.SubmitTransactions((b"tx",))))
    await output.send_frame(spec_peer.REQUEST, 2, *body(messages.Cleanup(1)))
    await output.send_frame(spec_peer.REQUEST, 3, 0x7777, b"\x80")
    assert error_codes(await answers(output, {1, 2, 3})) == {
        1: ErrorCode.UNAUTHORIZED, 2: ErrorCode.UNAUTHORIZED, 3: ErrorCode.UNKNOWN_TYPE}
    await output.close()

    # a validator of another authority sending what only our own primary may send
    other = await cluster.start_fake_worker(1, None)
    for message in (messages.Cleanup(1), messages.Synchronize((), cluster.name(1))):
        with pytest.raises(RemoteError) as info:
            await other.request(0, message)
        assert info.value.code is ErrorCode.UNAUTHORIZED
    assert worker.status()["txs_received"] == 1


async def test_a_request_over_the_rate_limit_is_refused_before_it_is_decoded(cluster):
    await cluster.start_worker(0)
    conn = await open_client_port(cluster, 0, "txs")
    for request_id in (1, 2, 3, 4):  # burst 3, 1/s: the 4th is over the limit
        await conn.send_frame(spec_peer.REQUEST, request_id, SUBMIT, b"\xff")
    assert error_codes(await answers(conn, {1, 2, 3, 4})) == {
        1: ErrorCode.MALFORMED, 2: ErrorCode.MALFORMED, 3: ErrorCode.MALFORMED,
        4: ErrorCode.RATE_LIMITED}
    await conn.close()


# --- section 6: a REQUEST with id 0 -------------------------------------------------------


async def test_a_request_with_id_zero_gets_goaway_protocol_error_and_the_link_closes(cluster):
    worker = await cluster.start_worker(0)
    conn = await open_client_port(cluster, 0, "txs")
    await conn.send_frame(spec_peer.REQUEST, 1, *body(messages.SubmitTransactions((b"a",))))
    await conn.send_frame(spec_peer.REQUEST, 0, *body(messages.SubmitTransactions((b"b",))))
    frames = []
    with pytest.raises((EOFError, ConnectionError)):
        while True:
            frames.append(await asyncio.wait_for(conn.read_frame(), 10))
    goaways = [assert_canonical_error_body(f.body) for f in frames if f.kind == spec_peer.GOAWAY]
    assert [code for code, _ in goaways] == [ErrorCode.PROTOCOL_ERROR]
    # the request already outstanding was answered; the id-0 one was not served
    assert [(f.kind, f.request_id) for f in frames if f.kind in (spec_peer.RESPONSE, spec_peer.ERROR)
            ] == [(spec_peer.RESPONSE, 1)]
    assert worker.status()["txs_received"] == 1
    await conn.close()


# --- section 9.2 / 9.3: max_transaction_size and TransactionsAccepted.count -------------


async def test_submissions_are_accepted_or_refused_whole_and_count_what_was_accepted(cluster):
    worker = await cluster.start_worker(0)
    conn = await cluster.client(0)
    limit = cluster.parameters.max_transaction_size
    assert (await submit(conn, [b"a" * limit, b"b"])).count == 2
    for transactions, code in (([b"c", b"d" * (limit + 1)], ErrorCode.TOO_LARGE),
                               ([b"e", b""], ErrorCode.INVALID)):
        await asyncio.sleep(1.1)  # this fixture's rate limit: 1 request a second
        with pytest.raises(RemoteError) as info:
            await submit(conn, transactions)
        assert info.value.code is code
        if code is ErrorCode.TOO_LARGE:  # the refusal names the limit (9.2)
            assert str(limit) in info.value.text
    await asyncio.sleep(1.1)
    assert (await submit(conn, [])).count == 0
    assert worker.status()["txs_received"] == 2  # nothing of the refused requests


# --- sections 3.4 / 3.5: the node's payload on client ports, NK confirmation -------------


async def test_a_node_names_itself_to_clients_and_waits_for_their_confirmation(cluster, primary):
    worker = await cluster.start_worker(0)
    keys = cluster.keys[0]
    conn = await open_client_port(cluster, 0, "txs")
    assert conn.remote_payload["role"] == "worker"
    assert conn.remote_payload["authority"] == keys.name
    assert conn.remote_payload["worker_id"] == 0
    assert conn.remote_payload["max_frame_size"] == cluster.parameters.max_frame_size
    # the handshake is complete but we sent no transport message: not established yet
    await asyncio.sleep(0.3)
    assert worker.clients.accepted == 0
    await conn.send_frame(spec_peer.PING, 9, 0)
    while (frame := await asyncio.wait_for(conn.read_frame(), 5)).kind != spec_peer.PONG:
        pass
    assert frame.request_id == 9 and worker.clients.accepted == 1
    await conn.close()

    output = await open_client_port(cluster, 0, "client")
    assert output.remote_payload["role"] == "primary"
    assert output.remote_payload["authority"] == keys.name
    assert "worker_id" not in output.remote_payload
    # never confirmed: closed at the handshake timeout (after an ERROR TIMEOUT, request id 0),
    # never counted
    frames = []
    with pytest.raises((EOFError, ConnectionError)):
        while True:
            frames.append(await asyncio.wait_for(
                output.read_frame(), cluster.parameters.handshake_timeout + 5))
    assert [(f.kind, f.request_id) for f in frames] == [(spec_peer.ERROR, 0)]
    assert assert_canonical_error_body(frames[0].body)[0] == ErrorCode.TIMEOUT
    await eventually(lambda: not primary.output.server.connections)
    assert primary.output.server.accepted == 0


# --- section 8.1: ERROR and GOAWAY bodies ------------------------------------------------


def test_error_bodies_are_canonical_and_read_leniently():
    assert encode_error_body(ErrorCode.OVERLOADED, "busy") == bytes.fromhex("820764") + b"busy"
    assert "`82 07 64 62757379`" in SPEC
    long = encode_error_body(ErrorCode.INVALID, "é" * 600)  # 1200 bytes of UTF-8
    assert assert_canonical_error_body(long) == (ErrorCode.INVALID, "é" * 512)
    # well-formed but not canonical: accepted; not [uint, text]: PROTOCOL_ERROR
    assert decode_error_body(bytes.fromhex("82180764") + b"busy") == (7, "busy")
    # the optional detail (PRUNED: the earliest index kept)
    pruned = encode_error_body(ErrorCode.PRUNED, "gone", 21)
    assert pruned == bytes.fromhex("8311646" "76f6e6515") and "`83 11 64 676f6e65 15`" in SPEC
    assert decode_error(pruned) == (ErrorCode.PRUNED, "gone", 21)
    assert decode_error(bytes.fromhex("820764") + b"busy") == (7, "busy", None)
    for bad in ("8307646275737920", "83076462757379c249010000000000000000"):  # detail not a u64
        assert decode_error(bytes.fromhex(bad))[0] == ErrorCode.PROTOCOL_ERROR, bad
    for bad in ("8107", "820741aa", "ff", "83070000", "822064627573"):
        assert decode_error_body(bytes.fromhex(bad))[0] == ErrorCode.PROTOCOL_ERROR, bad


# --- section 9.3: the CDDL agrees with the schema (and so with the golden vectors) --------


def cddl_rules() -> dict[str, str]:
    block = SPEC.split("```cddl", 1)[1].split("```", 1)[0]
    rules, name = {}, None
    for line in block.splitlines():
        if match := re.match(r"([a-z-]+) = (.*)", line):
            name, rules[match[1]] = match[1], match[2]
        elif name and line.startswith(" "):
            rules[name] += " " + line.strip()
    return rules


def top_level_fields(rule: str) -> int:
    inner = rule.strip()[1:-1].strip()
    depth, fields = 0, 1 if inner else 0
    for char in inner:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "," and depth == 0:
            fields += 1
    return fields


def test_the_cddl_of_every_message_has_the_schema_fields():
    rules = cddl_rules()
    for cls in messages.REGISTRY.values():
        rule = re.sub(r"(?<!^)([A-Z])", r"-\1", cls.__name__).lower()
        assert rule in rules, rule
        assert top_level_fields(rules[rule]) == len(messages.schema_of(cls)), rule


# --- section 3.2.1: the committee file and the network id --------------------------------


def ipv6_canonical(text: str) -> str:
    """RFC 5952 with hexadecimal groups only, as section 3.2.1 says (not via committee.py)."""
    groups = [format(int(g, 16), "x") for g in ipaddress.IPv6Address(text).exploded.split(":")]
    best, start = (0, 0), None
    for i, group in enumerate([*groups, "end"]):
        if group == "0" and start is None:
            start = i
        elif group != "0" and start is not None:
            best, start = max(best, (i - start, -start)), None
    length, first = best[0], -best[1]
    if length < 2:
        return ":".join(groups)
    return ":".join(groups[:first]) + "::" + ":".join(groups[first + length:])


def canonical_address(text: str) -> str:
    host, port = text.rsplit(":", 1)
    if host.startswith("["):
        return f"[{ipv6_canonical(host[1:-1])}]:{int(port)}"
    if re.fullmatch(r"[0-9.]+", host):
        return f"{'.'.join(str(int(p)) for p in host.split('.'))}:{int(port)}"
    return f"{host.lower().removesuffix('.')}:{int(port)}"


def canonical_json(value) -> str:
    """Section 3.2.1 rule 4, written out: sorted members, no whitespace, plain integers."""
    if isinstance(value, dict):
        return "{" + ",".join(f'"{k}":{canonical_json(value[k])}' for k in sorted(value)) + "}"
    if isinstance(value, str):
        assert value.isascii() and '"' not in value and "\\" not in value
        return f'"{value}"'
    assert type(value) is int
    return str(value)


def canonical_committee(doc: dict) -> dict:
    """Rules 1-3: lower-case hex, canonical addresses, absent admin_address omitted."""
    def endpoint(fields: dict) -> dict:
        return {k: v.lower() if k == "network_key" else canonical_address(v)
                for k, v in fields.items() if v is not None}
    return {"authorities": {key.lower(): {
        "stake": auth["stake"], "primary": endpoint(auth["primary"]),
        "workers": {wid: endpoint(w) for wid, w in auth["workers"].items()}}
        for key, auth in doc["authorities"].items()}}


def spec_example() -> tuple[str, str]:
    section = SPEC.split("#### 3.2.1", 1)[1].split("### 3.3", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, re.DOTALL)
    return "".join(blocks[0].split()), blocks[1].strip()


def test_the_network_id_worked_example_follows_from_the_spec_rules():
    example = {"authorities": {"11" * 32: {"stake": 1, "primary": {
        "network_key": "22" * 32, "address": "127.0.0.1:4000", "client_address": "127.0.0.1:4001",
        "admin_address": "127.0.0.1:4002"}, "workers": {"0": {
            "network_key": "33" * 32, "worker_address": "127.0.0.1:4003",
            "transactions_address": "127.0.0.1:4004"}}}}}
    text, network_id = spec_example()
    assert canonical_json(canonical_committee(example)) == text and len(text) == 456
    assert hashlib.sha256(text.encode("ascii")).hexdigest() == network_id
    # the node computes the same from the file, whatever its layout
    spelled = json.loads(json.dumps(example, indent=3))
    assert Committee.from_json(spelled).network_id().hex() == network_id


def test_the_node_canonicalizes_addresses_as_the_spec_says():
    doc = {"authorities": {"AB" * 32: {"stake": 7, "primary": {
        "network_key": "Cd" * 32, "address": "[2001:DB8:0:0:1:0:0:1]:4000",
        "client_address": "Node-1.Example.COM.:4001"}, "workers": {"0": {
            "network_key": "ef" * 32, "worker_address": "[::FFFF:1.2.3.4]:4003",
            "transactions_address": "10.0.0.1:4004"}}}}}
    canonical = canonical_json(canonical_committee(doc))
    assert '"address":"[2001:db8::1:0:0:1]:4000"' in canonical
    assert '"worker_address":"[::ffff:102:304]:4003"' in canonical
    assert '"client_address":"node-1.example.com:4001"' in canonical
    expected = hashlib.sha256(canonical.encode("ascii")).digest()
    assert Committee.from_json(doc).network_id() == expected
