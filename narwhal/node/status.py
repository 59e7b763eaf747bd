"""Status files: how a running node (or load client) is observed from outside.

A process writes its state as one JSON document, replacing the file atomically (temp file
in the same folder, then ``os.replace``), so a reader never sees half a document. There is
no fsync: the file is for observation, not recovery. Readers (``testnet``, tests) use
:func:`read_status`, which answers ``None`` for a file that does not exist yet or cannot
be parsed, instead of raising.

:class:`LastError` is a logging handler that remembers the latest WARNING-or-worse record,
so a status file can show what went wrong last without anyone reading the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["LastError", "read_status", "write_status"]

log = logging.getLogger(__name__)


def write_status(path: Path, document: dict[str, Any]) -> None:
    """Replace ``path`` with ``document`` as JSON (plus a ``time`` field), atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"time": time.time(), **document}, f, default=_jsonable)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_status(path: Path) -> dict[str, Any] | None:
    """The document at ``path``, or None if it is missing or not a JSON object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _jsonable(value: object) -> Any:
    """Fallback for values a role's ``status()`` may contain: bytes as hex, sets as lists."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


class LastError(logging.Handler):
    """Remembers the most recent WARNING-or-worse log record (message and time)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message: str | None = None
        self.at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.message = f"{record.levelname} {record.name}: {record.getMessage()}"
        except (TypeError, ValueError):  # a bad format string must not break logging
            self.message = f"{record.levelname} {record.name}: {record.msg!r}"
        self.at = record.created

    def as_json(self) -> dict[str, Any] | None:
        return None if self.message is None else {"message": self.message, "time": self.at}
