"""An append-only file of large values, addressed by locators (key-value separation).

Why it exists: see :mod:`narwhal.store` ("Large values are written once"). The store keeps
the index (key -> locator) in sqlite and the values here, so a 500 KB batch crosses the
disk once instead of twice (sqlite's WAL, then its checkpoint).

A value is written at the end of the file; its *locator* is ``offset || length || crc32``
(16 bytes, big-endian, :data:`LOCATOR`). Reading checks the length and the CRC, so a value
that did not survive (a power loss before the bytes reached the disk, a truncated or
damaged file) is reported as :class:`CorruptValue`, never returned wrong.

Writeback starts as the log grows: every :data:`WRITEBACK_CHUNK` appended bytes are handed
to the disk at once (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, asynchronous, Linux)
instead of waiting as dirty pages for the kernel's flusher. Why: left alone, tens of MB/s
of dirty log pages are written back in bursts of seconds' worth, and on ext4 a journal
commit waits for such data; every process appending to any file (a log line, a status
file) then blocks. With the writeback streaming, the bursts never form.

Threads: :meth:`append` and :meth:`sync` belong to one writer thread; :meth:`read` may run
on any thread at the same time (``pread`` does not move a shared file position, and a
locator is only handed out after its bytes were written).
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

__all__ = ["LOCATOR", "CorruptValue", "ValueLog"]

#: offset (u64), length (u32), CRC-32 of the value (u32).
LOCATOR = struct.Struct(">QII")
#: Appended bytes handed to the disk at a time (see the module docstring).
WRITEBACK_CHUNK = 4 << 20
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Any:
    if sys.platform != "linux":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


class CorruptValue(Exception):
    """A locator that does not match the log: the value is missing or damaged."""


class ValueLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        #: Where the next value goes. Bytes past the last committed locator (a crash
        #: between writing a value and committing its locator) are garbage, never read.
        self.end = os.fstat(self._fd).st_size
        self._written_back = self.end  # writeback started for everything before this

    def append(self, value: bytes | bytearray | memoryview) -> bytes:
        """Write ``value`` at the end; return its locator (the bytes are in the OS, not yet
        necessarily on the disk: :meth:`sync` for that)."""
        view = memoryview(value).cast("B")
        offset = self.end
        written = 0
        while written < len(view):  # a regular file rarely writes short, but it may
            written += os.pwrite(self._fd, view[written:], offset + written)
        self.end = offset + written
        if self.end - self._written_back >= WRITEBACK_CHUNK:
            self._start_writeback()
        return LOCATOR.pack(offset, len(view), zlib.crc32(view))

    def _start_writeback(self) -> None:
        if _sync_file_range is not None:  # a failure only means the kernel flushes later
            _sync_file_range(self._fd, self._written_back, self.end - self._written_back,
                             _SYNC_FILE_RANGE_WRITE)
        self._written_back = self.end

    def sync(self) -> None:
        """Make every appended value durable (``fdatasync``)."""
        os.fdatasync(self._fd)

    def read(self, locator: bytes) -> bytes:
        """The value at ``locator``; :class:`CorruptValue` if it is not intact."""
        if len(locator) != LOCATOR.size:
            raise CorruptValue(f"bad locator of {len(locator)} bytes")
        offset, length, crc = LOCATOR.unpack(locator)
        value = os.pread(self._fd, length, offset)
        if len(value) != length:
            raise CorruptValue(f"value log {self.path.name} ends before {offset + length} "
                               f"(at {offset + len(value)})")
        if zlib.crc32(value) != crc:
            raise CorruptValue(f"value at {offset} in {self.path.name} fails its CRC")
        return value

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
