"""``narwhal run --dial-map FILE``: dial some peers at another address than the committee's.

Why: every node reads one committee file, and its hash is the network id bound into every
handshake (``wire_spec.md`` §3.2), so a node cannot be given different peer addresses
through the committee. A relay between two validators (the link emulator of
:mod:`narwhal.testing.links`, a tunnel, a proxy) needs one node to open its TCP connection to
the relay instead. The dial map is node-local: it changes where *this* node dials, never who
the peer is (the Noise handshake still checks the peer's static key), what the committee
says, or the network id.

The file is one JSON object, committee address -> address to dial::

    {"127.0.0.1:4000": "127.0.0.1:9000", "127.0.0.1:4003": "127.0.0.1:9001"}

Every key must be a validator-to-validator address of the committee (a primary's
``address`` or a worker's ``worker_address``): a typo would otherwise silently change
nothing.
"""

from __future__ import annotations

from pathlib import Path

from narwhal.config import Committee, ConfigError, format_address, parse_address
from narwhal.config.json_files import load_json, save_json

__all__ = ["DialMap", "load_dial_map", "save_dial_map"]

DialMap = dict[tuple[str, int], tuple[str, int]]


def peer_addresses(committee: Committee) -> set[tuple[str, int]]:
    """Every address a validator dials: primaries' and workers' validator ports."""
    addresses = set()
    for authority in committee.authorities.values():
        addresses.add(parse_address(authority.primary.address))
        addresses.update(parse_address(w.worker_address) for w in authority.workers)
    return addresses


def load_dial_map(path: Path, committee: Committee) -> DialMap:
    """The map in ``path``, checked against ``committee`` (ConfigError naming the entry)."""
    known = peer_addresses(committee)

    def parse(document: object) -> DialMap:
        if not isinstance(document, dict):
            raise ConfigError("a dial map is a JSON object of 'host:port' -> 'host:port'")
        result: DialMap = {}
        for key, value in document.items():
            try:
                source, target = parse_address(key), parse_address(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{key!r}: {exc}") from None
            if source not in known:
                raise ConfigError(f"{key!r} is not a primary or worker address of the committee")
            result[source] = target
        return result
    return load_json(path, parse)


def save_dial_map(path: Path, dial_map: DialMap) -> None:
    save_json(path, {format_address(*k): format_address(*v) for k, v in sorted(dial_map.items())})
