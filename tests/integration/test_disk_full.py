"""A validator whose disk really fills up, under load, among three that go on: it refuses
transactions with a clear error, never serves a hole in its output, and catches up, votes
and commits again by itself once space returns; nothing any client was told was accepted
is lost, on any node.

Four validator processes over Noise on 127.0.0.1; the last one's store directory is a
real size-limited tmpfs this test mounts (it needs root and ``mount``: skipped with the
reason where either is missing). The disk is filled with a file until ``ENOSPC`` and kept
full for :data:`FULL_SECONDS` (:class:`Filler`), then the file is deleted, as an operator
freeing space would. :class:`~narwhal.testing.audit.AuditRun` follows every node's output from index 1
as it arrives: contiguous, agreed, and every acknowledged transaction served.

What this found (fixed): the full node never voted again after space returned (a failed
bulk page killed its certificate fetcher; certificates released from parking whose write
failed were dropped), and the batch its worker had sealed as the disk filled was dropped,
losing transactions already acknowledged.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import attrs
import pytest

from narwhal.node.files import create_local
from narwhal.node.processes import ProcessGroup, python_module
from narwhal.node.status import read_status
from narwhal.testing.audit import AuditRun
from tests.node.helpers import FAST_PARAMETERS, wait_for

#: The full node's store: small, so that filling it is quick.
TMPFS_SIZE = "64m"
#: Seconds every write of the full node fails (the others advance ~20 rounds a second).
FULL_SECONDS = 10.0
#: Seconds, from the space returning, within which it must commit where the others were.
RECOVERY_BOUND = 30.0
RATE_PER_NODE = 500  # tx/s to each validator's worker


def mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs root and mount(8) to make a size-limited tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")


class Filler:
    """Keeps a filesystem full, as another process filling the disk would: a file grows
    until ``ENOSPC`` and goes on taking whatever space is freed (the node deletes old
    segments, sqlite truncates its WAL) until :meth:`free` deletes it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "filler"
        self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed in free()
        self._stop = threading.Event()
        self._fill(1 << 20)  # full before the first check
        self._fill(4096)
        self._thread = threading.Thread(target=self._keep_full, daemon=True)
        self._thread.start()

    def _fill(self, chunk: int) -> None:
        zeros = bytes(chunk)
        try:
            while True:
                self._file.write(zeros)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise

    def _keep_full(self) -> None:
        while not self._stop.wait(0.02):
            self._fill(4096)

    def free(self) -> None:
        self._stop.set()
        self._thread.join()
        self._file.close()
        self.path.unlink()


@pytest.mark.parametrize("rate, full_seconds, tmpfs_size", [
    (RATE_PER_NODE, FULL_SECONDS, TMPFS_SIZE),
    # 10,000 tx/s in all, full for 20 s: the store must be large enough not to fill up
    # again by itself (it takes ~5 MB/s at this rate, and keeps at least the last minute)
    pytest.param(2500, 20.0, "768m", marks=pytest.mark.long),
])
def test_a_full_disk_stops_then_resumes_one_validator_with_no_hole_and_nothing_lost(
        tmp_path, rate, full_seconds, tmpfs_size):
    parameters = attrs.evolve(FAST_PARAMETERS, gc_depth=50)
    net = create_local(tmp_path, 4, 1, parameters=parameters)
    victim = 3
    victim_dir = net.node_dir(victim)
    mount_tmpfs(victim_dir, tmpfs_size)
    try:
        run_scenario(net, victim, tmp_path, rate, full_seconds)
    finally:
        subprocess.run(["umount", "-l", str(victim_dir)], check=False)


def primary(net, i: int) -> dict:
    return (read_status(net.node_dir(i) / "status.json") or {}).get("primary") or {}


def node_argv(net, i: int, log_file: Path) -> list[str]:
    return python_module("narwhal.node", "run", "--keys", str(net.key_files[i]),
                         "--committee", str(net.committee_file),
                         "--parameters", str(net.parameters_file),
                         "--store", str(net.node_dir(i)), "--log-file", str(log_file))


def run_scenario(net, victim: int, tmp_path: Path, rate: int, full_seconds: float) -> None:
    logs = {i: (net.node_dir(i) / "node.log" if i != victim else tmp_path / "victim.log")
            for i in range(4)}  # the victim's log is not on its full disk
    others = [i for i in range(4) if i != victim]
    with ProcessGroup(grace=15) as group:
        nodes = [group.start(f"node-{i}", node_argv(net, i, logs[i]), tmp_path / f"stdout-{i}.log")
                 for i in range(4)]
        wait_for(lambda: all(primary(net, i).get("round", 0) >= 3 for i in range(4)), 60,
                 "all primaries started")
        audit = AuditRun(group, net, tmp_path)

        def load(name: str, i: int, seconds: float):
            return group.start(name, python_module(
                "narwhal.client", "submit", "--committee", str(net.committee_file),
                "--worker", str(i), "--rate", str(rate), "--duration", str(seconds),
                *audit.client_options(name, i)), tmp_path / f"{name}.log")

        clients = [load(f"client-{i}", i, 30) for i in range(4)]
        wait_for(lambda: accepted(tmp_path / f"client-{victim}.json") >= 2 * rate, 30,
                 "the victim's worker accepting transactions")

        filler = Filler(net.node_dir(victim))
        at_full = min(primary(net, i).get("committed_round", 0) for i in others)
        time.sleep(full_seconds)
        # the others went on without it
        assert min(primary(net, i).get("committed_round", 0) for i in others) > at_full + 20
        log_text = logs[victim].read_text(errors="replace")
        assert "database or disk is full" in log_text or "No space left" in log_text, log_text[-3000:]
        # its client was told, clearly and for good, and stopped
        wait_for(lambda: clients[victim].returncode is not None, 10, "the victim's client to stop")
        assert "STORAGE_FAILED" in (tmp_path / f"client-{victim}.log").read_text()

        filler.free()  # the operator frees space: nothing else is done
        freed = time.monotonic()
        target = max(primary(net, i).get("committed_round", 0) for i in others)
        wait_for(lambda: primary(net, victim).get("committed_round", 0) >= target, RECOVERY_BOUND,
                 f"the victim committing round {target} again after space returned")
        recovered = time.monotonic() - freed
        # it takes transactions again, by itself
        clients.append(again := load(f"client-{victim}-again", victim, 5))
        wait_for(lambda: again.returncode is not None, 30, "the victim's new client")
        assert accepted(tmp_path / f"client-{victim}-again.json") >= 4 * rate

        # and its output stays contiguous across a restart (a clean stop, then run again)
        group.stop([nodes[victim]])
        nodes[victim] = group.start(f"node-{victim}-again", node_argv(net, victim, logs[victim]),
                                    tmp_path / f"stdout-{victim}-again.log")
        target = max(primary(net, i).get("committed_round", 0) for i in others)
        wait_for(lambda: (read_status(net.node_dir(victim) / "status.json") or {}).get("pid")
                 == nodes[victim].process.pid
                 and primary(net, victim).get("committed_round", 0) >= target, 60,
                 "the restarted victim committing again")

        verdict = audit.finish(range(4), clients, timeout=120)
        assert all(node.returncode is None for node in nodes), "a validator exited"
    assert verdict["audit_violations"] == [], verdict["audit_violations"]
    # no hole, agreement, and nothing acknowledged lost on any node, the full one's own
    # clients included (its disk filled; it was not killed)
    assert verdict["acked_lost"] == 0, verdict
    print(f"recovered in {recovered:.1f} s; {verdict['acked']:,} acknowledged, served "
          f"{verdict['audit_served']}")


def accepted(status_file: Path) -> int:
    return int((read_status(status_file) or {}).get("accepted", 0))
