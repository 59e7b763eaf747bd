"""``python -m narwhal.node``: the node's command line.

Subcommands (each has ``--help``):

- ``demo``       start N local peer processes that exchange acknowledged messages over
                 Noise and show their live peer tables (the README's run command);
- ``demo-peer``  one such peer process (started by ``demo``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import uvloop


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="narwhal", description="narwhal-py validator node")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run a local multi-process network demo",
                          description="Start N peer processes on 127.0.0.1 that exchange reliable, "
                                      "acknowledged messages over Noise; show their live state.")
    demo.add_argument("--nodes", type=_positive_int, default=4, help="number of peers (default 4)")
    demo.add_argument("--duration", type=_positive_float, default=None,
                      help="stop after this many seconds (default: run until Ctrl-C)")
    demo.add_argument("--rate", type=_positive_float, default=50.0,
                      help="broadcasts per second per peer (default 50)")
    demo.add_argument("--dir", type=Path, default=None, help="folder for keys and logs (default: a temp dir)")

    peer = sub.add_parser("demo-peer", help="one demo peer process (started by 'demo')")
    peer.add_argument("directory", type=Path, help="directory.json written by 'demo'")
    peer.add_argument("index", type=int, help="which entry of the directory this process is")
    peer.add_argument("--rate", type=_positive_float, default=50.0)
    return parser


def _run(coro_factory) -> int:  # type: ignore[no-untyped-def]
    """Run on uvloop; SIGTERM and Ctrl-C cancel the main task so shutdown is graceful."""
    async def main() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        try:
            return int(await coro_factory() or 0)
        except asyncio.CancelledError:
            return 130

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        from narwhal.node.demo import run_demo

        return _run(lambda: run_demo(args.nodes, args.duration, args.rate, args.dir))
    if args.command == "demo-peer":
        from narwhal.node.demo import run_peer

        if not args.directory.is_file():
            print(f"error: {args.directory} does not exist", file=sys.stderr)
            return 2
        return _run(lambda: run_peer(args.directory, args.index, args.rate))
    return 2


if __name__ == "__main__":
    sys.exit(main())
