"""Run one authority: its primary and workers in one process and one event loop.

How it works: :meth:`AuthorityRunner.run` first binds every listening socket the chosen
roles need (so a port in use is one clear :class:`ConfigError` before anything starts),
then opens one :class:`~narwhal.store.Store` per role under the store folder
(``primary.db``, ``worker-<i>.db``), builds the roles, starts the workers and then the
primary, and writes a status file every ``status_interval`` seconds until ``stop`` is set.
On the way out, whatever happened, it stops the started roles in reverse order (each
within :data:`STOP_TIMEOUT`), closes the stores and writes a last status with
``"stopped": true``.

The status file (``status.json`` for ``role="all"``, ``status-primary.json`` or
``status-worker-<i>.json`` for a single role, so separate role processes can share a
folder) holds::

    {"time": <unix seconds>, "pid": ..., "authority": "<hex>", "role": "all",
     "started": <unix seconds>, "stopped": false, "last_error": {...} | null,
     "primary": <Primary.status()>, "workers": {"0": <Worker.status()>, ...}}

The roles are used only through ``Role(keys, committee, parameters, [worker_id,] store)``,
``await start(**sockets)``, ``await stop()`` and ``status() -> dict``; the classes are
named in :data:`ROLE_CLASSES` and imported when first needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from narwhal.admin import start_admin
from narwhal.config import Committee, ConfigError, Parameters, parse_address
from narwhal.crypto import AuthorityKeys
from narwhal.node.status import LastError, write_status
from narwhal.node.watchdog import LoopWatchdog
from narwhal.store import Store

__all__ = ["ROLES", "ROLE_CLASSES", "AuthorityRunner", "bind_listener", "status_file_name"]

log = logging.getLogger(__name__)

ROLES = ("all", "primary", "worker")
#: ``module:Class`` of each role (tests point these at stand-ins).
ROLE_CLASSES = {"primary": "narwhal.primary.primary:Primary",
                "worker": "narwhal.worker.worker:Worker"}
#: How long one role may take to stop before the runner gives up on it and moves on.
STOP_TIMEOUT = 10.0
#: Seconds between two status files.
STATUS_INTERVAL = 1.0


def role_class(role: str) -> Any:
    module, _, name = ROLE_CLASSES[role].partition(":")
    return getattr(importlib.import_module(module), name)


def status_file_name(role: str, worker_id: int | None = None) -> str:
    if role == "all":
        return "status.json"
    return "status-primary.json" if role == "primary" else f"status-worker-{worker_id}.json"


def bind_listener(address: str, what: str) -> socket.socket:
    """A TCP socket bound to the committee ``address`` (host:port), not yet listening.

    A host that is not an address of this machine (a public address behind NAT) falls back
    to every interface on that port. A port in use is a ConfigError naming ``what``."""
    host, port = parse_address(address)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    except OSError as exc:
        sock.close()
        reason = "port already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(f"{what} {address}: cannot listen: {reason}") from exc
    return sock


@attrs.define
class _Role:
    """One role to run: how to build it, its store file and its listening sockets."""

    name: str  # "primary" or "worker-<i>"
    kind: str  # "primary" or "worker"
    worker_id: int | None
    sockets: dict[str, socket.socket]
    store: Store | None = None
    instance: Any = None
    started: bool = False


class AuthorityRunner:
    """Runs the roles of one authority (see the module docstring)."""

    def __init__(self, keys: AuthorityKeys, committee: Committee, parameters: Parameters,
                 store_dir: Path, *, role: str = "all", worker_id: int | None = None,
                 last_error: LastError | None = None,
                 status_interval: float = STATUS_INTERVAL,
                 dial_overrides: Mapping[tuple[str, int], tuple[str, int]] | None = None) -> None:
        if role not in ROLES:
            raise ConfigError(f"role: must be one of {ROLES}, got {role!r}")
        committee.check_keys(keys.public())
        if role == "worker" and worker_id not in committee.worker_ids:
            raise ConfigError(f"worker id: must be in 0..{len(committee.worker_ids) - 1} "
                              f"for this committee, got {worker_id}")
        self.keys, self.committee, self.parameters = keys, committee, parameters
        self.store_dir = store_dir
        self.role, self.worker_id = role, worker_id
        self.status_path = store_dir / status_file_name(role, worker_id)
        self.last_error = last_error
        self.status_interval = status_interval
        #: Where this node dials peers instead of their committee address (``--dial-map``).
        self.dial_overrides = dict(dial_overrides or {})
        self.started_at = time.time()
        self._roles: list[_Role] = []
        self.watchdog = LoopWatchdog()

    def _plan(self) -> list[_Role]:
        """Bind the sockets of every role to run: workers first, then the primary."""
        me = self.committee.authorities[self.keys.name]
        ids = {"all": list(self.committee.worker_ids), "primary": [],
               "worker": [self.worker_id or 0]}[self.role]
        roles: list[_Role] = []
        try:
            for i in ids:
                info = me.workers[i]
                roles.append(_Role(f"worker-{i}", "worker", i, {}))
                roles[-1].sockets = {
                    "worker_sock": bind_listener(info.worker_address, f"worker {i} address"),
                    "transactions_sock": bind_listener(info.transactions_address,
                                                       f"worker {i} transactions address")}
            if self.role in ("all", "primary"):
                roles.append(_Role("primary", "primary", None, {}))
                roles[-1].sockets = {
                    "primary_sock": bind_listener(me.primary.address, "primary address"),
                    "client_sock": bind_listener(me.primary.client_address,
                                                 "primary client address")}
        except BaseException:
            _close_sockets(roles)
            raise
        return roles

    async def run(self, stop: asyncio.Event) -> bool:
        """Start the roles, report status until ``stop`` is set, stop them.

        Returns True when every role stopped cleanly. Raises ConfigError (before anything
        started) for a port in use, StoreError for a store that cannot be opened."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._roles = self._plan()
        admin = None
        self.watchdog.start()
        try:
            for role in self._roles:
                await self._start(role)
            if self.role != "worker":  # the admin endpoint: /metrics and /status (peer_top)
                admin = await start_admin(
                    self.committee.authorities[self.keys.name].primary.admin_address, self.status)
            log.info("authority %s running: %s", self.keys.name.hex()[:8],
                     ", ".join(r.name for r in self._roles))
            while not stop.is_set():
                await self.write_status_off_loop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.status_interval)
            log.info("stopping")
        finally:
            if admin is not None:
                await admin.stop()
            clean = await self._stop_all()
            self.watchdog.stop()
            self.write_status(stopped=True)
        return clean

    async def _start(self, role: _Role) -> None:
        filename = "primary.db" if role.kind == "primary" else f"worker-{role.worker_id}.db"
        sync = self.parameters.store_sync
        role.store = Store.open(self.store_dir / filename, synchronous="FULL" if sync == "full" else "NORMAL",
                                fsync_durable=sync != "process",
                                segment_bytes=self.parameters.store_segment_bytes)
        args = (self.keys, self.committee, self.parameters)
        cls = role_class(role.kind)
        extra = {"dial_overrides": self.dial_overrides} if self.dial_overrides else {}
        role.instance = (cls(*args, role.store, **extra) if role.kind == "primary"
                         else cls(*args, role.worker_id, role.store, **extra))
        await role.instance.start(**role.sockets)
        role.started = True
        log.info("%s started", role.name)

    async def _stop_all(self) -> bool:
        clean = True
        for role in reversed(self._roles):
            if role.started:
                try:
                    await asyncio.wait_for(role.instance.stop(), STOP_TIMEOUT)
                    log.info("%s stopped", role.name)
                except Exception:
                    clean = False
                    log.exception("%s did not stop cleanly", role.name)
            if role.store is not None:
                try:
                    await role.store.close()
                except Exception:
                    clean = False
                    log.exception("closing the store of %s failed", role.name)
        _close_sockets(self._roles)  # those of roles that never started
        return clean

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "pid": os.getpid(), "authority": self.keys.name.hex(), "role": self.role,
            "started": self.started_at, "stopped": False,
            "last_error": self.last_error.as_json() if self.last_error else None,
            **self.watchdog.status(), "workers": {}}
        for role in self._roles:
            if not role.started:
                continue
            try:
                state = role.instance.status()
            except Exception as exc:
                log.exception("%s: status() failed", role.name)
                state = {"error": repr(exc)}
            if role.kind == "primary":
                document["primary"] = state
            else:
                document["workers"][str(role.worker_id)] = state
        return document

    async def write_status_off_loop(self) -> None:
        """The status is taken on the loop, the file written by a thread: a rename can wait
        on the filesystem's journal for hundreds of ms while the disk is busy."""
        await asyncio.to_thread(self._write, {**self.status(), "stopped": False})

    def write_status(self, *, stopped: bool = False) -> None:
        self._write({**self.status(), "stopped": stopped})

    def _write(self, document: dict[str, Any]) -> None:
        try:
            write_status(self.status_path, document)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.status_path, exc)


def _close_sockets(roles: list[_Role]) -> None:
    for role in roles:
        for sock in role.sockets.values():
            if not role.started:
                sock.close()
