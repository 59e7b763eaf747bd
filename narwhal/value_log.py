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

**Segments.** The log is a series of files of about :data:`DEFAULT_SEGMENT_BYTES`; values
go to the newest. Space comes back by dropping old segments whole once the store deleted
every row pointing into them (:meth:`Store.prune_values`): no compaction, no rewriting.

Threads: :meth:`append`, :meth:`sync`, :meth:`truncate` and :meth:`drop_before` belong to
one writer thread; :meth:`read` may run on any thread at the same time (``pread`` does not
move a shared file position, and a locator is only handed out after its bytes were
written). A read racing with the drop of its segment fails its CRC or finds no segment:
it reads as missing, as the store had already deleted its row.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_SEGMENT_BYTES", "LOCATOR", "SEGMENT_SHIFT", "CorruptValue", "Segment", "ValueLog"]

#: offset (u64), length (u32), CRC-32 of the value (u32).
LOCATOR = struct.Struct(">QII")
#: Appended bytes handed to the disk at a time (see the module docstring).
WRITEBACK_CHUNK = 4 << 20
_SYNC_FILE_RANGE_WRITE = 2
#: A segment is closed for appends once it reaches this size; old segments are dropped
#: whole (retention), so this is the granularity at which disk space comes back.
DEFAULT_SEGMENT_BYTES = 256 << 20
#: Bits of a global offset that address a byte inside its segment (1 TiB per segment).
SEGMENT_SHIFT = 40
_LOCAL_MASK = (1 << SEGMENT_SHIFT) - 1
_SEGMENT_SUFFIX = re.compile(r"[0-9]{6}")


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


@dataclasses.dataclass
class Segment:
    """One file of the log: values are only ever appended to the newest segment."""

    number: int
    path: Path
    fd: int
    size: int
    #: Wall-clock time of the last append (its file's mtime after a restart).
    last_write: float

    @property
    def start(self) -> int:
        """The global offset of this segment's first byte."""
        return self.number << SEGMENT_SHIFT


class ValueLog:
    """The log: segments ``<path>`` (number 0), ``<path>.000001``, ... . A global offset is
    ``segment number << SEGMENT_SHIFT | offset in the segment``, so locators keep their
    16-byte layout, compare (as big-endian bytes) in the order values were written, and a
    log written before segments existed is segment 0 as it is."""

    def __init__(self, path: Path, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.path = path
        self.segment_bytes = segment_bytes
        self.segments: dict[int, Segment] = {}
        numbers = sorted(int(p.name.rsplit(".", 1)[1]) for p in path.parent.glob(f"{path.name}.*")
                         if _SEGMENT_SUFFIX.fullmatch(p.name.rsplit(".", 1)[1]))
        for number in ([0] if path.exists() or not numbers else []) + numbers:
            self._open_segment(number)
        self._active = self.segments[max(self.segments)]
        self._written_back = self._active.size  # writeback started for everything before this
        self._unsynced: set[int] = set()  # segments appended to since the last sync()

    def _segment_path(self, number: int) -> Path:
        return self.path if number == 0 else self.path.with_name(f"{self.path.name}.{number:06d}")

    def _open_segment(self, number: int) -> Segment:
        path = self._segment_path(number)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        st = os.fstat(fd)
        segment = Segment(number, path, fd, st.st_size, st.st_mtime)
        self.segments[number] = segment
        return segment

    @property
    def end(self) -> int:
        """The global offset where the next value goes. Bytes past the last committed
        locator (a crash between writing a value and committing its locator) are garbage,
        never read (and truncated at the store's next open)."""
        return self._active.start + self._active.size

    def closed_segments(self) -> list[Segment]:
        """The segments no longer written to, oldest first (writer thread)."""
        return [self.segments[n] for n in sorted(self.segments) if self.segments[n] is not self._active]

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.segments.values())

    def append(self, value: bytes | bytearray | memoryview) -> bytes:
        """Write ``value`` at the end; return its locator (the bytes are in the OS, not yet
        necessarily on the disk: :meth:`sync` for that)."""
        view = memoryview(value).cast("B")
        if self._active.size >= self.segment_bytes:
            self._roll()
        segment = self._active
        offset = segment.size
        written = 0
        while written < len(view):  # a regular file rarely writes short, but it may
            written += os.pwrite(segment.fd, view[written:], offset + written)
        segment.size = offset + written
        segment.last_write = time.time()
        self._unsynced.add(segment.number)
        if segment.size - self._written_back >= WRITEBACK_CHUNK:
            self._start_writeback()
        return LOCATOR.pack(segment.start + offset, len(view), zlib.crc32(view))

    def _roll(self) -> None:
        """Start a new segment (the old one is complete: it is only read from now on)."""
        self._start_writeback()
        self._active = self._open_segment(self._active.number + 1)
        self._written_back = 0

    def _start_writeback(self) -> None:
        segment = self._active
        if _sync_file_range is not None and segment.size > self._written_back:
            # a failure only means the kernel flushes later
            _sync_file_range(segment.fd, self._written_back, segment.size - self._written_back,
                             _SYNC_FILE_RANGE_WRITE)
        self._written_back = segment.size

    def sync(self) -> None:
        """Make every appended value durable (``fdatasync`` of each segment written to)."""
        for number in sorted(self._unsynced):
            if number in self.segments:
                os.fdatasync(self.segments[number].fd)
        self._unsynced.clear()

    def locate(self, locator: bytes) -> tuple[int, int]:
        """``(offset, end)``, global, of the bytes ``locator`` points at."""
        offset, length, _ = LOCATOR.unpack(locator)
        return offset, offset + length

    def read(self, locator: bytes) -> bytes:
        """The value at ``locator``; :class:`CorruptValue` if it is not intact (or its
        segment was dropped)."""
        if len(locator) != LOCATOR.size:
            raise CorruptValue(f"bad locator of {len(locator)} bytes")
        offset, length, crc = LOCATOR.unpack(locator)
        segment = self.segments.get(offset >> SEGMENT_SHIFT)
        if segment is None:
            raise CorruptValue(f"value at {offset}: segment {offset >> SEGMENT_SHIFT} was dropped")
        local = offset & _LOCAL_MASK
        value = os.pread(segment.fd, length, local)
        if len(value) != length:
            raise CorruptValue(f"value log {segment.path.name} ends before {local + length} "
                               f"(at {local + len(value)})")
        if zlib.crc32(value) != crc:
            raise CorruptValue(f"value at {local} in {segment.path.name} fails its CRC")
        return value

    def truncate(self, end: int) -> int:
        """Drop every byte of the newest segment from global offset ``end`` on (at open
        only: garbage past the last committed value, e.g. an append cut short by a
        crash), durably. ``end`` below the newest segment's start empties it. Returns the
        bytes dropped."""
        segment = self._active
        local = max(0, end - segment.start)
        dropped = segment.size - local
        os.ftruncate(segment.fd, local)
        os.fsync(segment.fd)
        segment.size = self._written_back = local
        return dropped

    def drop_before(self, number: int) -> int:
        """Delete the segments numbered below ``number`` (never the one being written);
        returns the bytes freed. The caller deleted every locator into them first."""
        freed = 0
        for segment in [s for n, s in self.segments.items() if n < number and s is not self._active]:
            del self.segments[segment.number]
            os.close(segment.fd)
            segment.path.unlink(missing_ok=True)
            freed += segment.size
        return freed

    def close(self) -> None:
        for segment in self.segments.values():
            if segment.fd >= 0:
                os.close(segment.fd)
                segment.fd = -1
