"""Type-check the project with mypy, across module boundaries.

The packages live in root folders mapped onto the ``cleanroom.*`` namespace
(``package-dir`` in pyproject.toml). mypy cannot read that mapping, nor run
the import hook an editable install uses, so on its own it would see every
``cleanroom.*`` import as missing and type it ``Any``. This script lays the
mapping out as symlinks under ``.mypy_cache/tree`` (``cleanroom/server ->
server/`` ...; a fixed place, since mypy's cache replays old errors with the
paths they were found under), points ``MYPYPATH`` at it, checks the packages by name, then
``tests/``, ``bench/``, ``scripts/`` and ``fuzz/`` by path (mypy takes one or the other
per run), and prints mypy's report with paths of the repository.

    python scripts/typecheck.py [extra mypy arguments]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("tests", "bench", "scripts", "fuzz")


def package_dirs() -> dict[str, str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return mapping


def main(argv: list[str]) -> int:
    mapping = package_dirs()
    base = ROOT / ".mypy_cache" / "tree"
    shutil.rmtree(base, ignore_errors=True)
    for package, folder in mapping.items():
        link = base.joinpath(*package.split("."))
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(ROOT / folder, target_is_directory=True)
    env = {**os.environ, "MYPYPATH": str(base)}
    runs = [
        [arg for package in sorted(mapping) for arg in ("-p", package)],
        [p for p in PATHS if (ROOT / p).is_dir()],
    ]
    status = 0
    for targets in runs:
        done = subprocess.run(
            [sys.executable, "-m", "mypy", *targets, *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        report = done.stdout + done.stderr
        for package, folder in mapping.items():
            tree = base.joinpath(*package.split("."))
            for shown in (str(tree), str(tree.relative_to(ROOT))):
                report = report.replace(shown + "/", folder.rstrip("/") + "/")
        sys.stdout.write(report)
        status = status or done.returncode
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
