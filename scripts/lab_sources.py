"""The content hash of the JupyterLab extension's sources in lab/, stamped into its build.

``make lab-build`` builds ``mlnb/lab/labextension/`` from ``lab/`` and then runs
this with ``--write``, which records the hash of the sources in
``mlnb/lab/labextension/sources.sha256``; a test recomputes it, so a committed
bundle that was not rebuilt after its sources changed fails the tests.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = REPO / "lab"
STAMP = REPO / "mlnb" / "lab" / "labextension" / "sources.sha256"
#: what the build reads: the TypeScript, the styles and the package's own files
FILES = ("package.json", "package-lock.json", "tsconfig.json", "install.json")
FOLDERS = ("src", "style")


def sources_sha256(root: Path = SOURCES) -> str:
    """One sha256 over the names and bytes of every source file, in a fixed order."""
    paths = [root / name for name in FILES]
    for folder in FOLDERS:
        paths += sorted(p for p in (root / folder).rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="stamp the built bundle")
    args = parser.parse_args()
    found = sources_sha256()
    if args.write:
        STAMP.write_text(found + "\n")
    print(found)


if __name__ == "__main__":
    main()
