"""Key, committee and parameter files: what ``keys generate`` and ``committee new`` write.

A local network lives in one folder (:func:`create_local`)::

    DIR/keys/node-0.json ... node-{N-1}.json   secret keys, mode 0600, in key order
    DIR/committee.json                         every authority on 127.0.0.1
    DIR/parameters.json                        the defaults plus any overrides

Nothing here overwrites an existing file unless asked to (``force``): a key file is a
secret that cannot be recreated.

``keys/node-i.json`` holds the ``i``-th authority in key order
(``committee.authorities_sorted()[i]``), so one index names the same authority everywhere:
the ``node-i`` folder and label of ``testnet``, ``--node i``/``--worker i`` of the client
and the committee's own order (leaders, ports).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import attrs

from narwhal.config import AuthorityPublicKeys, Committee, ConfigError, Parameters
from narwhal.crypto import AuthorityKeys

__all__ = ["LocalNetwork", "committee_from_keys", "create_local", "generate_keys",
           "parameters_with", "parse_overrides", "write_keys"]

log = logging.getLogger(__name__)

def ports_per_authority(workers: int) -> int:
    """Ports :meth:`Committee.local` gives one authority: primary, client and admin, then
    for each worker its worker-to-worker and transactions ports."""
    return 3 + 2 * workers


def refuse_overwrite(paths: list[Path], force: bool) -> None:
    """ConfigError naming the first of ``paths`` that exists, unless ``force``."""
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]}: already exists (use --force to overwrite)")


def generate_keys(path: Path, workers: int, *, force: bool = False) -> AuthorityKeys:
    """Write a fresh key file for an authority with ``workers`` workers."""
    if workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    keys = AuthorityKeys.generate(workers)
    write_keys(path, keys, force=force)
    return keys


def write_keys(path: Path, keys: AuthorityKeys, *, force: bool = False) -> None:
    """Write ``keys`` to the key file ``path`` (mode 0600), refusing to replace an existing
    file unless ``force``."""
    refuse_overwrite([path], force)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys.save(path)


def committee_from_keys(keys: list[AuthorityPublicKeys], *, hosts: list[str], base_port: int,
                        workers: int | None = None) -> Committee:
    """A stake-1 committee: authority ``i`` on ``hosts[i]`` (or the one host given for all),
    with ports ``base_port + i * ports_per_authority(W)`` onwards (distinct even when hosts
    are shared). ``workers`` defaults to the fewest worker keys any key file holds."""
    if not keys:
        raise ConfigError("keys: need at least one key file")
    if len(hosts) not in (1, len(keys)):
        raise ConfigError(f"hosts: give one host for all or one per key file ({len(keys)}), "
                          f"got {len(hosts)}")
    count = min(len(k.workers) for k in keys) if workers is None else workers
    per = ports_per_authority(count)
    authorities = {}
    for i, public in enumerate(keys):
        if public.name in authorities:
            raise ConfigError(f"keys: authority {public.name.hex()} is listed twice")
        host = hosts[i] if len(hosts) > 1 else hosts[0]
        one = Committee.local([public], count, base_port + i * per, host)
        authorities[public.name] = one.authorities[public.name]
    return Committee(authorities)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["max_header_delay=0.05", "consensus=tusk"]`` -> a dict; values are JSON when they
    parse as JSON, strings otherwise."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected NAME=VALUE")
        try:
            result[key] = json.loads(text)
        except ValueError:
            result[key] = text
    return result


def parameters_with(overrides: dict[str, Any], base: Parameters | None = None) -> Parameters:
    """``base`` (default: the defaults) with ``overrides`` applied, validated."""
    document = {**(base or Parameters()).to_json(), **overrides}
    try:
        return Parameters.from_json(document)
    except TypeError as exc:  # e.g. a nested field given as a scalar
        raise ConfigError(f"parameters: {exc}") from exc


@attrs.frozen
class LocalNetwork:
    """The files of a local network created by :func:`create_local`."""

    directory: Path
    key_files: tuple[Path, ...]
    committee_file: Path
    parameters_file: Path
    committee: Committee
    parameters: Parameters

    def node_dir(self, index: int) -> Path:
        """Where node ``index`` keeps its stores, status and logs (testnet's layout)."""
        return self.directory / f"node-{index}"


def create_local(directory: Path, nodes: int, workers: int, *,
                 parameters: Parameters | None = None, base_port: int | None = None,
                 force: bool = False) -> LocalNetwork:
    """Keys, committee and parameters for ``nodes`` authorities on 127.0.0.1 in ``directory``.

    ``base_port`` None lets the kernel pick free ports (see :meth:`Committee.local`). The
    keys are generated first and written sorted by authority key, so ``keys/node-i.json``
    is ``committee.authorities_sorted()[i]`` (see the module docstring)."""
    if nodes < 1 or workers < 1:
        raise ConfigError(f"need nodes >= 1 and workers >= 1, got {nodes} and {workers}")
    key_files = tuple(directory / "keys" / f"node-{i}.json" for i in range(nodes))
    committee_file, parameters_file = directory / "committee.json", directory / "parameters.json"
    refuse_overwrite([*key_files, committee_file, parameters_file], force)
    keys = sorted((AuthorityKeys.generate(workers) for _ in key_files), key=lambda k: k.name)
    for path, authority in zip(key_files, keys, strict=True):
        write_keys(path, authority, force=force)
    committee = Committee.local([k.public() for k in keys], workers, base_port)
    parameters = parameters or Parameters()
    committee.save(committee_file)
    parameters.save(parameters_file)
    log.info("local network of %d authorities x %d workers in %s", nodes, workers, directory)
    return LocalNetwork(directory, key_files, committee_file, parameters_file, committee,
                        parameters)
