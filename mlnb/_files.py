"""File helpers every layer uses: whole-or-nothing writes, content hashes, links, locks.

Locks are :mod:`filelock`'s (an OS lock on Unix and on Windows), so mlnb holds
no locking code of its own: :func:`exclusive` waits for a lock,
:func:`try_exclusive` takes one only if it is free and otherwise says which
process holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file whole or not at all: into a temporary beside it, then rename.

    Readers see the old contents or the new, never a part; the temporary's
    name holds the pid, so concurrent writers never share one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def hash_path(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's relative names and file hashes."""
    if path.is_dir():
        digest = hashlib.sha256()
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(item.relative_to(path)).encode())
            digest.update(hash_path(item).encode())
        return "dir:" + digest.hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def link_into(source: Path, target: Path) -> None:
    """Make ``target`` hold ``source``'s content: hard links, else copies."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_or_copy, dirs_exist_ok=True)
    else:
        _link_or_copy(str(source), str(target))


def _link_or_copy(source: str, target: str) -> None:
    if os.path.lexists(target):
        os.unlink(target)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the lock ``path`` names, waiting for it as long as it takes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):
        yield


@contextlib.contextmanager
def try_exclusive(path: Path) -> Iterator[int | None]:
    """Hold the lock ``path`` names if it is free; yields ``None``.

    When another process holds it, yields that process's pid (``-1`` when it
    cannot be told) and holds nothing. The holder's pid is kept in
    ``<path>.pid`` while it holds the lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    owner = path.with_name(path.name + ".pid")
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = owner.read_text().strip()
        except OSError:
            holder = ""
        yield int(holder) if holder.isdigit() else -1
        return
    try:
        write_atomic(owner, str(os.getpid()))
        yield None
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
