"""``python -m narwhal.sim``: run seeded whole-cluster simulations (issue 14).

``--seed S [--json]`` runs one seed and prints its result (``seed``, ``trace_hash``,
``commits``, ``violations``, ``sim_seconds``, ``wall_seconds``, ``recovery_s``, ...);
``--seeds N`` runs seeds ``--first``..``--first+N-1`` and prints ``{"seeds": N, "failed":
[...], "seeds_per_minute": X, "recovery_s_median": ..., "recovery_s_max": ..., "weak_links":
..., "reproposed_headers": ...}`` (the last two summed over the seeds). A failing seed prints
the exact command that replays it. Exit status 1 if any seed failed.

Replayable only with a fixed ``PYTHONHASHSEED`` (set and ``str`` hashing orders ``set``
iteration): this entry point re-executes itself with ``PYTHONHASHSEED=0`` when it is not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from rich.progress import Progress

from narwhal.sim.run import WARM_UP, SimResult, simulate

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m narwhal.sim", description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, default=None, help="run this one seed")
    which.add_argument("--seeds", type=int, default=None, help="run this many seeds")
    p.add_argument("--first", type=int, default=0, help="first seed of --seeds (default 0)")
    p.add_argument("--duration", type=float, default=30.0,
                   help="simulated seconds per seed (default 30)")
    p.add_argument("--settle", type=float, default=12.0,
                   help="simulated seconds at the end with every fault healed (default 12)")
    p.add_argument("--validators", type=int, default=4, help="committee size (default 4)")
    p.add_argument("--gc-depth", type=int, default=None,
                   help="the validators' gc_depth (default: the simulator's, 20 rounds)")
    p.add_argument("--consensus", choices=["bullshark", "tusk"], default="bullshark")
    p.add_argument("--no-faults", action="store_true", help="no nemesis: a healthy network")
    p.add_argument("--byzantine", action="store_true",
                   help="the last validator equivocates (a twin of each header to half the "
                        "others) and withholds its certificates from one")
    p.add_argument("--jam", action="store_true",
                   help="the last validator also sends one honest validator, with each of its "
                        "headers, a signed header 3 rounds ahead naming made-up parents (a "
                        "certificate-fetcher jam)")
    p.add_argument("--forge", action="store_true",
                   help="the last validator also sends, after each of its headers, forged "
                        "certificates (made-up votes, a round far ahead), a vote for a header "
                        "its receiver never proposed, and its previous header again")
    p.add_argument("--skew", type=float, default=None, metavar="R",
                   help="clock skew: each validator's clock runs at its own rate, drawn from "
                        "[1/R, R], and reads up to an hour apart from the others (R >= 1)")
    p.add_argument("--json", action="store_true", help="print JSON only")
    return p


def replay_command(seed: int, args: argparse.Namespace) -> str:
    extra = "" if args.duration == 30.0 else f" --duration {args.duration:g}"
    extra += "" if args.settle == 12.0 else f" --settle {args.settle:g}"
    extra += "" if args.gc_depth is None else f" --gc-depth {args.gc_depth}"
    extra += "" if args.validators == 4 else f" --validators {args.validators}"
    extra += "" if args.consensus == "bullshark" else f" --consensus {args.consensus}"
    extra += " --no-faults" if args.no_faults else ""
    extra += " --byzantine" if args.byzantine else ""
    extra += " --jam" if args.jam else ""
    extra += " --forge" if args.forge else ""
    extra += "" if args.skew is None else f" --skew {args.skew:g}"
    return f"python -m narwhal.sim --seed {seed}{extra} --json"


def _one(seed: int, args: argparse.Namespace) -> SimResult:
    overrides = {} if args.gc_depth is None else {"gc_depth": args.gc_depth}
    return simulate(seed, duration=args.duration, settle=args.settle, n=args.validators,
                    faults=not args.no_faults, consensus=args.consensus,
                    byzantine=args.byzantine, jam=args.jam, forge=args.forge, skew=args.skew,
                    **overrides)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds: at least 1")
    if args.validators < 1:
        parser.error("--validators: at least 1")
    if args.settle <= 0 or args.duration <= WARM_UP + args.settle:
        parser.error(f"--duration must exceed the warm-up ({WARM_UP:g} s) plus --settle "
                     f"({args.settle:g} s), and --settle must be positive")
    if args.gc_depth is not None and args.gc_depth < 1:
        parser.error("--gc-depth: at least 1")
    if args.skew is not None and not args.skew >= 1:
        parser.error("--skew: a rate factor of at least 1")
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "narwhal.sim",
                                  *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.CRITICAL)  # the nodes' logs would drown the results
    if args.seeds is None:
        result = _one(args.seed if args.seed is not None else 0, args)
        print(json.dumps(result.as_json(), indent=None if args.json else 1))
        if result.violations:
            print(f"replay: {replay_command(result.seed, args)}", file=sys.stderr)
        return 1 if result.violations else 0
    failed: list[dict[str, object]] = []
    recoveries: list[float] = []
    weak_links = reproposed = 0
    started = time.perf_counter()
    with Progress(disable=args.json, transient=True) as progress:
        task = progress.add_task("seeds", total=args.seeds)
        for seed in range(args.first, args.first + args.seeds):
            result = _one(seed, args)
            if result.recovery_s is not None:
                recoveries.append(result.recovery_s)
            weak_links += result.weak_links
            reproposed += result.reproposed_headers
            if result.violations:
                failed.append({"seed": seed, "violations": result.violations,
                               "replay": replay_command(seed, args)})
            progress.advance(task)
    minutes = (time.perf_counter() - started) / 60
    recoveries.sort()
    print(json.dumps({"seeds": args.seeds, "first": args.first, "failed": failed,
                      "seeds_per_minute": round(args.seeds / minutes, 1) if minutes else None,
                      "recovery_s_median": recoveries[len(recoveries) // 2] if recoveries else None,
                      "recovery_s_max": recoveries[-1] if recoveries else None,
                      "weak_links": weak_links, "reproposed_headers": reproposed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
