"""Fail loudly when the environment does not hold exactly what requirements*.txt pin: every pinned distribution
installed at its pinned version, and every one of them importable (its top-level modules load). `make` runs this
after installing, so a failed or partial install stops the build instead of turning into skipped tests."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;#]+)")


def pins(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("-r "):
            out.update(pins(path.parent / line[3:].strip()))
        elif m := PIN.match(line):
            out[m.group(1)] = m.group(2)
    return out


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def modules_of(dist: str) -> list[str]:
    by_dist: dict[str, list[str]] = {}
    for module, dists in md.packages_distributions().items():
        for d in dists:
            by_dist.setdefault(norm(d), []).append(module)
    names = sorted(m for m in by_dist.get(norm(dist), []) if not m.startswith("_") and m.isidentifier())
    return [m for m in names if importlib.util.find_spec(m) is not None]  # RECORD also lists stray names


def main(files: list[str]) -> int:
    wanted: dict[str, str] = {}
    for f in files or ["requirements-dev.txt"]:
        wanted.update(pins(ROOT / f))
    problems = []
    for dist, version in sorted(wanted.items()):
        try:
            have = md.version(dist)
        except md.PackageNotFoundError:
            problems.append(f"{dist}=={version} is not installed")
            continue
        if have.split("+")[0] != version.split("+")[0]:
            problems.append(f"{dist} is {have}, requirements pin {version}")
            continue
        for module in modules_of(dist):
            try:
                importlib.import_module(module)
            except Exception as exc:  # an import error of any kind is the point of this check
                problems.append(f"{dist}: import {module} failed ({type(exc).__name__}: {exc})")
    for p in problems:
        print(f"install check: {p}", file=sys.stderr)
    print(f"install check: {len(wanted) - len(problems)} of {len(wanted)} pinned packages installed and importable")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
