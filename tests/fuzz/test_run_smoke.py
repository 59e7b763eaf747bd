"""CI smoke of the fuzz runner (``run.py``): every target runs 2 s and finds nothing.

The long runs happen outside CI (README.md); this only keeps the runner and the targets
working. Subprocesses: the builtin engine traces with ``sys.settrace`` and times inputs out
with SIGALRM, which must not meet pytest-timeout's alarm or a coverage tracer in-process.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.run import NAMES, ROOT
from tests.fuzz.targets import TARGETS


def run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.fuzz.run", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_every_target_is_runnable() -> None:
    assert sorted(NAMES) == sorted(TARGETS)


def test_builtin_engine_runs_every_target_for_2_seconds(tmp_path: Path) -> None:
    result = run("--target", "all", "--seconds", "2", "--engine", "builtin", "--seed", "1",
                 "--artifacts", str(tmp_path / "artifacts"), "--corpus", str(tmp_path / "c"))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in NAMES:
        assert f"builtin: {name}: " in result.stdout and "no finding" in result.stdout
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_engine_runs_a_target_for_2_seconds(tmp_path: Path) -> None:
    result = run("--target", "frames", "--seconds", "2", "--engine", "atheris",
                 "--artifacts", str(tmp_path / "artifacts"), "--corpus", str(tmp_path / "c"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Done" in result.stderr and not list((tmp_path / "artifacts").iterdir())


def test_a_finding_is_reported_and_written(tmp_path: Path) -> None:
    """A target that lets an untyped exception escape is a finding: exit 1, input saved."""
    crash = tmp_path / "input"
    crash.write_bytes(b"\x00")
    result = run("--target", "payload", "--reproduce", str(crash))
    assert result.returncode == 0 and "no finding" in result.stdout
    result = run("--target", "frames", "--seconds", "2", "--engine", "builtin", "--seed", "1",
                 "--artifacts", str(tmp_path / "artifacts"), "--inject-finding")
    assert result.returncode == 1 and "FINDING" in result.stdout
    assert len(list((tmp_path / "artifacts").iterdir())) == 1
