"""The file helpers: whole-or-nothing writes, content hashes, links and locks across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from mlnb._files import exclusive, hash_path, link_into, try_exclusive, write_atomic


def test_write_atomic_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    write_atomic(target, '{"new": true}')
    assert target.read_text() == '{"new": true}'
    write_atomic(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


def test_a_failed_write_keeps_the_old_contents_and_leaves_no_temporary(tmp_path: Path) -> None:
    """A write the file system refuses halfway (past a file-size limit) changes nothing."""
    target = tmp_path / "state.json"
    target.write_text("old")
    script = textwrap.dedent(
        f"""
        import resource, signal
        from pathlib import Path
        from mlnb._files import write_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            write_atomic(Path({str(target)!r}), "x" * 1_000_000)
        except OSError as exc:
            print(exc.errno)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "27", done.stdout + done.stderr  # EFBIG: the write failed
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_readers_never_see_a_partial_write(tmp_path: Path) -> None:
    """A reader in another process polling the file sees only whole versions."""
    target = tmp_path / "big.txt"
    versions = [str(i) * 200_000 for i in range(10)]
    write_atomic(target, versions[0])
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                seen = set()
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    text = open({str(target)!r}).read()
                    if len(set(text)) != 1 or len(text) != 200_000:
                        print("torn", len(text)); sys.exit(1)
                    seen.add(text[0])
                    if text[0] == "9":
                        break
                print(len(seen))
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    for text in versions[1:]:
        time.sleep(0.02)
        write_atomic(target, text)
    out, _ = reader.communicate(timeout=30)
    assert reader.returncode == 0, out
    assert int(out) >= 2  # it read while the writes went on


def test_hash_path_follows_contents_not_names_or_times(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("x,y\n1,2\n")
    b.write_text("x,y\n1,2\n")
    os.utime(b, (0, 0))
    assert hash_path(a) == hash_path(b)
    b.write_text("x,y\n1,3\n")
    assert hash_path(a) != hash_path(b)

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f.txt").write_text("1")
    before = hash_path(folder)
    assert before.startswith("dir:")
    (folder / "sub" / "f.txt").write_text("2")
    assert hash_path(folder) != before


def test_link_into_shares_the_bytes_of_a_file_and_a_folder(tmp_path: Path) -> None:
    source = tmp_path / "out.txt"
    source.write_text("42")
    target = tmp_path / "ws" / "stage" / "out.txt"
    link_into(source, target)
    assert target.read_text() == "42"
    assert target.stat().st_ino == source.stat().st_ino  # a hard link, not a copy

    tree = tmp_path / "model"
    (tree / "deep").mkdir(parents=True)
    (tree / "deep" / "w.bin").write_bytes(b"\x01\x02")
    link_into(tree, tmp_path / "ws" / "model")
    assert (tmp_path / "ws" / "model" / "deep" / "w.bin").read_bytes() == b"\x01\x02"


HOLD = """
import sys, time
from pathlib import Path
from mlnb._files import {how}
with {how}(Path(sys.argv[1])) as held:
    print("held" if held is None else f"busy {{held}}", flush=True)
    if held is None:
        sys.stdin.readline()  # hold it until told
"""


def _holder(path: Path, how: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(how=how), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0


def test_try_exclusive_names_the_process_that_holds_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "state" / "model.lock"
    holder = _holder(lock, "try_exclusive")
    try:
        with try_exclusive(lock) as held:
            assert held == holder.pid
    finally:
        _release(holder)
    with try_exclusive(lock) as held:  # free again once the holder let go
        assert held is None
        assert (lock.parent / "model.lock.pid").read_text() == str(os.getpid())
    assert not (lock.parent / "model.lock.pid").exists()


def test_exclusive_waits_for_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "store.db.lock"
    holder = _holder(lock, "exclusive")
    with try_exclusive(lock) as held:
        assert held == -1  # exclusive() holds it and records no pid
    releaser = threading.Timer(0.5, _release, [holder])
    started = time.monotonic()
    releaser.start()
    with exclusive(lock):
        waited = time.monotonic() - started
    releaser.join()
    assert waited >= 0.5
