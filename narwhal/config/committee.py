"""The committee: who the authorities are, where they listen, and what they agree on.

:class:`Committee` holds the authorities (ed25519 key -> stake, primary and workers with
their X25519 network keys and addresses) and answers the stake thresholds, the leader of a
round, the network id bound into every Noise handshake, and the peer directory each
endpoint gives its ``PeerManager``. :func:`parse_address` and :func:`format_address` are
the one ``host:port`` syntax of the committee file, the CLI and the clients.

Guarantees:

- Every class is ``@attrs.frozen`` and validated on construction: an invalid ``Committee``
  cannot exist, whether built in code or loaded, and every problem is a
  :class:`~narwhal.config.json_files.ConfigError` naming the field.
- Keys are lowercase hex on output. Addresses are kept in canonical form (IPv6 compressed,
  host names lower case), so the network id does not depend on how an address was spelled.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import socket
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from narwhal.config.json_files import (
    KEY_SIZE,
    ConfigError,
    JsonReader,
    PathLike,
    _check,
    _within,
    as_tuple,
    canonical_json,
    load_json,
    parse_hex,
    save_json,
    short_hex,
)
from narwhal.config.network import PeerInfo
from narwhal.messages import MAX_COMMITTEE_SIZE

__all__ = [
    "Authority", "AuthorityPublicKeys", "Committee", "Endpoint", "PrimaryInfo", "WorkerInfo",
    "format_address", "parse_address",
]


# --- addresses ------------------------------------------------------------------------------

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def parse_address(text: object) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``. The host is IPv4, ``[IPv6]`` (returned without
    brackets, compressed) or an RFC 1123 host name (lower-cased); the port is 1..65535 in
    plain decimal. Raises ValueError otherwise (TypeError for a non-string)."""
    if not isinstance(text, str):
        raise TypeError(f"expected a 'host:port' string, got {text!r}")
    host, _, port_text = text.rpartition(":")
    if not (host and port_text.isascii() and port_text.isdigit()
            and str(int(port_text)) == port_text and 1 <= int(port_text) <= 65535):
        raise ValueError(f"{text!r} is not 'host:port' with a port in 1..65535")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.IPv6Address(host[1:-1]).compressed, port
        except ValueError:
            raise ValueError(f"{text!r}: {host} is not an IPv6 address") from None
    with contextlib.suppress(ValueError):
        return str(ipaddress.IPv4Address(host)), port
    name = host.lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(map(_LABEL.match, labels)) or labels[-1].isdigit():
        raise ValueError(f"{text!r}: {host!r} is not an IPv4 address, [IPv6] address or host name")
    return name, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(name: str, default: Any = attrs.NOTHING) -> Any:
    """An address field kept in canonical form (None allowed when it is the default)."""
    def convert(value: Any) -> Any:
        if value is None and default is None:
            return None
        try:
            return format_address(*parse_address(value))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return attrs.field(default=default, converter=convert)


# --- committee ------------------------------------------------------------------------------


def _key(value: object) -> bytes:
    if not (isinstance(value, bytes) and len(value) == KEY_SIZE):
        raise ConfigError(f"network_key: must be {KEY_SIZE} bytes, got {value!r}")
    return value


@attrs.frozen
class PrimaryInfo:
    network_key: bytes = attrs.field(converter=_key)
    #: Primary-to-primary and worker-to-primary links (Noise IK).
    address: str = _address("address")
    #: Output subscribers (Noise NK, with ``network_key``).
    client_address: str = _address("client_address")
    #: Local admin/metrics endpoint, if any.
    admin_address: str | None = _address("admin_address", None)


@attrs.frozen
class WorkerInfo:
    network_key: bytes = attrs.field(converter=_key)
    #: Worker-to-worker (same id) and primary-to-worker links (Noise IK).
    worker_address: str = _address("worker_address")
    #: Client transaction submission (Noise NK, with ``network_key``).
    transactions_address: str = _address("transactions_address")


@attrs.frozen
class Authority:
    stake: int = attrs.field(validator=_check(
        lambda v: type(v) is int and 0 < v < 2**63, "a positive integer below 2**63"))
    primary: PrimaryInfo
    #: Indexed by worker id (0 .. W-1).
    workers: tuple[WorkerInfo, ...] = attrs.field(converter=as_tuple)


@attrs.frozen
class AuthorityPublicKeys:
    """The public half of an authority's keys (a key file's, :mod:`narwhal.crypto`): what
    goes into a committee. Defined here, not in ``crypto``, so that the committee needs
    nothing from the module that holds the secrets (``crypto`` imports ``config``, never
    the reverse)."""

    #: The ed25519 public key: the authority's name.
    name: bytes
    #: The primary's X25519 public key.
    primary: bytes
    #: The workers' X25519 public keys, indexed by worker id.
    workers: tuple[bytes, ...] = attrs.field(converter=as_tuple)


@attrs.frozen
class Endpoint:
    """Who owns a network key: an authority's primary (``worker_id`` None) or a worker."""

    authority: bytes
    role: str
    worker_id: int | None = None

    @property
    def name(self) -> str:
        """Short and human: ``"1a2b3c4d/primary"`` or ``"1a2b3c4d/worker0"``."""
        part = "primary" if self.worker_id is None else f"worker{self.worker_id}"
        return f"{short_hex(self.authority)}/{part}"


def _sorted_by_key(value: Mapping[bytes, Authority]) -> Mapping[bytes, Authority]:
    return MappingProxyType(dict(sorted(value.items())))


@attrs.frozen
class Committee:
    """The authorities, keyed by ed25519 public key and iterated in byte order.

    Validated on construction: 1 to ``MAX_COMMITTEE_SIZE`` authorities with 32-byte keys and
    positive stakes, all with the same worker ids 0..W-1 (W >= 1), and every network key
    and every address used by exactly one endpoint.

    ``network_id()`` is ``SHA-256(canonical_json(to_json()))`` (``wire_spec.md`` section
    3.2.1 is the normative text, with a worked example): the JSON document below with
    keys sorted, no whitespace, ASCII only, keys in lowercase hex, stakes as integers, worker
    ids as decimal strings, addresses canonical, ``admin_address`` omitted when absent. It
    depends on the content, not on how the file is formatted::

        {"authorities": {"<ed25519 hex>": {"stake": 1,
            "primary": {"network_key": "<x25519 hex>", "address": "127.0.0.1:4000",
                        "client_address": "127.0.0.1:4001", "admin_address": "127.0.0.1:4002"},
            "workers": {"0": {"network_key": "<x25519 hex>", "worker_address": "127.0.0.1:4003",
                              "transactions_address": "127.0.0.1:4004"}}}}}
    """

    authorities: Mapping[bytes, Authority] = attrs.field(converter=_sorted_by_key)
    _endpoints: Mapping[bytes, Endpoint] = attrs.field(init=False, repr=False, eq=False)
    _total: int = attrs.field(init=False, repr=False, eq=False)
    _order: tuple[bytes, ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if not 1 <= len(self.authorities) <= MAX_COMMITTEE_SIZE:
            raise ConfigError(f"authorities: need 1 to {MAX_COMMITTEE_SIZE} authorities, "
                              f"got {len(self.authorities)}")
        first = next(iter(self.authorities))
        endpoints: dict[bytes, Endpoint] = {}
        owners: dict[object, str] = {}  # network key or address -> path of its first user
        for name, auth in self.authorities.items():
            if not (isinstance(name, bytes) and len(name) == KEY_SIZE):
                raise ConfigError(f"authorities: keys must be {KEY_SIZE} bytes, got {name!r}")
            where = f"authorities.{name.hex()}"
            if not isinstance(auth, Authority):
                raise ConfigError(f"{where}: expected an Authority, got {auth!r}")
            if not auth.workers or len(auth.workers) != len(self.authorities[first].workers):
                raise ConfigError(
                    f"{where}.workers: has {len(auth.workers)} workers but authorities."
                    f"{first.hex()} has {len(self.authorities[first].workers)}; every authority "
                    "needs the same W >= 1 workers, ids 0..W-1")
            infos: list[tuple[str, Endpoint, PrimaryInfo | WorkerInfo]] = [
                (f"{where}.primary", Endpoint(name, "primary"), auth.primary)]
            infos += [(f"{where}.workers.{i}", Endpoint(name, "worker", i), worker)
                      for i, worker in enumerate(auth.workers)]
            for path, endpoint, info in infos:
                endpoints[info.network_key] = endpoint
                for field, value in attrs.asdict(info).items():
                    if value is None:
                        continue
                    if value in owners:
                        what = "network key" if field == "network_key" else "address"
                        raise ConfigError(f"{path}.{field}: duplicate {what}, "
                                          f"also used by {owners[value]}")
                    owners[value] = f"{path}.{field}"
        object.__setattr__(self, "_endpoints", MappingProxyType(endpoints))
        object.__setattr__(self, "_total", sum(a.stake for a in self.authorities.values()))
        object.__setattr__(self, "_order", tuple(self.authorities))

    def __reduce__(self) -> tuple[type[Committee], tuple[dict[bytes, Authority]]]:
        return Committee, (dict(self.authorities),)  # a mappingproxy does not pickle

    # -- stake and leaders -------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.authorities)

    @property
    def total_stake(self) -> int:
        return self._total

    def stake(self, name: bytes) -> int:
        """The stake of ``name``; 0 for a non-member (as in the reference)."""
        auth = self.authorities.get(name)
        return 0 if auth is None else auth.stake

    def quorum_threshold(self) -> int:
        """2f+1 by stake: ``2*S//3 + 1``."""
        return 2 * self.total_stake // 3 + 1

    def validity_threshold(self) -> int:
        """f+1 by stake: ``(S+2)//3``."""
        return (self.total_stake + 2) // 3

    def authorities_sorted(self) -> list[bytes]:
        """Authority keys in byte order: the canonical order every node agrees on."""
        return list(self.authorities)

    def leader(self, round: int) -> bytes:
        """The leader of ``round``: ``authorities_sorted()[round % n]`` (round-robin)."""
        return self._order[round % len(self._order)]

    def others(self, me: bytes) -> list[bytes]:
        """Every authority but ``me`` (which must be a member), in canonical order."""
        self._member(me)
        return [name for name in self.authorities if name != me]

    @property
    def worker_ids(self) -> range:
        return range(len(next(iter(self.authorities.values())).workers))

    # -- network -----------------------------------------------------------------------------

    def network_id(self) -> bytes:
        """SHA-256 of the canonical JSON (see the class docstring): the Noise prologue's id."""
        return hashlib.sha256(canonical_json(self.to_json())).digest()

    def endpoint(self, network_key: bytes) -> Endpoint | None:
        """Which authority's primary or worker owns ``network_key`` (None: nobody)."""
        return self._endpoints.get(network_key)

    def primary_peers(self, me: bytes) -> list[PeerInfo]:
        """The peer directory of ``me``'s primary: the other primaries, then ``me``'s workers."""
        return ([self._peer(name) for name in self.others(me)]
                + [self._peer(me, i) for i in self.worker_ids])

    def worker_peers(self, me: bytes, worker_id: int) -> list[PeerInfo]:
        """The peer directory of ``me``'s worker ``worker_id``: the workers with that id of
        the other authorities, then ``me``'s primary."""
        if worker_id not in self.worker_ids:
            raise ConfigError(f"worker_id: {worker_id!r} is not in {self.worker_ids}")
        return [self._peer(name, worker_id) for name in self.others(me)] + [self._peer(me)]

    def _peer(self, name: bytes, worker_id: int | None = None) -> PeerInfo:
        auth = self.authorities[name]
        endpoint = Endpoint(name, "primary" if worker_id is None else "worker", worker_id)
        info = auth.primary if worker_id is None else auth.workers[worker_id]
        address = info.address if isinstance(info, PrimaryInfo) else info.worker_address
        return PeerInfo(name=endpoint.name, static_key=info.network_key, role=endpoint.role,
                        authority=name, worker_id=worker_id, address=parse_address(address))

    def _member(self, name: bytes) -> Authority:
        auth = self.authorities.get(name) if isinstance(name, bytes) else None
        if auth is None:
            shown = name.hex() if isinstance(name, bytes) else repr(name)
            raise ConfigError(f"authority {shown} is not in the committee")
        return auth

    def check_keys(self, keys: AuthorityPublicKeys) -> None:
        """Raise ConfigError unless ``keys`` (a key file's public part) are this committee's
        keys for their authority: the same primary key and the same key per worker id."""
        auth = self._member(keys.name)
        where = f"authorities.{keys.name.hex()}"
        if auth.primary.network_key != keys.primary:
            raise ConfigError(f"{where}.primary.network_key: does not match the key file")
        for i, worker in enumerate(auth.workers):
            if keys.workers[i:i + 1] != (worker.network_key,):
                raise ConfigError(f"{where}.workers.{i}.network_key: does not match the key file")

    # -- files -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        def fields(info: PrimaryInfo | WorkerInfo) -> dict[str, Any]:
            return {k: v.hex() if isinstance(v, bytes) else v
                    for k, v in attrs.asdict(info).items() if v is not None}
        return {"authorities": {
            name.hex(): {"stake": auth.stake, "primary": fields(auth.primary),
                         "workers": {str(i): fields(w) for i, w in enumerate(auth.workers)}}
            for name, auth in self.authorities.items()}}

    @classmethod
    def from_json(cls, value: Any) -> Committee:
        listed = JsonReader(value, required=["authorities"]).child("authorities", optional=None)
        authorities: dict[bytes, Authority] = {}
        for hex_name in listed.value:
            name = parse_hex(hex_name, KEY_SIZE, listed.path(hex_name))
            if name in authorities:  # the same key spelled in upper and lower case
                raise ConfigError(f"{listed.path(hex_name)}: duplicate authority key")
            auth = listed.child(hex_name, required=["stake", "primary", "workers"])
            primary = auth.child("primary", required=["network_key", "address", "client_address"],
                                 optional=["admin_address"]).build(PrimaryInfo)
            workers = [JsonReader(entry, path, required=[
                "network_key", "worker_address", "transactions_address"]).build(WorkerInfo)
                for path, entry in auth.numbered("workers")]
            with _within(auth.where):
                authorities[name] = Authority(auth.value["stake"], primary, workers)
        return cls(authorities)

    @classmethod
    def load(cls, path: PathLike) -> Committee:
        return load_json(path, cls.from_json)

    def save(self, path: PathLike) -> None:
        save_json(path, self.to_json())

    @classmethod
    def local(cls, keys: list[AuthorityPublicKeys], workers: int, base_port: int | None = None,
              host: str = "127.0.0.1") -> Committee:
        """A stake-1 committee on ``host``: for each authority (in ``keys`` order) the
        primary, client and admin ports, then each worker's worker and transactions ports.

        ``base_port`` None asks the kernel for free ports (bind port 0, read it, close). Small
        race: another process may take such a port before the node binds it; a test that
        cannot tolerate that should hand bound sockets to ``PeerManager.start(sock=...)``."""
        per_authority = 3 + 2 * workers
        count = per_authority * len(keys)
        ports = iter(_free_ports(count, host) if base_port is None
                     else range(base_port, base_port + count))
        authorities: dict[bytes, Authority] = {}
        for k in keys:
            if len(k.workers) < workers:
                raise ConfigError(f"workers: authority {short_hex(k.name)} has "
                                  f"{len(k.workers)} worker keys, {workers} needed")
            addr = [format_address(host, next(ports)) for _ in range(per_authority)]
            authorities[k.name] = Authority(1, PrimaryInfo(k.primary, *addr[:3]), [
                WorkerInfo(k.workers[i], *addr[3 + 2 * i:5 + 2 * i]) for i in range(workers)])
        return cls(authorities)


def _free_ports(count: int, host: str) -> list[int]:
    """``count`` distinct ports free right now (each held open until all are chosen)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(family)) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
