"""Parameters and committee (narwhal/config/): files, validation, thresholds, peers."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import pickle
from pathlib import Path
from typing import Any

import attrs
import pytest

from narwhal.config import (
    Committee,
    ConfigError,
    Endpoint,
    Parameters,
    canonical_json,
    parse_address,
    short_hex,
)
from narwhal.crypto import AuthorityKeys, sha256
from narwhal.messages import MAX_COMMITTEE_SIZE
from narwhal.net.network import PeerManager
from narwhal.net.rate_limit import RouteLimit
from narwhal.net.retry import RetryConfig
from narwhal.wire.noise import HandshakePayload


@pytest.fixture(scope="module")
def keys() -> list[AuthorityKeys]:
    return [AuthorityKeys.generate(2) for _ in range(4)]


@pytest.fixture(scope="module")
def committee(keys: list[AuthorityKeys]) -> Committee:
    return Committee.local([k.public() for k in keys], workers=2, base_port=20_000)


def with_stakes(committee: Committee, stakes: list[int]) -> Committee:
    names = committee.authorities_sorted()
    return Committee(
        {
            name: attrs.evolve(committee.authorities[name], stake=stake)
            for name, stake in zip(names, stakes, strict=True)
        }
    )


def load_error(tmp_path: Path, data: Any, cls: Any = Committee) -> str:
    """Write ``data`` as JSON, load it as ``cls``, return the error (which names the file)."""
    path = tmp_path / "config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ConfigError) as info:
        cls.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


# --- parameters -----------------------------------------------------------------------------


def test_parameter_defaults_are_the_reference_prototype_s():
    p = Parameters()
    assert (
        p.header_size,
        p.max_header_delay,
        p.gc_depth,
        p.sync_retry_delay,
        p.sync_retry_nodes,
        p.batch_size,
        p.max_batch_delay,
    ) == (1_000, 0.1, 50, 10.0, 3, 500_000, 0.1)
    assert p.max_frame_size == 8 * 1024 * 1024
    assert p.consensus == "bullshark"
    assert p.retry == RetryConfig()


def test_parameters_round_trip(tmp_path: Path):
    p = Parameters(
        gc_depth=10,
        consensus="tusk",
        retry=RetryConfig(initial_interval=0.01, max_interval=1, max_elapsed_time=60.0),
    )
    p.save(tmp_path / "parameters.json")
    assert Parameters.load(tmp_path / "parameters.json") == p
    assert Parameters.from_json(json.loads(json.dumps(Parameters().to_json()))) == Parameters()


def test_parameters_file_may_omit_fields(tmp_path: Path):
    path = tmp_path / "parameters.json"
    path.write_text('{"batch_size": 1000, "retry": {"max_interval": 3}}')
    p = Parameters.load(path)
    assert p.batch_size == 1000 and p.header_size == 1_000
    assert p.retry == RetryConfig(max_interval=3)
    # derived defaults follow the fields they derive from
    assert (p.batch_quota_rate, p.batch_quota_burst) == (4 * 6_400_000, 2 * 64 * 1024 * 1024)
    assert Parameters(max_pending_transactions_bytes=1_000).batch_quota_burst == 500_000 + 131_072


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"header_size": 0}, "header_size: must be a positive integer"),
        ({"gc_depth": True}, "gc_depth: must be a positive integer"),
        ({"batch_size": 1.5}, "batch_size: must be a positive integer"),
        (
            {"max_header_delay": -0.1},
            "max_header_delay: must be a positive finite number of seconds",
        ),
        ({"sync_retry_delay": "10"}, "sync_retry_delay: must be a positive finite number"),
        ('{"idle_timeout": 1e999}', "idle_timeout: must be a positive finite number"),
        ('{"idle_timeout": Infinity}', "Infinity is not a JSON number"),
        ({"consensus": "pbft"}, "consensus: must be one of"),
        ({"max_frame_size": 100}, "max_frame_size: must be an integer in [1024, 2**32)"),
        ({"batch_size": 8 * 1024 * 1024}, "batch_size: batch_size + max_transaction_size"),
        ({"max_pending": 10}, "max_pending: must be >= pool_capacity"),
        ({"batch_quota_rate": 0}, "batch_quota_rate: must be a positive integer"),
        ({"batch_quota_burst": 2.5}, "batch_quota_burst: must be a positive integer"),
        ({"batch_quota_burst": 600_000}, "batch_quota_burst: must hold the largest batch"),
        ({"keepalive_interval": 30}, "keepalive_interval: must be below idle_timeout"),
        ({"retry": {"initial_interval": 0}}, "retry: initial_interval must be a positive"),
        ({"dial_retry": {"multiplier": 0.5}}, "dial_retry: multiplier must be"),
        ({"retry": {"jitter": 1}}, "retry.jitter: unknown field"),
        ({"retry": 5}, "retry: expected an object"),
        ({"batchsize": 1}, "batchsize: unknown field"),
        ([], "(top level): expected an object"),
    ],
)
def test_invalid_parameters_name_the_field(tmp_path: Path, data: Any, expected: str):
    assert expected in load_error(tmp_path, data, Parameters)


def test_invalid_parameters_in_code_raise_too():
    with pytest.raises(ConfigError, match="gc_depth"):
        Parameters(gc_depth=0)
    with pytest.raises(ConfigError, match="retry: must be a RetryConfig"):
        Parameters(retry={"initial_interval": 1})  # type: ignore[arg-type]


def test_network_config_carries_the_parameters():
    p = Parameters(
        handshake_timeout=3.0,
        keepalive_interval=1.0,
        idle_timeout=9.0,
        max_frame_size=1 << 20,
        batch_size=1000,
        pool_capacity=7,
        max_pending=70,
        connect_timeout=2.0,
        request_timeout=4.0,
    )
    config = p.network_config()
    c = config.connection
    assert (c.handshake_timeout, c.keepalive_interval, c.idle_timeout, c.max_frame_size) == (
        3.0,
        1.0,
        9.0,
        1 << 20,
    )
    assert (
        config.pool_capacity,
        config.max_pending,
        config.connect_timeout,
        config.request_timeout,
    ) == (7, 70, 2.0, 4.0)
    assert (config.retry, config.dial_retry) == (p.retry, p.dial_retry)


# --- committee: files and network id ------------------------------------------------------


def test_committee_round_trip(tmp_path: Path, committee: Committee):
    committee.save(tmp_path / "committee.json")
    loaded = Committee.load(tmp_path / "committee.json")
    assert loaded == committee
    assert loaded.network_id() == committee.network_id()
    assert list(loaded.authorities) == sorted(loaded.authorities)


def test_committee_pickles(committee: Committee):
    copied = pickle.loads(pickle.dumps(committee))
    assert copied == committee and copied.network_id() == committee.network_id()
    assert copied.leader(3) == committee.leader(3)


def test_local_committee_layout(keys: list[AuthorityKeys], committee: Committee):
    first = committee.authorities[keys[0].name]
    assert first.stake == 1
    assert (first.primary.address, first.primary.client_address, first.primary.admin_address) == (
        "127.0.0.1:20000",
        "127.0.0.1:20001",
        "127.0.0.1:20002",
    )
    assert [(w.worker_address, w.transactions_address) for w in first.workers] == [
        ("127.0.0.1:20003", "127.0.0.1:20004"),
        ("127.0.0.1:20005", "127.0.0.1:20006"),
    ]
    assert committee.authorities[keys[3].name].workers[1].transactions_address == "127.0.0.1:20027"
    assert committee.worker_ids == range(2)
    committee.check_keys(keys[2].public())


def test_local_committee_with_kernel_ports(keys: list[AuthorityKeys]):
    committee = Committee.local([k.public() for k in keys], workers=2)
    ports = [parse_address(a)[1] for a in _addresses(committee)]
    assert len(ports) == len(set(ports)) == 4 * 7


def test_local_committee_needs_enough_worker_keys(keys: list[AuthorityKeys]):
    with pytest.raises(ConfigError, match="workers: authority .* has 2 worker keys, 3 needed"):
        Committee.local([k.public() for k in keys], workers=3, base_port=20_000)
    with pytest.raises(ConfigError, match="transactions_address: .* with a port in 1..65535"):
        Committee.local([k.public() for k in keys], workers=2, base_port=65_530)


def _addresses(committee: Committee) -> list[str]:
    return [
        a
        for auth in committee.authorities.values()
        for a in (
            auth.primary.address,
            auth.primary.client_address,
            auth.primary.admin_address,
            *(x for w in auth.workers for x in (w.worker_address, w.transactions_address)),
        )
    ]


def test_network_id_is_the_hash_of_the_canonical_json(committee: Committee):
    canonical = canonical_json(committee.to_json())
    assert committee.network_id() == sha256(canonical)
    assert len(committee.network_id()) == 32
    assert b" " not in canonical and b"\n" not in canonical
    assert canonical.startswith(b'{"authorities":{"')


def test_network_id_ignores_formatting(tmp_path: Path, committee: Committee):
    data = committee.to_json()
    name = next(iter(data["authorities"]))
    entry = data["authorities"].pop(name)
    entry["primary"]["network_key"] = entry["primary"]["network_key"].upper()
    data["authorities"][name.upper()] = entry  # now last, and upper case
    path = tmp_path / "committee.json"
    path.write_text(json.dumps(data, indent=7))
    assert Committee.load(path).network_id() == committee.network_id()


def _changes(committee: Committee) -> list[Committee]:
    name = committee.authorities_sorted()[1]
    auth = committee.authorities[name]
    primary, worker = auth.primary, auth.workers[1]

    def replace(**changes: Any) -> Committee:
        return Committee({**committee.authorities, name: attrs.evolve(auth, **changes)})

    return [
        replace(stake=2),
        replace(primary=attrs.evolve(primary, address="127.0.0.1:30000")),
        replace(primary=attrs.evolve(primary, client_address="localhost:20001")),
        replace(primary=attrs.evolve(primary, admin_address=None)),
        replace(primary=attrs.evolve(primary, network_key=os.urandom(32))),
        replace(workers=[auth.workers[0], attrs.evolve(worker, transactions_address="[::1]:1")]),
        replace(workers=[auth.workers[0], attrs.evolve(worker, network_key=os.urandom(32))]),
        with_stakes(committee, [1, 1, 1, 7]),
        Committee({k: v for k, v in committee.authorities.items() if k != name}),
        Committee(
            {os.urandom(32) if k == name else k: v for k, v in committee.authorities.items()}
        ),
    ]


def test_network_id_changes_with_any_content(committee: Committee):
    ids = {committee.network_id(), *(c.network_id() for c in _changes(committee))}
    assert len(ids) == 1 + len(_changes(committee))


# --- committee: thresholds and leaders ---------------------------------------------------


@pytest.mark.parametrize(
    ("stakes", "quorum", "validity"),
    [
        ([1, 1, 1, 1], 3, 2),
        ([1, 1, 1], 3, 1),
        ([1], 1, 1),
        ([1, 1, 1, 1, 1, 1, 1], 5, 3),
        ([10, 20, 30, 40], 67, 34),
        ([1, 1, 1, 3], 5, 2),
    ],
)
def test_thresholds(stakes: list[int], quorum: int, validity: int):
    keys = [AuthorityKeys.generate(1).public() for _ in stakes]
    c = with_stakes(Committee.local(keys, workers=1, base_port=40_000), stakes)
    assert (c.size, c.total_stake) == (len(stakes), sum(stakes))
    assert (c.quorum_threshold(), c.validity_threshold()) == (quorum, validity)


def test_stake_lookup(committee: Committee):
    c = with_stakes(committee, [5, 6, 7, 8])
    assert [c.stake(n) for n in c.authorities_sorted()] == [5, 6, 7, 8]
    assert c.stake(os.urandom(32)) == 0


def test_leaders_rotate_over_the_sorted_authorities(committee: Committee):
    order = committee.authorities_sorted()
    assert order == sorted(committee.authorities)
    assert [committee.leader(r) for r in range(12)] == [order[r % 4] for r in range(12)]
    shuffled = Committee(dict(reversed(list(committee.authorities.items()))))
    assert [shuffled.leader(r) for r in range(8)] == [committee.leader(r) for r in range(8)]
    assert committee.others(order[2]) == [order[0], order[1], order[3]]


# --- committee: validation ----------------------------------------------------------------


def _edit(committee: Committee, change: Any) -> Any:
    data = copy.deepcopy(committee.to_json())
    names = list(data["authorities"])
    change(data["authorities"], names)
    return data


def _worker(a: dict, n: list, index: int) -> dict:
    return a[n[index]]["workers"]


def _primary(a: dict, n: list, index: int) -> dict:
    return a[n[index]]["primary"]


#: (change to the committee JSON ``a`` with authority hex keys ``n``, field, message).
INVALID_COMMITTEES = [
    (lambda a, n: a.clear(), "", "need 1 to 1000 authorities, got 0"),
    (lambda a, n: a[n[0]].update(stake=0), "{0}.stake", "must be a positive integer"),
    (lambda a, n: a[n[0]].update(stake=-3), "{0}.stake", "must be a positive integer"),
    (lambda a, n: a[n[1]].update(stake=1.0), "{1}.stake", "must be a positive integer"),
    (lambda a, n: a[n[1]].update(stake="1"), "{1}.stake", "must be a positive integer"),
    (lambda a, n: a[n[1]].pop("stake"), "{1}.stake", "missing"),
    (lambda a, n: _worker(a, n, 2).pop("1"), "{2}.workers", "has 1 workers but"),
    (
        lambda a, n: _worker(a, n, 2).update({"2": _worker(a, n, 2).pop("1")}),
        "{2}.workers",
        "worker ids must be",
    ),
    (
        lambda a, n: _worker(a, n, 2).update({"01": _worker(a, n, 2).pop("1")}),
        "{2}.workers",
        "worker ids must be",
    ),
    (lambda a, n: a[n[0]].update(workers={}), "{0}.workers", "worker ids must be"),
    (
        lambda a, n: _primary(a, n, 3).update(network_key=_primary(a, n, 1)["network_key"]),
        "{3}.primary.network_key",
        "duplicate network key, also used by authorities.{1}.primary",
    ),
    (
        lambda a, n: _worker(a, n, 3)["1"].update(network_key=_primary(a, n, 3)["network_key"]),
        "{3}.workers.1.network_key",
        "duplicate network key, also used by authorities.{3}.primary",
    ),
    (
        lambda a, n: _worker(a, n, 2)["0"].update(
            transactions_address=_primary(a, n, 0)["address"]
        ),
        "{2}.workers.0.transactions_address",
        "duplicate address, also used by authorities.{0}.primary.address",
    ),
    (
        lambda a, n: _primary(a, n, 1).update(admin_address="LOCALHOST:1", address="localhost:1"),
        "{1}.primary.admin_address",
        "duplicate address",
    ),
    (
        lambda a, n: _primary(a, n, 1).update(address="127.0.0.1"),
        "{1}.primary.address",
        "is not 'host:port'",
    ),
    (
        lambda a, n: _worker(a, n, 1)["1"].update(worker_address="127.0.0.1:0"),
        "{1}.workers.1.worker_address",
        "with a port in 1..65535",
    ),
    (
        lambda a, n: _primary(a, n, 1).update(admin_address=8000),
        "{1}.primary.admin_address",
        "expected a 'host:port' string",
    ),
    (lambda a, n: _primary(a, n, 1).pop("client_address"), "{1}.primary.client_address", "missing"),
    (lambda a, n: _primary(a, n, 1).update(name="x"), "{1}.primary.name", "unknown field"),
    (
        lambda a, n: _worker(a, n, 0)["0"].update(network_key="ab" * 33),
        "{0}.workers.0.network_key",
        "expected 32 bytes",
    ),
    (
        lambda a, n: _primary(a, n, 0).update(network_key=None),
        "{0}.primary.network_key",
        "expected a hex string",
    ),
    (lambda a, n: a.update({n[0][:-2]: a.pop(n[0])}), "{0:-2}", "expected 32 bytes"),
    (lambda a, n: a.update({n[0].upper(): a[n[0]]}), "{0U}", "duplicate authority key"),
    (lambda a, n: a.update(extra=[]), "extra", "not a hex string"),
    (lambda a, n: a.update({n[1]: []}), "{1}", "expected an object"),
]


@pytest.mark.parametrize(("change", "field", "message"), INVALID_COMMITTEES)
def test_invalid_committee_names_the_field(
    tmp_path: Path, committee: Committee, change: Any, field: str, message: str
):
    names = [n.hex() for n in committee.authorities]
    substitutions = {"{0:-2}": names[0][:-2], "{0U}": names[0].upper()}
    substitutions.update({f"{{{i}}}": name for i, name in enumerate(names)})
    field = f"authorities.{field}".rstrip(".")
    for placeholder, name in substitutions.items():
        field, message = field.replace(placeholder, name), message.replace(placeholder, name)
    error = load_error(tmp_path, _edit(committee, change))
    assert error.startswith(f"{field}: ")
    assert message in error


def test_duplicate_json_keys_are_refused(tmp_path: Path, committee: Committee):
    text = json.dumps(committee.to_json())
    name = committee.authorities_sorted()[0].hex()
    duplicated = text.replace(f'"{name}": {{"stake": 1,', f'"{name}": {{"stake": 1, "stake": 2,')
    assert duplicated != text
    assert load_error(tmp_path, duplicated) == "stake: duplicate JSON key"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("{", "invalid JSON"),
        ([], "(top level): expected an object"),
        ({}, "authorities: missing"),
        ({"authorities": []}, "authorities: expected an object"),
        ({"authorities": {}, "epoch": 1}, "epoch: unknown field"),
    ],
)
def test_malformed_committee_file(tmp_path: Path, data: Any, expected: str):
    assert expected in load_error(tmp_path, data)


def test_missing_committee_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="committee.json: file not found"):
        Committee.load(tmp_path / "committee.json")


def test_invalid_committee_in_code(committee: Committee):
    with pytest.raises(ConfigError, match="authorities: need 1 to 1000"):
        Committee({})
    with pytest.raises(ConfigError, match="authorities: keys must be 32 bytes"):
        Committee({b"short": next(iter(committee.authorities.values()))})
    with pytest.raises(ConfigError, match="stake: must be a positive integer"):
        attrs.evolve(next(iter(committee.authorities.values())), stake=0)
    one = next(iter(committee.authorities.values()))
    too_many = {os.urandom(32): one for _ in range(MAX_COMMITTEE_SIZE + 1)}
    with pytest.raises(ConfigError, match="authorities: need 1 to 1000 authorities, got 1001"):
        Committee(too_many)


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "127.0.0.1:",
        ":80",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:080",
        "127.0.0.1:+80",
        "127.0.0.1:８０",
        "host:port",
        "::1:80",
        "[::g]:80",
        "[127.0.0.1]:80",
        "256.1.1.1:80",
        "1.2.3:80",
        "-bad.example:80",
        "bad-.example:80",
        "a..b:80",
        "under_score:80",
        " 127.0.0.1:80",
        "x" * 64 + ".example:80",
    ],
)
def test_bad_addresses(text: str):
    with pytest.raises(ValueError):
        parse_address(text)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[0:0::1]:65535", ("::1", 65535)),
        ("[FE80::1]:1", ("fe80::1", 1)),
        ("LocalHost:8000", ("localhost", 8000)),
        ("node-1.Example.com.:443", ("node-1.example.com", 443)),
    ],
)
def test_good_addresses_are_canonical(text: str, parsed: tuple[str, int]):
    assert parse_address(text) == parsed


def test_bad_address_types_are_refused():
    with pytest.raises(TypeError):
        parse_address(80)


# --- committee: peers -------------------------------------------------------------------------


def test_primary_peer_directory(keys: list[AuthorityKeys], committee: Committee):
    me = keys[0].name
    peers = committee.primary_peers(me)
    assert [(p.role, p.worker_id) for p in peers] == [("primary", None)] * 3 + [
        ("worker", 0),
        ("worker", 1),
    ]
    others = committee.others(me)
    for peer, name in zip(peers[:3], others, strict=True):
        auth = committee.authorities[name]
        assert (peer.authority, peer.static_key) == (name, auth.primary.network_key)
        assert peer.address == parse_address(auth.primary.address)
        assert peer.name == f"{short_hex(name)}/primary"
    for i, peer in enumerate(peers[3:]):
        worker = committee.authorities[me].workers[i]
        assert (peer.authority, peer.static_key) == (me, worker.network_key)
        assert peer.address == parse_address(worker.worker_address)
        assert peer.name == f"{short_hex(me)}/worker{i}"
        assert peer.matches(HandshakePayload("worker", authority=me, worker_id=i))


def test_worker_peer_directory(keys: list[AuthorityKeys], committee: Committee):
    me = keys[1].name
    peers = committee.worker_peers(me, 1)
    assert [(p.role, p.worker_id) for p in peers] == [("worker", 1)] * 3 + [("primary", None)]
    assert [p.authority for p in peers] == [*committee.others(me), me]
    assert [p.static_key for p in peers[:3]] == [
        committee.authorities[n].workers[1].network_key for n in committee.others(me)
    ]
    assert peers[3].static_key == keys[1].primary.public
    assert peers[3].address == parse_address(committee.authorities[me].primary.address)
    assert peers[3].matches(HandshakePayload("primary", authority=me))


def test_peer_directories_are_symmetric(committee: Committee):
    """B is in A's directory iff A is in B's: every link of wire_spec §1 is known to both ends."""
    directories = {}
    for name in committee.authorities:
        directories[(name, None)] = committee.primary_peers(name)
        for i in committee.worker_ids:
            directories[(name, i)] = committee.worker_peers(name, i)
    links = {(a, (p.authority, p.worker_id)) for a, peers in directories.items() for p in peers}
    assert all((b, a) in links for a, b in links)
    assert len(links) == 4 * 3 + 2 * 4 * 3 + 2 * 4 * 2  # primaries, same-id workers, own workers
    names = [p.name for peers in directories.values() for p in peers]
    assert len(set(names)) == 4 * 3  # one name per endpoint


def test_unknown_members_in_directories(committee: Committee):
    with pytest.raises(ConfigError, match="is not in the committee"):
        committee.primary_peers(os.urandom(32))
    with pytest.raises(ConfigError, match="worker_id: 2 is not in range"):
        committee.worker_peers(committee.authorities_sorted()[0], 2)


def test_endpoint_lookup(keys: list[AuthorityKeys], committee: Committee):
    for k in keys:
        assert committee.endpoint(k.primary.public) == Endpoint(k.name, "primary")
        for i, worker in enumerate(k.workers):
            endpoint = committee.endpoint(worker.public)
            assert endpoint == Endpoint(k.name, "worker", i)
            assert endpoint is not None and endpoint.name == f"{short_hex(k.name)}/worker{i}"
    assert committee.endpoint(os.urandom(32)) is None
    assert committee.endpoint(keys[0].name) is None  # an authority key is not a network key


def test_check_keys(keys: list[AuthorityKeys], committee: Committee):
    with pytest.raises(ConfigError, match=r"primary\.network_key: does not match the key file"):
        committee.check_keys(attrs.evolve(keys[0].public(), primary=keys[1].primary.public))
    with pytest.raises(ConfigError, match=r"workers\.1\.network_key: does not match the key file"):
        committee.check_keys(attrs.evolve(keys[0].public(), workers=keys[0].public().workers[:1]))
    with pytest.raises(ConfigError, match="is not in the committee"):
        committee.check_keys(AuthorityKeys.generate(2).public())


async def test_primaries_connect_with_their_committee_directories():
    """The directories, keys and network id drive the real network layer: four primaries
    built from one local committee authenticate each other over Noise."""
    keys = [AuthorityKeys.generate(1) for _ in range(4)]
    committee = Committee.local([k.public() for k in keys], workers=1)
    params = Parameters(dial_retry=RetryConfig(initial_interval=0.02, max_interval=0.2))
    managers = [
        PeerManager(
            local_static=k.primary.private,
            local_public=k.primary.public,
            local_payload=HandshakePayload("primary", authority=k.name),
            network_id=committee.network_id(),
            peers=committee.primary_peers(k.name),
            config=params.network_config(),
            name=Endpoint(k.name, "primary").name,
        )
        for k in keys
    ]
    try:
        for k, manager in zip(keys, managers, strict=True):
            host, port = parse_address(committee.authorities[k.name].primary.address)
            await manager.start(host, port)
        others = [
            [committee.authorities[n].primary.network_key for n in committee.others(k.name)]
            for k in keys
        ]
        async with asyncio.timeout(10):
            while not all(
                m.is_connected(key)
                for m, keys_ in zip(managers, others, strict=True)
                for key in keys_
            ):
                await asyncio.sleep(0.02)
    finally:
        for manager in managers:
            await manager.stop()


def test_rate_limit_overrides_round_trip_and_bad_ones_are_named():
    parameters = Parameters.from_json(
        {"rate_limit_headroom": 2, "rate_limits": {"Header": {"requests_per_second": 5,
                                                              "request_burst": 10}}})
    assert parameters.rate_limits == {"Header": RouteLimit(5, 10)}
    assert Parameters.from_json(json.loads(json.dumps(parameters.to_json()))) == parameters
    for bad, message in (
            ({"rate_limits": {"Nope": {}}}, "rate_limits.Nope: not a rate-limited route"),
            ({"rate_limits": {"Header": {"requests_per_second": 5}}}, "both be set"),
            ({"rate_limits": {"Vote": {"requests_per_second": -1, "request_burst": 1}}},
             "rate_limits.Vote: requests_per_second must be a positive number"),
            ({"rate_limits": {"Vote": {"burst": 1}}}, "burst"),
            ({"rate_limits": []}, "rate_limits"),
            ({"rate_limit_headroom": 0.5}, "rate_limit_headroom: must be a number >= 1")):
        with pytest.raises(ConfigError, match=message):
            Parameters.from_json(bad)
