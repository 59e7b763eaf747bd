"""Equivocation evidence: two conflicting signed messages of one authority, kept once.

An honest authority signs one header per round, and one vote per (header author, round).
Two *different* signed headers of one author for one round, or two signed votes of one
voter for different headers of one (author, round), prove that authority Byzantine to
anyone holding the committee: no trust in us is needed, only the two signatures. Counting
and logging them (what the core did before, issue 12 item 5) proves nothing to an
operator or to the other validators; this module keeps the proof:

- **Stored once**, in the store's ``evidence`` family (key: the equivocator, the round, the
  kind, and for votes the header author), both messages in their canonical encoding, so
  it survives restarts and ``narwhal evidence list`` can print and verify it offline.
  A third conflicting message for the same key adds nothing: the first two prove it.
- **Logged once** per key, at WARNING; the core's ``equivocation`` counter still counts
  every conflicting message it refuses.
- **Bounded**: at most :data:`MAX_PER_AUTHOR` pieces per equivocator and
  :data:`MAX_TOTAL` in all. A piece beyond them is counted (``not_stored``) and logged,
  never written: one piece already proves the author Byzantine, and a Byzantine author
  equivocating every round must not be able to fill our disk. The first pieces are kept
  (never replaced), so what we hold cannot be churned by the attacker either.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

import attrs
import cbor2

from narwhal import crypto, messages
from narwhal.errors import MessageError
from narwhal.messages import Header, Vote

__all__ = ["FAMILY", "HEADER", "LATEST", "MAX_PER_AUTHOR", "MAX_TOTAL", "VOTE", "Evidence",
           "EvidenceError", "EvidenceRecorder", "read_evidence", "verify"]

log = logging.getLogger(__name__)

#: The store family holding the evidence.
FAMILY = "evidence"
HEADER, VOTE = "header", "vote"
_KIND_BYTE = {HEADER: b"\x01", VOTE: b"\x02"}
_KIND_CLASS: dict[str, type[Header | Vote]] = {HEADER: Header, VOTE: Vote}
#: Pieces kept per equivocating authority; one is already a proof.
MAX_PER_AUTHOR = 16
#: Pieces kept in all (a committee of 64 authorities, each equivocating: 16 each).
MAX_TOTAL = 1_024
#: The most recent pieces shown in ``/status``.
LATEST = 5


class EvidenceError(ValueError):
    """A stored piece of evidence that does not decode."""


class Stakes(Protocol):
    def stake(self, name: bytes) -> int: ...


@attrs.frozen
class Evidence:
    """Two conflicting signed messages of ``author`` (the equivocator) for ``round``.

    ``first`` and ``second`` are the messages' canonical encodings, ordered by digest so
    the same pair makes the same record whichever arrived first. For votes, ``origin`` is
    the author of the headers voted for."""

    kind: str
    author: bytes
    round: int
    first: bytes
    second: bytes
    detected_at: float
    origin: bytes = b""

    @classmethod
    def of_headers(cls, a: Header, b: Header, now: float | None = None) -> Evidence:
        if (a.author, a.round) != (b.author, b.round) or a.digest() == b.digest():
            raise ValueError("not conflicting headers: same digest, author or round expected")
        first, second = sorted((a, b), key=Header.digest)
        return cls(HEADER, a.author, a.round, messages.encode(first), messages.encode(second),
                   time.time() if now is None else now)

    @classmethod
    def of_votes(cls, a: Vote, b: Vote, now: float | None = None) -> Evidence:
        if ((a.author, a.origin, a.round) != (b.author, b.origin, b.round)
                or a.header_digest == b.header_digest):
            raise ValueError("not conflicting votes: one voter, origin and round, two headers")
        first, second = sorted((a, b), key=lambda v: v.header_digest)
        return cls(VOTE, a.author, a.round, messages.encode(first), messages.encode(second),
                   time.time() if now is None else now, a.origin)

    def key(self) -> bytes:
        """Store key: equivocator, round (8 bytes, big-endian), kind, header author (votes)."""
        return self.author + self.round.to_bytes(8, "big") + _KIND_BYTE[self.kind] + self.origin

    def encode(self) -> bytes:
        return cbor2.dumps([self.kind, self.first, self.second, self.detected_at, self.origin],
                           canonical=True)

    @classmethod
    def decode(cls, key: bytes, value: bytes) -> Evidence:
        """A stored piece; :class:`EvidenceError` if it is not one."""
        try:
            kind, first, second, detected_at, origin = cbor2.loads(value)
            evidence = cls(kind, bytes(key[:32]), int.from_bytes(key[32:40], "big"), bytes(first),
                           bytes(second), float(detected_at), bytes(origin))
        except (ValueError, TypeError, cbor2.CBORDecodeError) as exc:
            raise EvidenceError(f"evidence {key.hex()[:24]}: {exc}") from exc
        if kind not in _KIND_BYTE or evidence.key() != key:
            raise EvidenceError(f"evidence {key.hex()[:24]}: key and value disagree")
        return evidence

    def messages(self) -> tuple[Any, Any]:
        """The two signed messages (:class:`Header` or :class:`Vote`)."""
        cls = _KIND_CLASS[self.kind]
        try:
            return messages.decode_as(cls, self.first), messages.decode_as(cls, self.second)
        except MessageError as exc:
            raise EvidenceError(f"evidence {self.key().hex()[:24]}: {exc}") from exc

    def digests(self) -> tuple[bytes, bytes]:
        """The two conflicting header digests (the headers, or the headers voted for)."""
        a, b = self.messages()
        if self.kind == HEADER:
            return a.digest(), b.digest()
        return a.header_digest, b.header_digest

    def summary(self) -> dict[str, Any]:
        """JSON-ready: what ``/status`` and ``narwhal evidence list`` show."""
        try:
            digests: list[str | None] = [d.hex() for d in self.digests()]
        except EvidenceError:
            digests = [None, None]  # kept, but not decodable: ``verify`` says False
        return {"kind": self.kind, "author": self.author.hex(), "round": self.round,
                **({"origin": self.origin.hex()} if self.origin else {}),
                "digests": digests, "detected_at": self.detected_at}


def verify(evidence: Evidence, committee: Stakes) -> bool:
    """True when ``evidence`` proves ``author`` equivocated: a member of ``committee``
    signed both messages, and they conflict (same round, and origin for votes; different
    headers). Never raises."""
    try:
        a, b = evidence.messages()
        if committee.stake(evidence.author) <= 0:
            return False
        if evidence.kind == HEADER:
            conflicting = (a.author == b.author == evidence.author and a.round == b.round
                           == evidence.round and a.digest() != b.digest())
        else:
            conflicting = (a.author == b.author == evidence.author and a.round == b.round
                           == evidence.round and a.origin == b.origin == evidence.origin
                           and a.header_digest != b.header_digest)
        return conflicting and crypto.verify_many(
            (evidence.author, m.digest(), m.signature) for m in (a, b))
    except Exception:  # noqa: BLE001 -- any malformed piece is simply not a proof
        return False


class EvidenceStore(Protocol):
    async def write(self, ops: list[tuple[str, bytes, bytes | None]]) -> None: ...

    def items(self, family: str) -> list[tuple[bytes, bytes]]: ...


class EvidenceRecorder:
    """Keeps each new piece of evidence once, within the caps (see the module docstring).

    Callers hand it conflicting messages they have already verified (the core checks
    every header's and vote's signature before it can conflict with anything)."""

    def __init__(self, store: EvidenceStore, *, per_author: int = MAX_PER_AUTHOR,
                 total: int = MAX_TOTAL) -> None:
        self._store = store
        self.per_author, self.total = per_author, total
        #: Keys stored, and the count per equivocator.
        self._stored: set[bytes] = set()
        self.by_author: collections.Counter[bytes] = collections.Counter()
        #: Keys seen but not stored (over a cap) -> round: logged once, pruned at GC.
        self._refused: dict[bytes, int] = {}
        #: Summaries of the latest pieces stored (made once: ``/status`` is read often).
        self.latest: collections.deque[dict[str, Any]] = collections.deque(maxlen=LATEST)
        #: New pieces detected by this process, and those of them not stored (over a cap).
        self.detected = self.not_stored = 0

    def load(self) -> None:
        """Read the stored evidence (after a restart): counts and the latest pieces."""
        pieces = []
        self._stored.clear()
        self.by_author.clear()
        for key, value in self._store.items(FAMILY):
            self._stored.add(bytes(key))
            self.by_author[bytes(key[:32])] += 1
            try:
                pieces.append(Evidence.decode(key, value))
            except EvidenceError as exc:
                log.error("%s", exc)
        self.latest.clear()
        self.latest.extend(e.summary() for e in sorted(pieces, key=lambda e: e.detected_at)[-LATEST:])

    def known(self, author: bytes, round_: int, kind: str = HEADER, origin: bytes = b"") -> bool:
        """Whether that piece was already recorded (or refused): the caller may skip
        gathering the messages again."""
        key = author + round_.to_bytes(8, "big") + _KIND_BYTE[kind] + origin
        return key in self._stored or key in self._refused

    async def headers(self, a: Header, b: Header) -> bool:
        """Two conflicting headers of one author and round; True if newly stored."""
        return await self._record(Evidence.of_headers(a, b))

    async def votes(self, a: Vote, b: Vote) -> bool:
        """Two votes of one voter for different headers of one (author, round)."""
        return await self._record(Evidence.of_votes(a, b))

    async def _record(self, evidence: Evidence) -> bool:
        key = evidence.key()
        if key in self._stored or key in self._refused:
            return False
        self.detected += 1
        summary = evidence.summary()
        first, second = (d[:16] for d in summary["digests"])
        what = (f"two headers for round {evidence.round}" if evidence.kind == HEADER else
                f"votes for two headers of {evidence.origin.hex()[:16]} at round {evidence.round}")
        if self.by_author[evidence.author] >= self.per_author or len(self._stored) >= self.total:
            self._refused[key] = evidence.round
            self.not_stored += 1
            log.warning("equivocation: %s signed %s (%s, %s); evidence not stored: %d pieces "
                        "of this authority, %d in all, are kept already",
                        evidence.author.hex()[:16], what, first, second,
                        self.by_author[evidence.author], len(self._stored))
            return False
        self._stored.add(key)  # reserved before the await: a concurrent twin stops above
        self.by_author[evidence.author] += 1
        self.latest.append(summary)
        log.warning("equivocation: %s signed %s (%s, %s); evidence stored",
                    evidence.author.hex()[:16], what, first, second)
        await self._store.write([(FAMILY, key, evidence.encode())])
        return True

    def garbage_collect(self, gc_round: int) -> None:
        """Forget the refused keys of rounds <= ``gc_round`` (those rounds' messages are
        refused as too old before they could conflict again)."""
        self._refused = {k: r for k, r in self._refused.items() if r > gc_round}

    def status(self) -> dict[str, Any]:
        return {"stored": len(self._stored), "detected": self.detected,
                "not_stored": self.not_stored,
                "by_author": {a.hex(): n for a, n in sorted(self.by_author.items())},
                "latest": list(reversed(self.latest))}


def read_evidence(rows: Iterable[tuple[bytes, bytes]]) -> list[Evidence | EvidenceError]:
    """Decode stored rows (key order: by equivocator, then round); undecodable rows are
    returned as their error, so a tool can report them without stopping."""
    out: list[Evidence | EvidenceError] = []
    for key, value in rows:
        try:
            out.append(Evidence.decode(bytes(key), bytes(value)))
        except EvidenceError as exc:
            out.append(exc)
    return out
