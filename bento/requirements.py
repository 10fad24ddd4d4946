"""Write (or check) ``bento/requirements.txt``: what the service needs, pinned as in requirements.lock.

Why: the bento's image should install what serving imports, not the training stack (DeepSpeed,
Prefect, Great Expectations, DVC, the metadata store). The list is the dependency closure of
msjoe's core dependencies plus its ``serve`` extra, read from the installed packages' metadata
(the environment ``make install`` builds from requirements.lock), each pinned to its lock
version. It also prints the installed size of that closure against the whole lock, a proxy
for what the image's pip install weighs.

    .venv/bin/python bento/requirements.py           # rewrite bento/requirements.txt
    .venv/bin/python bento/requirements.py --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
TARGET = REPO / "bento" / "requirements.txt"
HEADER = ("# What the MSJoE service needs, pinned as in requirements.lock; written by bento/requirements.py\n"
          "# (msjoe's core dependencies + the serve extra, with their dependencies). Do not edit by hand.\n")


def lock_pins(path: Path = LOCK) -> dict[str, str]:
    """``{canonical name: "name==version"}`` of requirements.lock."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and "==" in line:
            name = line.split("==", 1)[0].split("[", 1)[0].strip()
            pins[canonicalize_name(name)] = line
    return pins


def closure(roots: list[Requirement]) -> set[str]:
    """Canonical names of ``roots`` and everything they require on this platform (installed metadata)."""
    seen: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in roots]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        key = name + "[" + ",".join(sorted(extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        for raw in md.requires(req.name) or []:
            sub = Requirement(raw)
            if sub.marker is not None and not any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                continue
            todo.append((sub, frozenset(sub.extras)))
    return {key.split("[", 1)[0] for key in seen}


def serve_roots() -> list[Requirement]:
    """msjoe's core requirements plus those of its ``serve`` extra (markers resolved here)."""
    roots = []
    for raw in md.requires("msjoe") or []:
        req = Requirement(raw)
        if req.marker is None or req.marker.evaluate({"extra": "serve"}):
            extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            roots.append(Requirement(f"{req.name}{extras}{req.specifier}"))
    return roots


def installed_mb(names: set[str]) -> float:
    total = 0
    for name in names:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        for file in dist.files or []:
            path = Path(dist.locate_file(file))
            if path.is_file():
                total += path.stat().st_size
    return total / 1e6


def render(names: set[str], pins: dict[str, str]) -> str:
    missing = sorted(n for n in names if n not in pins)
    if missing:
        raise SystemExit(f"not pinned in requirements.lock: {', '.join(missing)}")
    return HEADER + "".join(pins[n] + "\n" for n in sorted(names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if bento/requirements.txt is out of date")
    args = parser.parse_args()
    pins = lock_pins()
    names = closure(serve_roots()) - {"msjoe"}
    text = render(names, pins)
    print(f"serve: {len(names)} packages, {installed_mb(names):,.0f} MB installed; "
          f"whole lock: {len(pins)} packages, {installed_mb(set(pins)):,.0f} MB installed")
    if args.check:
        if not TARGET.is_file() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(REPO)} is out of date: run .venv/bin/python bento/requirements.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
