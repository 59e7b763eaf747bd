"""Shared by the node tests: fast parameters, local networks, process checks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from narwhal.config import Parameters
from narwhal.node.files import LocalNetwork, create_local

REPO = Path(__file__).resolve().parents[2]
#: Small delays and batches, so a local network advances many rounds per second.
FAST_PARAMETERS = Parameters(max_header_delay=0.05, batch_size=20_000, max_batch_delay=0.05)


def local_network(directory: Path, nodes: int = 4, workers: int = 1) -> LocalNetwork:
    return create_local(directory, nodes, workers, parameters=FAST_PARAMETERS)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, reaped or not, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def child_env() -> dict[str, str]:
    """The environment for child processes: this checkout importable from anywhere."""
    return {**os.environ, "PYTHONPATH": str(REPO)}
