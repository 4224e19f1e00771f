"""Attacks with bad input: every command answers with an error line, in bounded time and memory.

Each test runs the real ``mlnb`` command line in a subprocess on real files,
through a small wrapper that caps the child's address space (so a regression
fails the test instead of the machine) and reports the peak resident memory
of the command and everything it started (``RUSAGE_CHILDREN`` of the wrapper).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from mlnb.errors import ExitCode
from mlnb.specs.document import MAX_DEPTH

#: runs ``argv[2:]`` with its address space capped, then writes its peak RSS to ``argv[1]``
WRAPPER = """
import json, resource, subprocess, sys
cap = 3 << 30
done = subprocess.run(
    sys.argv[2:], preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
json.dump({"peak": peak}, open(sys.argv[1], "w"))
sys.exit(done.returncode)
"""
#: what a refused spec may cost the command that refuses it
SECONDS = 20
PEAK_BYTES = 400 * 2**20


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak: int  # bytes

    @property
    def said(self) -> str:
        return self.stdout + self.stderr


def mlnb(project, *args: str, prefix: tuple[str, ...] = (), timeout: float = 120) -> Done:
    """Run ``mlnb ARGS`` in the project, measured."""
    report = project.root.parent / "peak.json"
    command = [*prefix, sys.executable, "-c", WRAPPER, str(report)]
    command += [sys.executable, "-m", "mlnb.cli", *args]
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=project.root, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.monotonic() - started
    peak = json.loads(report.read_text())["peak"]
    return Done(done.returncode, done.stdout, done.stderr, seconds, peak)


def laughs(levels: int = 9, width: int = 9) -> str:
    """A "billion laughs" pipeline spec: 9 levels of 9 aliases each hold 9**9 strings."""
    rows = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    rows += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(
        [
            *rows,
            "name: bomb",
            "stages:",
            "  a:",
            "    notebook: notebooks/add_one.ipynb",
            f"    params: {{x: *l{levels - 1}}}",
            "",
        ]
    )


def deep(levels: int = 10_000) -> str:
    """A pipeline spec whose one parameter is nested ``levels`` lists deep."""
    return (
        "name: deep\nstages:\n  a:\n    notebook: notebooks/add_one.ipynb\n"
        f"    params: {{x: {'[' * levels}{']' * levels}}}\n"
    )


DUPLICATE = """\
name: dup
stages:
  a:
    notebook: notebooks/add_one.ipynb
  a:
    notebook: notebooks/nowhere.ipynb
"""

#: what each command exits with for a spec it refuses
REFUSED = {"check": ExitCode.FAILED, "run": ExitCode.INVALID}


def assert_one_error_line(done: Done, spec: Path, message: str) -> None:
    """The command refused ``spec`` with one line naming it, and no traceback."""
    assert "Traceback" not in done.said, done.said
    named = [line for line in done.said.splitlines() if str(spec.name) in line]
    assert len(named) == 1, done.said
    assert message in named[0], done.said


# -- specs that would exhaust or crash the reader ----------------------------------------


@pytest.mark.parametrize("command", REFUSED)
def test_a_billion_laughs_spec_is_refused_in_seconds_and_little_memory(
    project, command: str
) -> None:
    spec = project.spec(laughs(), "bomb.yaml")

    done = mlnb(project, command, "pipelines/bomb.yaml")

    assert done.returncode == REFUSED[command], done.said
    assert_one_error_line(
        done, spec, "pipelines/bomb.yaml: line 6: holds more than 100,000 values once its aliases"
    )
    assert done.seconds < SECONDS
    assert done.peak < PEAK_BYTES, f"{done.peak / 2**20:.0f} MB"


@pytest.mark.parametrize("command", REFUSED)
def test_a_spec_nested_ten_thousand_deep_is_refused_without_a_traceback(
    project, command: str
) -> None:
    spec = project.spec(deep(), "deep.yaml")

    done = mlnb(project, command, "pipelines/deep.yaml")

    assert done.returncode == REFUSED[command], done.said
    assert_one_error_line(
        done, spec, f"pipelines/deep.yaml: line 5: nested more than {MAX_DEPTH} levels deep"
    )
    assert done.seconds < SECONDS
    assert done.peak < PEAK_BYTES, f"{done.peak / 2**20:.0f} MB"


@pytest.mark.parametrize("command", REFUSED)
def test_a_key_written_twice_is_refused_naming_line_and_key(project, command: str) -> None:
    spec = project.spec(DUPLICATE, "dup.yaml")

    done = mlnb(project, command, "pipelines/dup.yaml")

    assert done.returncode == REFUSED[command], done.said
    assert_one_error_line(
        done, spec, "pipelines/dup.yaml: line 5: duplicate key 'a' (first at line 3)"
    )
    assert "nowhere.ipynb" not in done.said  # the second one did not silently win


def test_monitor_and_test_refuse_a_bomb_the_same_way(project) -> None:
    spec = project.spec(laughs(), "bomb.yaml")
    message = "pipelines/bomb.yaml: line 6: holds more than 100,000 values"

    monitor = mlnb(project, "monitor", "pipelines/bomb.yaml", "--once")
    tested = mlnb(project, "test", "pipelines/bomb.yaml", "--no-nbval")

    assert monitor.returncode == ExitCode.INVALID, monitor.said
    assert "1 problem in the monitor spec" in monitor.stderr
    assert_one_error_line(monitor, spec, message)
    assert tested.returncode == ExitCode.FAILED, tested.said
    assert "Traceback" not in tested.said
    assert message in tested.said
    for done in (monitor, tested):
        assert done.peak < PEAK_BYTES, f"{done.peak / 2**20:.0f} MB"


# -- spec files that are not text, not files, not readable, or empty ---------------------


def not_utf8(path: Path) -> str:
    path.write_bytes(b"name: caf\xe9\nstages: {}\n")
    return "line 1: not UTF-8 text (byte 0xe9); save the pipeline spec as UTF-8"


def a_folder(path: Path) -> str:
    path.mkdir()
    return "cannot read the pipeline spec: Is a directory"


def empty(path: Path) -> str:
    path.write_text("")
    return "a pipeline spec is a YAML mapping with 'name' and 'stages'"


@pytest.mark.parametrize("command", REFUSED)
@pytest.mark.parametrize("make", [not_utf8, a_folder, empty], ids=lambda f: f.__name__)
def test_a_spec_file_that_cannot_be_a_spec_is_one_error_line(project, command: str, make) -> None:
    spec = project.root / "pipelines" / "bad.yaml"
    message = make(spec)

    done = mlnb(project, command, "pipelines/bad.yaml")

    assert done.returncode == REFUSED[command], done.said
    assert_one_error_line(done, spec, f"pipelines/bad.yaml: {message}")


def without_file_rights() -> tuple[str, ...]:
    """A command prefix under which root, too, obeys file modes (nothing for others)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root reads any file, and setpriv is not here to drop that right")
    caps = "-dac_override,-dac_read_search"
    return (setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("check", "Path 'pipelines/locked.yaml' is not readable"),  # click checks the argument
        ("run", "pipelines/locked.yaml: cannot read the pipeline spec: Permission denied"),
    ],
)
def test_an_unreadable_spec_is_one_error_line(project, command: str, message: str) -> None:
    spec = project.spec(DUPLICATE, "locked.yaml")
    spec.chmod(0)
    try:
        done = mlnb(project, command, "pipelines/locked.yaml", prefix=without_file_rights())
    finally:
        spec.chmod(0o644)

    assert done.returncode == ExitCode.INVALID, done.said
    assert_one_error_line(done, spec, message)


# -- stages that print too much, or fail in IPython's own words --------------------------


LOUD = """
    name: loud
    stages:
      loud:
        notebook: notebooks/prints_a_lot.ipynb
        params: {megabytes: 40}
        outputs: {out_path: out.txt}
"""


def test_a_stage_printing_40_mb_keeps_10_mb_and_says_what_it_dropped(project) -> None:
    project.spec(LOUD)

    done = mlnb(project, "run", "--log-output", "pipelines/p.yaml", timeout=300)

    assert done.returncode == 0, done.said[-2000:]
    assert "timed out" not in done.said
    assert done.peak < 600 * 2**20, f"{done.peak / 2**20:.0f} MB"
    # forwarded: what the notebook keeps (10 MB), not the 40 MB printed
    assert 10_000_000 < len(done.stderr) < 12_000_000
    [executed] = (project.root / ".mlnb" / "runs").glob("*/loud.ipynb")
    texts = [
        out["text"]
        for cell in nbformat.read(executed, as_version=4).cells
        if cell.cell_type == "code"
        for out in cell.outputs
    ]
    notes = [t for t in texts if t.startswith("\n[mlnb: ")]
    assert notes == [
        "\n[mlnb: 32 MB of stdout dropped; the cell printed 42 MB, more than the 10 MB kept: "
        "its first 5 MB above, its last 5 MB below]\n"
    ]
    assert f"[loud] {notes[0].strip()}\n" in done.stderr  # the console's line for it
    assert 9_900_000 < sum(map(len, texts)) < 10_001_000


MAGIC = """
    name: magic
    stages:
      x:
        notebook: notebooks/unknown_magic.ipynb
"""


def test_an_unknown_magic_is_named_like_any_exception(project) -> None:
    project.spec(MAGIC)

    done = mlnb(project, "run", "pipelines/p.yaml")

    assert done.returncode == ExitCode.FAILED, done.said
    assert (
        "error: stage 'x' failed: cell 2 raised UsageError: "
        "Line magic function `%nosuchmagic` not found.\n"
    ) in done.stderr
    assert "CellExecutionError" not in done.said
    assert "Traceback" not in done.said
