"""Message codec microbenchmark: ``narwhal.messages`` decode/encode against plain cbor2.

For each hot message it times, per message, in µs:

- ``decode``: ``messages.decode(tag, body)`` (CBOR parse, schema validation, canonicity
  check, message construction);
- ``encode``: ``messages.encode(msg)`` (validation + canonical encoding). A ``Batch`` keeps
  its body after the first encoding, so its cached body is cleared before every call: the
  number is a real encoding, not a cache hit;
- ``cbor2.loads`` / ``cbor2.dumps``: the baseline, plain ``cbor2.loads(body)`` and
  ``cbor2.dumps(value, canonical=True)`` of the same value, no validation at all;

and the ratios ``ours / plain cbor2``: what the schema and canonicity checks cost on top of
the C codec. A second table times answering a catch-up request from stored bodies (1,000
certificates; 8 batches of 500 KB): decoding each body and encoding the response (the
baseline) against ``messages.splice``, which splices the stored bodies in as they are.

With ``--reference PATH`` (a copy of an older, single-file ``narwhal/messages.py``, e.g.
``git show 1da2920~1:narwhal/messages.py > /tmp/old.py``, the last one before it became a
package) that module is timed in the same run, interleaved with ours, and
``ours / reference`` is printed too: a before/after comparison that sees the same machine
load.

Messages: Batch (1,000 x 512 B transactions, ~500 KB), SubmitTransactions (100 x 512 B),
Header (``--committee`` parents, 8 payload entries), Vote, Certificate (such a header and
``--committee`` votes), Ack, OurBatch, CertificatesResponse (100 such certificates). Every figure is the best of ``--repeats`` runs of
~``--target-ms`` each (the minimum is the least noisy estimate on a shared machine; the
load average is printed and recorded). Runs in < 30 s with the defaults.

glibc maps and unmaps every buffer of 500 KB by default, and moves that threshold as it
goes, so the page faults of a Batch body's allocation can cost more than encoding it and
flip from one run (or column) to the next. Unless ``--no-mallopt``, the benchmark first pins
glibc's mmap and trim thresholds (``mallopt``) so it measures the codec, not the allocator.

Usage: ``python bench/codec.py [--json PATH] [--reference PATH] [--committee N]
[--repeats R] [--target-ms MS]``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import cbor2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from narwhal import messages


def load_module(path: str) -> ModuleType:
    """Import a copy of messages.py from ``path`` as a separate module (its own registry)."""
    spec = importlib.util.spec_from_file_location("codec_bench_reference", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs resolves string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def pin_malloc_thresholds() -> bool:
    """Keep buffers up to 16 MiB on the heap and the heap untrimmed (glibc only)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 16 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))


def samples(m: ModuleType, committee: int, seed: int = 1) -> dict[str, Any]:
    """One instance of each benchmarked message, built from a fixed seed."""
    rnd = random.Random(seed)

    def b(n: int) -> bytes:
        return rnd.randbytes(n)

    keys = sorted(b(32) for _ in range(committee))

    def header(author: bytes, round_: int) -> Any:
        return m.Header(author, round_, sorted((b(32), i % 4) for i in range(8)),
                        sorted(b(32) for _ in range(committee)), (), b(64))

    def certificate(author: bytes, round_: int) -> Any:
        return m.Certificate(header(author, round_), [(k, b(64)) for k in keys])

    return {
        "Batch(1000x512B)": m.Batch([b(512) for _ in range(1_000)]),
        "SubmitTransactions(100x512B)": m.SubmitTransactions([b(512) for _ in range(100)]),
        "Header": header(keys[0], 1_000),
        "Vote": m.Vote(b(32), 1_000, keys[0], keys[1], b(64)),
        f"Certificate({committee} signers)": certificate(keys[0], 1_000),
        "Ack": m.Ack(),
        "OurBatch": m.OurBatch(b(32), 0, 1_000),
        "CertificatesResponse(100)": m.CertificatesResponse(
            [certificate(keys[i % committee], 1_000 + i // committee) for i in range(100)]),
    }


def timer(fn: Callable[[], Any], target_s: float) -> Callable[[], float]:
    """A callable that runs ``fn`` ~target_s worth of times and returns µs per call. Every
    column keeps its last result alive until the next one replaces it (as a node keeps what
    it decoded or encoded): otherwise 500 KB results are freed at different moments per
    column and the allocator, not the codec, makes the difference."""
    t = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t, 1e-7)
    number = max(1, int(target_s / once))

    def run() -> float:
        last = None
        start = time.perf_counter()
        for _ in range(number):
            last = fn()
        elapsed = time.perf_counter() - start
        del last
        return elapsed / number * 1e6

    return run


def ops(m: ModuleType, msg: Any) -> dict[str, Callable[[], Any]]:
    tag, body = m.tag_of(msg), m.encode(msg)
    assert m.decode(tag, body) == msg
    if msg.KEEP_BODY:
        def encode() -> bytes:
            object.__setattr__(msg, "_body", None)  # time an encoding, not the cached body
            return m.encode(msg)  # type: ignore[no-any-return]
    else:
        def encode() -> bytes:
            return m.encode(msg)  # type: ignore[no-any-return]
    return {"decode": lambda: m.decode(tag, body), "encode": encode}


def serving(committee: int, repeats: int, target: float) -> dict[str, dict[str, float]]:
    """Answering a catch-up request from stored bodies, µs per response: decoding every
    stored body and encoding the response (the baseline: what serving did before) against
    ``messages.splice`` (the stored bodies spliced into the response as they are)."""
    sample = samples(messages, committee)
    batch = messages.encode(sample["Batch(1000x512B)"])
    certificate = messages.encode(sample[f"Certificate({committee} signers)"])
    cases = {  # name -> (response class, stored item class, stored bodies, other fields)
        "CertificatesResponse(1000)": (messages.CertificatesResponse, messages.Certificate,
                                       [certificate] * 1_000, ()),
        "BatchesResponse(8x500KB)": (messages.BatchesResponse, messages.Batch, [batch] * 8, ((),)),
    }
    results = {}
    for name, (cls, item, bodies, rest) in cases.items():
        def decode_encode(cls: Any = cls, item: Any = item, bodies: Any = bodies,
                          rest: Any = rest) -> bytes:
            return messages.encode(cls(tuple(messages.decode_as(item, b) for b in bodies), *rest))

        splice = partial(messages.splice, cls, bodies, *rest)
        assert splice().body == decode_encode(), f"splice of {name} differs from encode"
        columns = {"decode+encode": timer(decode_encode, target), "splice": timer(splice, target)}
        best = {col: min(run() for _ in range(repeats)) for col, run in columns.items()}
        best["ratio"] = best["decode+encode"] / best["splice"]
        best["body_bytes"] = len(splice().body)
        results[name] = best
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time narwhal.messages decode/encode per message against plain cbor2.")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--reference", metavar="PATH",
                        help="a copy of another messages.py to time in the same run (before/after)")
    parser.add_argument("--committee", type=int, default=4,
                        help="parents per header and signers per certificate (default 4)")
    parser.add_argument("--repeats", type=int, default=7, help="runs per figure, best kept (7)")
    parser.add_argument("--target-ms", type=float, default=25.0,
                        help="approximate duration of one run in ms (25)")
    parser.add_argument("--no-mallopt", action="store_true",
                        help="leave glibc's malloc thresholds alone (see the module docstring)")
    args = parser.parse_args(argv)
    mallopt = False if args.no_mallopt else pin_malloc_thresholds()

    modules = {"ours": messages}
    if args.reference:
        modules["reference"] = load_module(args.reference)
    target = args.target_ms / 1e3
    loadavg_before = os.getloadavg()

    # name -> column -> timer; every column of a message is interleaved within each repeat
    timers: dict[str, dict[str, Callable[[], float]]] = {}
    for name, msg in samples(messages, args.committee).items():
        body = messages.encode(msg)
        value = cbor2.loads(body)
        columns = {
            "cbor2.loads": timer(partial(cbor2.loads, body), target),
            "cbor2.dumps": timer(partial(cbor2.dumps, value, canonical=True), target),
        }
        for label, m in modules.items():
            twin = samples(m, args.committee)[name]
            assert m.encode(twin) == body, f"{label} encodes {name} differently"
            for op, fn in ops(m, twin).items():
                columns[f"{label}.{op}"] = timer(fn, target)
        timers[name] = columns

    results: dict[str, dict[str, float]] = {}
    for name, columns in timers.items():
        runs: dict[str, list[float]] = {col: [] for col in columns}
        for _ in range(args.repeats):
            for col, run in columns.items():
                runs[col].append(run())
        best = {col: min(times) for col, times in runs.items()}
        for label in modules:
            best[f"{label}.decode/cbor2"] = best[f"{label}.decode"] / best["cbor2.loads"]
            best[f"{label}.encode/cbor2"] = best[f"{label}.encode"] / best["cbor2.dumps"]
        if "reference" in modules:
            for op in ("decode", "encode"):
                best[f"ours/reference.{op}"] = best[f"ours.{op}"] / best[f"reference.{op}"]
        best["body_bytes"] = len(messages.encode(samples(messages, args.committee)[name]))
        results[name] = best

    header = f"{'message':<30} {'bytes':>7} {'decode µs':>10} {'loads µs':>9} {'ratio':>6}" \
             f" {'encode µs':>10} {'dumps µs':>9} {'ratio':>6}"
    if "reference" in modules:
        header += f" {'ref dec µs':>10} {'ref enc µs':>10} {'dec/ref':>7} {'enc/ref':>7}"
    print(header)
    for name, r in results.items():
        line = (f"{name:<30} {r['body_bytes']:>7} {r['ours.decode']:>10.2f} "
                f"{r['cbor2.loads']:>9.2f} {r['ours.decode/cbor2']:>6.2f} "
                f"{r['ours.encode']:>10.2f} {r['cbor2.dumps']:>9.2f} {r['ours.encode/cbor2']:>6.2f}")
        if "reference" in modules:
            line += (f" {r['reference.decode']:>10.2f} {r['reference.encode']:>10.2f}"
                     f" {r['ours/reference.decode']:>7.2f} {r['ours/reference.encode']:>7.2f}")
        print(line)
    served = serving(args.committee, args.repeats, target)
    print(f"\n{'serving stored bodies':<30} {'bytes':>9} {'decode+encode µs':>17} "
          f"{'splice µs':>10} {'speed-up':>9}")
    for name, r in served.items():
        print(f"{name:<30} {r['body_bytes']:>9} {r['decode+encode']:>17.1f} {r['splice']:>10.1f} "
              f"{r['ratio']:>8.1f}x")
    loadavg_after = os.getloadavg()
    print(f"(best of {args.repeats} runs of ~{args.target_ms:g} ms; ratio = ours / plain cbor2; "
          f"load average {loadavg_before[0]:.2f} -> {loadavg_after[0]:.2f}; "
          f"malloc thresholds {'pinned' if mallopt else 'default'})")

    if args.json:
        report = {
            "results": results,
            "serving": served,
            "reference": args.reference,
            "committee": args.committee,
            "repeats": args.repeats,
            "target_ms": args.target_ms,
            "mallopt_pinned": mallopt,
            "loadavg_before": loadavg_before,
            "loadavg_after": loadavg_after,
            "python": platform.python_version(),
            "cbor2": importlib.metadata.version("cbor2"),
            "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
