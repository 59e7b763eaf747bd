"""What output subscribers cost a validator: N replaying history, M never reading.

Issue 12, item 6: "subscribers cannot hurt consensus". This starts a local testnet of 4
validator processes (1 worker each, default parameters) under a steady load
(``--rate`` tx/s of 512 B), lets it build ``--history`` seconds of output, then measures
node-0 (the *victim*) in two phases of ``--phase`` seconds each, in the same run:

1. **baseline**: the load alone;
2. **attack**: the load plus ``--readers`` subscribers that replay the whole history from
   index 1 as fast as they can read, and ``--stalled`` subscribers that subscribe from
   index 1 and never read a byte. They run in a child process (``attack`` mode of this
   script), all from 127.0.0.1 (tests and benchmarks use no other address, so the
   validators' ``max_subscribers_per_address`` and ``max_clients_per_address`` are raised
   to ``max_subscribers`` for this bench; the per-address caps have their own tests), and
   do not decode what
   they receive (decryption only), so they take as little of the shared CPU as a client can.

For each phase it prints the victim's commit rate (batches and transactions committed at
node-0 per second, from its log), its consensus latency (a batch's creation at any worker
to its commit at node-0: mean and p95) and its peak RSS, and the attack/baseline ratios;
then what the subscribers got (MB/s replayed in all, per reader min/max) and the victim's
output counters (bytes served, pacer waits, slow subscribers disconnected, refusals).

    flock /tmp/narwhal-heavy.lock python bench/subscribers.py --readers 32 --stalled 32

Exit code 1 if a validator dies. Each run's files stay in a ``narwhal-subscribers-*``
folder of the temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.local import (  # after the path fix, like bench/local.py
    LINE,
    START_TIMEOUT,
    BenchError,
    children,
    percentile,
    rss_mb,
)
from narwhal.config import Committee, Parameters
from narwhal.crypto import AuthorityKeys
from narwhal.messages import Subscribe
from narwhal.net.clients import connect_client
from narwhal.net.rpc import Router, channel_of
from narwhal.node.files import create_local
from narwhal.node.processes import python_module
from narwhal.node.status import read_status

#: Seconds between two RSS samples of the victim.
RSS_INTERVAL = 0.5


# -- the attacker (a child process) ----------------------------------------------------------


async def attack(committee_file: Path, victim: int, readers: int, stalled: int, seconds: float,
                 out: Path) -> None:
    """Subscribe ``readers`` + ``stalled`` times to the victim's output for ``seconds``;
    write what each reader received to ``out`` (JSON)."""
    committee = Committee.load(committee_file)
    name = committee.authorities_sorted()[victim]
    primary = committee.authorities[name].primary
    host, port = primary.client_address.rsplit(":", 1)
    conns: list[Any] = []
    refused: dict[str, int] = {}

    async def subscribe(k: int, read: bool) -> None:
        try:
            conn = await connect_client(host, int(port), server_static=primary.network_key,
                                        network_id=committee.network_id(), router=Router(),
                                        name=f"sub{k}")
            await channel_of(conn).request(Subscribe(1), timeout=10)
        except Exception as exc:  # noqa: BLE001 -- a refusal is a result here, not a failure
            key = type(exc).__name__ + ": " + str(exc)[:60]
            refused[key] = refused.get(key, 0) + 1
            return
        if not read and conn._transport is not None:
            conn._transport.pause_reading()
        conns.append((k, read, conn))

    await asyncio.gather(*(subscribe(k, k < readers) for k in range(readers + stalled)))
    started = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    received = [c.stats.bytes_in for _, read, c in conns if read]
    result = {"readers": len(received), "stalled": sum(not r for _, r, _ in conns),
              "refused": refused, "seconds": elapsed, "bytes_per_reader": received,
              "stalled_disconnected": sum(1 for _, r, c in conns if not r and c.closed.done())}
    out.write_text(json.dumps(result))
    for _, _, conn in conns:
        conn.abort()


# -- the driver --------------------------------------------------------------------------------


def _log_lines(path: Path) -> list[tuple[float, str, str, int]]:
    """(time, "Created batch"/"Committed batch", digest, transactions) of a node's log."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        match = LINE.match(line)
        if match:
            stamp = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((stamp, match[2], match[3], int(match[4] or 0)))
    return found


def victim_figures(node_log: Path, logs: list[Path], start: float, end: float) -> dict[str, Any]:
    """Commit rate and consensus latency at the victim over [start, end]: a batch's
    creation (at any worker) to its commit at the victim."""
    created: dict[str, float] = {}
    counts: dict[str, int] = {}  # transactions: on the creation line only
    for path in logs:
        for stamp, what, digest, count in _log_lines(path):
            if what == "Created batch":
                created[digest] = min(stamp, created.get(digest, stamp))
                counts[digest] = count
    committed: dict[str, tuple[float, int]] = {}
    for stamp, what, digest, _ in _log_lines(node_log):
        if what == "Committed batch":
            committed.setdefault(digest, (stamp, counts.get(digest, 0)))
    window = {d: (t, n) for d, (t, n) in committed.items() if start <= t <= end}
    latency = [t - created[d] for d, (t, _) in window.items() if d in created]
    seconds = max(1e-9, end - start)
    return {"batches_per_s": len(window) / seconds,
            "tx_per_s": sum(n for _, n in window.values()) / seconds,
            "latency_ms": 1000 * statistics.mean(latency) if latency else None,
            "latency_p95_ms": 1000 * percentile(latency, 0.95) if latency else None}


def sample_rss(pid: int, seconds: float) -> float:
    """Peak RSS (MB) of ``pid`` sampled for ``seconds``."""
    peak, deadline = 0.0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss_mb(pid) or 0.0)
        time.sleep(RSS_INTERVAL)
    return peak


def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    defaults = Parameters()  # one source address here: the per-address caps would refuse most
    parameters = attrs.evolve(defaults, max_subscribers_per_address=defaults.max_subscribers,
                              max_clients_per_address=defaults.max_subscribers)
    net = create_local(directory, 4, 1, parameters=parameters)
    with children() as group:
        nodes = [group.start(f"node-{i}", python_module(
            "narwhal.node", "run", "--keys", str(net.key_files[i]), "--committee",
            str(net.committee_file), "--parameters", str(net.parameters_file), "--store",
            str(net.node_dir(i)), "--log-file", str(net.node_dir(i) / "node.log")),
            net.node_dir(i) / "stdout.log") for i in range(4)]
        deadline = time.monotonic() + START_TIMEOUT
        while not all((read_status(net.node_dir(i) / "status.json") or {}).get("primary", {})
                      .get("round", 0) >= 2 for i in range(4)):
            if any(c.returncode is not None for c in nodes) or time.monotonic() > deadline:
                raise BenchError(f"the validators did not start; see {directory}/node-*/node.log")
            time.sleep(0.2)
        total = args.history + 2 * args.phase + 5
        for i in range(4):
            name = AuthorityKeys.load(net.key_files[i]).name.hex()
            group.start(f"client-{i}", python_module(
                "narwhal.client", "submit", "--committee", str(net.committee_file), "--worker",
                f"{name}:0", "--rate", str(args.rate // 4), "--tx-size", "512", "--duration",
                str(total)), directory / f"client-{i}.log")
        victim = nodes[0].process.pid
        time.sleep(args.history)
        base_start = time.time()
        rss_base = sample_rss(victim, args.phase)
        base_end = attack_start = time.time()
        out = directory / "attack.json"
        group.start("attack", [sys.executable, __file__, "attack", str(net.committee_file),
                               str(args.readers), str(args.stalled), str(args.phase), str(out)],
                    directory / "attack.log")
        rss_attack = sample_rss(victim, args.phase)
        attack_end = time.time()
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        status = read_status(net.node_dir(0) / "status.json") or {}
        rss_end = rss_mb(victim)
        dead = [c.name for c in nodes if c.returncode is not None]
        if dead:
            raise BenchError(f"{', '.join(dead)} died; see {directory}/node-*/node.log")
    logs = [net.node_dir(i) / "node.log" for i in range(4)]
    victim_log = logs[0]
    attacked = json.loads(out.read_text()) if out.exists() else {}
    return {
        "rate": args.rate, "readers": args.readers, "stalled": args.stalled,
        "phase_s": args.phase, "history_s": args.history, "directory": str(directory),
        "baseline": {**victim_figures(victim_log, logs, base_start, base_end),
                     "rss_peak_mb": rss_base},
        "attack": {**victim_figures(victim_log, logs, attack_start, attack_end),
                   "rss_peak_mb": rss_attack, "rss_end_mb": rss_end},
        "subscribers": attacked,
        "output": (status.get("primary") or {}).get("output", {}),
        "output_rate": parameters.output_rate,
    }


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def summary(result: dict[str, Any]) -> str:
    base, hit = result["baseline"], result["attack"]
    subs, out = result["subscribers"], result["output"]
    lines = [(f"victim node-0, {result['rate']:,} tx/s of 512 B, {result['phase_s']:.0f} s per "
             f"phase after {result['history_s']:.0f} s of history; attack: "
             f"{result['readers']} readers from index 1 + {result['stalled']} that never read"),
             f"{'':24}{'baseline':>12}{'attack':>12}{'ratio':>9}"]
    for key, label in (("tx_per_s", "committed tx/s"), ("batches_per_s", "committed batches/s"),
                       ("latency_ms", "latency ms (mean)"), ("latency_p95_ms", "latency ms (p95)"),
                       ("rss_peak_mb", "peak RSS MB")):
        a, b = base.get(key), hit.get(key)
        lines.append(f"{label:<24}{_fmt(a):>12}{_fmt(b):>12}{_ratio(b, a):>9}")
    received = subs.get("bytes_per_reader") or []
    seconds = subs.get("seconds") or 1
    if received:
        lines.append(f"readers: {len(received)} got {sum(received) / seconds / 1e6:.1f} MB/s in "
                     f"all (output_rate {result['output_rate'] / 1e6:.1f} MB/s), per reader "
                     f"{min(received) / seconds / 1e6:.2f}..{max(received) / seconds / 1e6:.2f} MB/s")
    lines.append(f"stalled: {subs.get('stalled', 0)} subscribed, "
                 f"{subs.get('stalled_disconnected', 0)} disconnected by the node within the phase; "
                 f"refused: {subs.get('refused') or 'none'}")
    lines.append(f"victim output counters: bytes_served={out.get('bytes_served', 0):,} "
                 f"slow_closed={out.get('slow_closed', 0)} pacer_waits={out.get('pacer_waits', 0)} "
                 f"worker_fetches={out.get('worker_fetches', 0)} cache_hits={out.get('cache_hits', 0)} "
                 f"refused={out.get('refused') or {}}; RSS at the end {_fmt(hit.get('rss_end_mb'))} MB")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["attack"]:
        committee, readers, stalled, seconds, out = argv[1:6]
        asyncio.run(attack(Path(committee), 0, int(readers), int(stalled), float(seconds), Path(out)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--stalled", type=int, default=32)
    parser.add_argument("--rate", type=int, default=10_000, help="load in tx/s (512 B each)")
    parser.add_argument("--history", type=float, default=20.0, help="seconds of load first")
    parser.add_argument("--phase", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="narwhal-subscribers-"))
    try:
        result = run(args, directory)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
