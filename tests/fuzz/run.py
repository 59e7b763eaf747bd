"""Run the fuzz targets of ``targets.py`` for a fixed time (outside CI; see README.md).

    python -m tests.fuzz.run --target frames --seconds 600
    python -m tests.fuzz.run --target all --seconds 60 --engine builtin
    python -m tests.fuzz.run --target messages --reproduce crash-1234abcd

Engines:

* ``atheris`` (the default when ``import atheris`` works): libFuzzer's coverage-guided
  mutation over bytecode-instrumented ``narwhal``, ``noise`` and ``cbor2`` (the Python
  parts), seeded from the golden vectors. One target per process (libFuzzer exits).
* ``builtin``: the same targets without atheris: mutations (``targets.mutate``, splices,
  random bytes) of a corpus seeded from the golden vectors, keeping every input that runs a
  new line of ``narwhal``/``noise`` (traced with ``sys.settrace``; line coverage only, no
  comparison tracing, so it finds less than atheris, but needs nothing). The CI smoke test
  uses it.

A finding is any exception a target lets escape (the checks let only the layer's typed
errors pass and assert the rest), a hang over ``--timeout`` seconds, or the process growing
over ``--rss-mb``. Its input is written to ``--artifacts`` (default ``.fuzz/``) as
``crash-<sha1>``; the exit status is 1. Every finding becomes a regression test (README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("frames", "handshake", "transport", "payload", "messages")


class Hang(BaseException):
    """Raised by the alarm when one input runs longer than the timeout (BaseException, so
    no ``except Exception`` in the code under test can swallow it)."""


def save(artifacts: Path, data: bytes, prefix: str = "crash") -> Path:
    artifacts.mkdir(parents=True, exist_ok=True)
    path = artifacts / f"{prefix}-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    return path


def load_corpus(corpus: Path | None, seeds: Iterable[bytes]) -> list[bytes]:
    """The golden seeds, plus every file of ``corpus`` (written there too, when given)."""
    inputs = list(seeds)
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            (corpus / f"seed-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
        inputs += [p.read_bytes() for p in sorted(corpus.iterdir()) if p.is_file()]
    return list(dict.fromkeys(inputs))


# --- atheris ---------------------------------------------------------------------------------


def run_atheris(name: str, args: argparse.Namespace) -> None:
    """libFuzzer for ``args.seconds``; does not return (libFuzzer exits the process)."""
    import atheris

    with atheris.instrument_imports(include=["narwhal", "noise", "cbor2"]):
        from tests.fuzz import targets
    target, seeds = targets.TARGETS[name]
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix=f"narwhal-fuzz-{name}-"))
    load_corpus(corpus, seeds())
    args.artifacts.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], str(corpus), f"-max_total_time={args.seconds}",
            f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_mb}",
            f"-malloc_limit_mb={args.rss_mb}", f"-artifact_prefix={args.artifacts}/",
            f"-max_len={args.max_len}", "-print_final_stats=1", *args.libfuzzer]
    if args.seed is not None:
        argv.append(f"-seed={args.seed}")
    print(f"atheris: {name} for {args.seconds} s, corpus {corpus}", flush=True)
    atheris.Setup(argv, target)
    atheris.Fuzz()


# --- builtin ---------------------------------------------------------------------------------


class LineCoverage:
    """Lines of the code under test run by one call, through ``sys.settrace``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes
        self.lines: set[tuple[str, int]] = set()

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        return self._local if frame.f_code.co_filename.startswith(self.prefixes) else None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.lines.add((frame.f_code.co_filename, frame.f_lineno))
        return self._local

    def run(self, fn: Callable[[bytes], None], data: bytes) -> set[tuple[str, int]]:
        self.lines = set()
        sys.settrace(self._global)
        try:
            fn(data)
        finally:
            sys.settrace(None)
        return self.lines


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang("input ran over the timeout")


def run_builtin(name: str, args: argparse.Namespace, seconds: float) -> int:
    """Coverage-guided mutation fuzzing of one target for ``seconds``; 1 on a finding."""
    import noise

    import narwhal
    from tests.fuzz import targets

    target, seeds = targets.TARGETS[name]
    if args.inject_finding:  # the runner's self-test: every input is a finding
        target = _raising
    rnd = random.Random(args.seed if args.seed is not None else time.time_ns())
    corpus = load_corpus(args.corpus, seeds())
    prefixes = (str(Path(narwhal.__file__).parent), str(Path(noise.__file__).parent))
    coverage = LineCoverage(prefixes)
    seen: set[tuple[str, int]] = set()
    signal.signal(signal.SIGALRM, _on_alarm)
    execs, start = 0, time.monotonic()

    def run_one(data: bytes) -> bool:
        nonlocal execs
        execs += 1
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
        try:
            lines = coverage.run(target, data)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        if rss_mb > args.rss_mb:
            raise MemoryError(f"process grew to {rss_mb} MB (limit {args.rss_mb} MB)")
        new = not lines <= seen
        seen.update(lines)
        return new

    try:
        for data in list(corpus):
            run_one(data)
        while time.monotonic() - start < seconds:
            data = mutate_input(rnd, corpus, args.max_len)
            if run_one(data):
                corpus.append(data)
                if args.corpus is not None:
                    save(args.corpus, data, "cov")
    except BaseException as exc:  # every escape is the finding we look for
        if isinstance(exc, KeyboardInterrupt):
            raise
        path = save(args.artifacts, data)
        traceback.print_exc()
        print(f"builtin: {name}: FINDING {type(exc).__name__} after {execs} execs; "
              f"input written to {path}", flush=True)
        return 1
    elapsed = time.monotonic() - start
    print(f"builtin: {name}: {execs} execs in {elapsed:.1f} s ({execs / elapsed:.0f}/s), "
          f"corpus {len(corpus)}, {len(seen)} lines covered, no finding", flush=True)
    return 0


def _raising(data: bytes) -> None:
    raise RuntimeError("injected finding")


def mutate_input(rnd: random.Random, corpus: list[bytes], max_len: int) -> bytes:
    from tests.fuzz.targets import mutate

    data = rnd.choice(corpus)
    choice = rnd.random()
    if choice < 0.1:  # splice two corpus entries, keeping the mode byte(s) of the first
        other = rnd.choice(corpus)
        data = data[: rnd.randint(0, len(data))] + other[rnd.randint(0, len(other)) :]
    elif choice < 0.15:
        data = data + rnd.randbytes(rnd.randint(1, 64))
    ops = rnd.randbytes(4 * rnd.choice((1, 1, 2, 3, 4, 8)))
    return mutate(data, ops)[:max_len]


# --- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, choices=(*NAMES, "all"))
    parser.add_argument("--seconds", type=float, default=60.0, help="time per target")
    parser.add_argument("--engine", choices=("auto", "atheris", "builtin"), default="auto")
    parser.add_argument("--corpus", type=Path, help="keep the corpus here (default: temporary)")
    parser.add_argument("--artifacts", type=Path, default=Path(".fuzz"),
                        help="where crash inputs are written (default .fuzz/)")
    parser.add_argument("--seed", type=int, help="random seed (default: time)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per input")
    parser.add_argument("--rss-mb", type=int, default=1024, help="memory limit (MB)")
    parser.add_argument("--max-len", type=int, default=4096, help="longest input (bytes)")
    parser.add_argument("--reproduce", type=Path, help="run the target once on this file")
    parser.add_argument("--inject-finding", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("libfuzzer", nargs="*", help="extra libFuzzer flags (after --)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    names = NAMES if args.target == "all" else (args.target,)

    if args.reproduce is not None:
        from tests.fuzz.targets import TARGETS

        for name in names:
            TARGETS[name][0](args.reproduce.read_bytes())
        print("no finding")
        return 0
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
        except ImportError:
            engine = "builtin"
        else:
            engine = "atheris"
    if engine == "atheris":
        if len(names) != 1:
            # libFuzzer exits the process when done: one child process per target
            import subprocess

            status = 0
            for name in names:
                cmd = [sys.executable, "-m", "tests.fuzz.run", *_forward(sys.argv[1:], name)]
                status |= subprocess.run(cmd, cwd=ROOT, check=False).returncode
            return status
        run_atheris(names[0], args)
    status = 0
    for name in names:
        status |= run_builtin(name, args, args.seconds)
    return status


def _forward(argv: list[str], name: str) -> list[str]:
    """``argv`` with ``--target all`` replaced by ``--target name``."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--target":
            out[i + 1] = name
        elif arg.startswith("--target="):
            out[i] = f"--target={name}"
    return out


if __name__ == "__main__":
    sys.exit(main())
