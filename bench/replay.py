"""What a replayed header costs the primary's event loop, against a signature check.

A Byzantine peer can send the same valid header again and again. Until the core dropped
headers it had already verified before checking their signature, every replay paid an
ed25519 verification (~116 us measured in issue 12: about 8,600 replays/s saturate the
loop). This times, in the same run, per header, in us:

- ``verify``: ``crypto.verify`` of the header's signature alone;
- ``decode + check_header``: decoding the header's wire body and the whole validity check
  a replay went through before (membership, rounds, signature): the baseline;
- ``decode + replay parked`` / ``decode + replay voted``: decoding the body and
  ``Core.handle_header`` of a header the core already holds, parked (unknown parents) or
  voted for and answered again once (a fresh object each time, so its digest is computed
  as it is for a header that arrives over the wire);

and the ratio ``replay / baseline``. Every figure is the best of ``--repeats`` runs of
``--count`` calls (the minimum is the least noisy estimate on a shared machine).

Usage: ``python bench/replay.py [--count N] [--repeats R] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from narwhal import crypto, messages
from narwhal.config import Committee
from narwhal.crypto import AuthorityKeys
from narwhal.messages import Certificate, Header
from narwhal.primary.checks import check_header
from narwhal.primary.core import Core


class _Nowhere:
    """Network and store that accept everything and do nothing: only the core is timed."""

    async def write(self, ops: Any) -> None:
        return None

    def get(self, family: str, key: bytes) -> None:
        return None

    async def broadcast(self, message: Any) -> list[Any]:
        return []

    async def send(self, authority: bytes, message: Any) -> Any:
        return []

    async def to_workers(self, message: Any, worker_ids: Any = None) -> list[Any]:
        return []


def _signed(keys: AuthorityKeys, round_: int, parents: list[bytes]) -> Header:
    unsigned = Header(keys.name, round_, (), tuple(sorted(parents)), (), bytes(64))
    return attrs.evolve(unsigned, signature=keys.signing.sign(unsigned.digest()))


def _best_us(fn: Any, count: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(count)
        best = min(best, (time.perf_counter() - start) / count)
    return best * 1e6


async def measure(count: int, repeats: int) -> dict[str, float]:
    keys = [AuthorityKeys.generate(1) for _ in range(4)]
    committee = Committee.local([k.public() for k in keys], 1)
    nowhere = _Nowhere()
    core = Core(name=keys[0].name, committee=committee, signer=keys[0].signing, store=nowhere,
                network=nowhere, fetch_certificates=lambda digests, hint, round_: None,
                on_parents=lambda round_, parents: None)
    author = keys[1]
    parked = _signed(author, 2, [os.urandom(32) for _ in range(3)])
    genesis = [c.digest() for c in Certificate.genesis(committee.authorities_sorted())]
    voted = _signed(author, 1, genesis)
    await core.handle_header(parked, author.name)
    await core.handle_header(voted, author.name)
    await core.handle_header(voted, author.name)  # its author "restarted": answered once more
    async def timed_replays(header: Header) -> float:
        body = messages.encode(header)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(count):
                await core.handle_header(messages.decode_as(Header, body), author.name)
            best = min(best, (time.perf_counter() - start) / count)
        return best * 1e6

    digest, body = voted.digest(), messages.encode(voted)
    result = {
        "verify_us": _best_us(lambda n: [crypto.verify(author.name, digest, voted.signature)
                                         for _ in range(n)], count, repeats),
        "check_header_us": _best_us(lambda n: [check_header(
            messages.decode_as(Header, body), committee, gc_round=0, highest_round=1,
            sender=author.name) for _ in range(n)], count, repeats),
        "replay_parked_us": await timed_replays(parked),
        "replay_voted_us": await timed_replays(voted),
    }
    assert core.counters["votes_cast"] == 1 and core.counters["header_duplicate"] >= 2 * count
    result["replay_parked_over_baseline"] = result["replay_parked_us"] / result["check_header_us"]
    result["replay_voted_over_baseline"] = result["replay_voted_us"] / result["check_header_us"]
    result["replays_per_second_one_core"] = 1e6 / max(result["replay_parked_us"],
                                                      result["replay_voted_us"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5_000, help="calls per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is kept")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    result = asyncio.run(measure(args.count, args.repeats))
    names = {"verify_us": "verify", "check_header_us": "decode + check_header (before)",
             "replay_parked_us": "decode + replay parked", "replay_voted_us": "decode + replay voted"}
    print(f"{'what':<34}{'us per header':>14}")
    for key, name in names.items():
        print(f"{name:<34}{result[key]:>14.2f}")
    print(f"replay / before: parked {result['replay_parked_over_baseline']:.3f}, "
          f"voted {result['replay_voted_over_baseline']:.3f}; "
          f"{result['replays_per_second_one_core']:,.0f} replays/s to fill one core")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
