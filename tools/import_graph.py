"""Print which narwhal packages import which, and the size of each module.

Usage: ``python tools/import_graph.py [--modules]`` from the repository root.

Why: ``docs/architecture.md`` records the layering of the packages (what may import what)
and the module sizes before and after each refactor; this script produces both figures, so
they can be measured again instead of trusted. Every import counts, including those under
``if TYPE_CHECKING:`` and inside functions: a cycle that only type checkers see is still a
cycle a reader has to untangle.

A "package" is the first component below ``narwhal`` (``narwhal.config.committee`` ->
``config``); top-level modules (``narwhal/crypto.py``) count as their own package.
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "narwhal"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def narwhal_imports(path: Path) -> set[str]:
    """Every ``narwhal.*`` module ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("narwhal."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "narwhal":
                found.update(f"narwhal.{a.name}" for a in node.names)
            elif node.module.startswith("narwhal."):
                found.add(node.module)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="also list every module's lines")
    args = parser.parse_args()
    edges: dict[str, set[str]] = defaultdict(set)
    sizes: dict[str, int] = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        sizes[name] = len(path.read_text().splitlines())
        source = package_of(name)
        for target in narwhal_imports(path):
            if package_of(target) != source:
                edges[source].add(package_of(target))
    packages: dict[str, int] = defaultdict(int)
    for name, lines in sizes.items():
        packages[package_of(name)] += lines
    print(f"{'package':<14} {'lines':>6}  imports")
    for package in sorted(packages):
        print(f"{package:<14} {packages[package]:>6}  {', '.join(sorted(edges[package])) or '-'}")
    print(f"{'total':<14} {sum(sizes.values()):>6}")
    if args.modules:
        for name in sorted(sizes):
            print(f"{sizes[name]:>6}  {name}")


if __name__ == "__main__":
    main()
