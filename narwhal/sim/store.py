"""An in-memory store with :class:`narwhal.store.Store`'s interface, for simulated nodes.

A simulated crash keeps it (what was written is durable), a restart opens a new node on
it: the same thing a real node does with its sqlite store after ``kill -9``. Writes are
atomic, like the real store's batches. It has no reader connections, so the node's
serving reads run inline (no threads: a simulation stays on one thread).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

__all__ = ["MemoryStore"]

Op = tuple[str, bytes, bytes | None]


class MemoryStore:
    """The Store's interface over dicts; ``log`` records every write, in order."""

    def __init__(self) -> None:
        self.families: dict[str, dict[bytes, bytes]] = defaultdict(dict)
        self.log: list[tuple[str, bytes]] = []

    async def write(self, ops: Iterable[Op], durable: bool = False) -> None:
        for family, key, value in ops:
            self.log.append((family, key))
            if value is None:
                self.families[family].pop(bytes(key), None)
            else:
                self.families[family][bytes(key)] = bytes(value)

    async def delete(self, family: str, key: bytes) -> None:
        await self.write([(family, key, None)])

    def get(self, family: str, key: bytes) -> bytes | None:
        return self.families[family].get(bytes(key))

    def contains(self, family: str, key: bytes) -> bool:
        return bytes(key) in self.families[family]

    def get_many(self, family: str, keys: Iterable[bytes]) -> list[bytes | None]:
        return [self.get(family, k) for k in keys]

    def items(self, family: str, start: bytes | None = None, end: bytes | None = None,
              limit: int | None = None, reverse: bool = False) -> list[tuple[bytes, bytes]]:
        rows = sorted((k, v) for k, v in self.families[family].items()
                      if (start is None or k >= start) and (end is None or k < end))
        if reverse:
            rows.reverse()
        return rows[:limit] if limit is not None else rows

    def keys(self, family: str, start: bytes | None = None, end: bytes | None = None,
             limit: int | None = None, reverse: bool = False) -> list[bytes]:
        return [k for k, _ in self.items(family, start, end, limit, reverse)]
