"""Where peer_top looks and how it fetches: ``/status`` of one or more admin endpoints."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import attrs

from narwhal.config import Committee

__all__ = ["Sample", "Target", "fetch", "testnet_targets"]

#: Seconds one fetch may take before the node counts as unreachable.
FETCH_TIMEOUT = 2.0
#: The admin endpoint is local: never go through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@attrs.frozen
class Target:
    """One node: a label for the table and its admin endpoint ``host:port``."""

    label: str
    admin: str


@attrs.frozen
class Sample:
    """One fetch: the status document, or why there is none."""

    target: Target
    time: float
    status: dict[str, Any] | None = None
    error: str | None = None


def fetch(target: Target, timeout: float = FETCH_TIMEOUT) -> Sample:
    """GET ``/status`` of ``target`` (blocking; the app runs it in a thread)."""
    now = time.monotonic()
    try:
        with _OPENER.open(f"http://{target.admin}/status", timeout=timeout) as reply:
            return Sample(target, now, json.loads(reply.read()))
    except (OSError, ValueError) as exc:
        return Sample(target, now, error=str(getattr(exc, "reason", None) or exc))


def testnet_targets(directory: Path) -> list[Target]:
    """Every node of a testnet folder: admin addresses from ``committee.json``, labels
    ``node-<i>`` from ``keys/node-<i>.json`` when present (else a short key)."""
    committee = Committee.load(directory / "committee.json")
    labels = {}
    for path in sorted((directory / "keys").glob("node-*.json")):
        try:
            labels[bytes.fromhex(json.loads(path.read_text())["authority"]["public"])] = path.stem
        except (OSError, ValueError, KeyError, TypeError):
            continue
    targets = [Target(labels.get(name, name.hex()[:8]), authority.primary.admin_address)
               for name, authority in committee.authorities.items()
               if authority.primary.admin_address]
    return sorted(targets, key=lambda t: (len(t.label), t.label))
