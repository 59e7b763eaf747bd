"""Child processes: stopped in order, killed when deaf to SIGTERM, never orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from narwhal.node.processes import ProcessGroup, Terminated, terminate_on_signal

from .helpers import alive, child_env, wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
DEAF = [sys.executable, "-c", ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                               " print('ready', flush=True); time.sleep(60)")]


def test_stop_terminates_then_kills_what_ignores_sigterm(tmp_path):
    group = ProcessGroup(grace=1.0)
    polite = group.start("polite", SLEEPER, tmp_path / "polite.log")
    deaf = group.start("deaf", DEAF, tmp_path / "deaf.log")
    wait_for(lambda: b"ready" in (tmp_path / "deaf.log").read_bytes(), 10, "the deaf child")
    started = time.monotonic()
    codes = group.stop()
    assert codes == {"polite": -signal.SIGTERM, "deaf": -signal.SIGKILL}
    assert 0.9 < time.monotonic() - started < 5
    assert not alive(polite.process.pid) and not alive(deaf.process.pid)


def test_leaving_the_block_by_an_exception_stops_every_child(tmp_path):
    with pytest.raises(RuntimeError), ProcessGroup() as group:
        child = group.start("sleeper", SLEEPER, tmp_path / "s.log")
        raise RuntimeError("the parent failed")
    assert child.returncode == -signal.SIGTERM and not alive(child.process.pid)


def test_sigterm_to_the_parent_becomes_an_exception(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), terminate_on_signal():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_children_die_with_a_parent_killed_by_sigkill(tmp_path):
    parent_code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from narwhal.node.processes import ProcessGroup
        group = ProcessGroup()
        child = group.start("sleeper", {SLEEPER!r}, Path({str(tmp_path / 'c.log')!r}))
        print(child.process.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE,
                              env=child_env())
    try:
        child_pid = int(parent.stdout.readline())
        assert alive(child_pid)
        parent.kill()
        parent.wait()
        wait_for(lambda: not alive(child_pid), 5, "the orphan to die")
    finally:
        parent.kill()
        parent.wait()
