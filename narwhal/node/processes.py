"""Child processes that never outlive their parent.

:class:`ProcessGroup` starts commands with their output in a log file, each in its own
session (so a Ctrl-C in the terminal reaches only the parent, which then stops the children
in order), and stops them all: SIGTERM, wait up to a grace period, then SIGKILL whatever is
left, and reap everything.

No orphans, in every case we can catch:

- the group is a context manager: leaving the ``with`` block, normally or by an exception,
  stops every child;
- :func:`terminate_on_signal` turns SIGTERM/SIGHUP to the parent into an exception, so the
  same ``finally`` runs;
- on Linux each child asks the kernel for SIGTERM when the parent dies
  (``PR_SET_PDEATHSIG``), which also covers a parent killed with SIGKILL.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Self

import attrs

__all__ = ["Child", "ProcessGroup", "terminate_on_signal"]

log = logging.getLogger(__name__)

#: Seconds children get between SIGTERM and SIGKILL.
DEFAULT_GRACE = 10.0
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # not glibc Linux: the context manager still stops them
        return None


#: Looked up once here, so the child only calls a function pointer between fork and exec.
_prctl: Any = _load_prctl() if sys.platform == "linux" else None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@attrs.define
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def returncode(self) -> int | None:
        return self.process.poll()


class ProcessGroup:
    """Start and stop a set of child processes (see the module docstring)."""

    def __init__(self, grace: float = DEFAULT_GRACE) -> None:
        self.grace = grace
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], log_path: Path, *,
              cwd: Path | None = None, env: dict[str, str] | None = None) -> Child:
        """Start ``argv`` with stdout and stderr appended to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=cwd, env=env, start_new_session=True,
                # Safe enough: it only calls prctl through a pointer resolved beforehand.
                preexec_fn=_die_with_parent if _prctl else None)  # noqa: PLW1509
        child = Child(name, process, log_path)
        self.children.append(child)
        log.info("started %s (pid %d), log %s", name, process.pid, log_path)
        return child

    def exited(self) -> list[Child]:
        """Children that have exited (on their own or not)."""
        return [c for c in self.children if c.returncode is not None]

    def stop(self, children: Sequence[Child] | None = None) -> dict[str, int]:
        """SIGTERM ``children`` (default: all), SIGKILL those still alive after the grace
        period, reap them; return each one's exit code (negative: killed by that signal)."""
        targets = list(self.children if children is None else children)
        for child in targets:
            _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for child in targets:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.0fs: killing it",
                            child.name, child.process.pid, self.grace)
                _signal(child, signal.SIGKILL)
                child.process.wait()
        return {c.name: c.process.returncode for c in targets}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _signal(child: Child, sig: signal.Signals) -> None:
    if child.process.poll() is None:
        try:
            child.process.send_signal(sig)
        except ProcessLookupError:
            pass


class Terminated(Exception):
    """The parent received SIGTERM or SIGHUP."""


@contextmanager
def terminate_on_signal() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (like Ctrl-C raises
    KeyboardInterrupt), so ``finally`` blocks and context managers run."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def python_module(module: str, *args: str) -> list[str]:
    """``[python, -m, module, *args]`` with this interpreter."""
    return [sys.executable, "-m", module, *args]

