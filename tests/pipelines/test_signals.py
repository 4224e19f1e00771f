"""signals_deferred: interrupts wait for the block, then do what they would have done.

Real signals, sent to this process with ``os.kill``; a default SIGTERM, which
ends the process it reaches, is sent to a child Python process instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from mlnb.pipelines.signals import signals_deferred
from tests.helpers import REPO


@pytest.fixture(autouse=True)
def handlers_kept() -> Iterator[None]:
    """Whatever a test installs, SIGINT and SIGTERM handle as before once it ends."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


class Recorder:
    """A Python signal handler that notes each signal it gets."""

    def __init__(self) -> None:
        self.got: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.got.append(signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_in_the_block_reaches_the_previous_handler_after_it(signum: int) -> None:
    previous = Recorder()
    signal.signal(signum, previous)
    seen_inside: list[int] = []

    with signals_deferred():
        os.kill(os.getpid(), signum)
        os.kill(os.getpid(), signum)  # sent twice, acted on once
        seen_inside.extend(previous.got)
        assert signal.getsignal(signum) is not previous

    assert seen_inside == []
    assert previous.got == [signum]
    assert signal.getsignal(signum) is previous


def test_the_default_sigint_handler_interrupts_once_the_block_is_done() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    steps: list[str] = []

    with pytest.raises(KeyboardInterrupt), signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("the block went on")

    assert steps == ["the block went on"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_default_sigterm_ends_the_process_after_the_block() -> None:
    script = textwrap.dedent(
        """
        import os, signal
        from mlnb.pipelines.signals import signals_deferred

        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            print("block done", flush=True)
        print("after the block", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == -signal.SIGTERM, done.stderr
    assert done.stdout == "block done\n"


def test_an_ignored_signal_stays_ignored() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    steps: list[str] = []

    with signals_deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        steps.append("inside")
    steps.append("after")

    assert steps == ["inside", "after"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_nothing_changes_outside_the_main_thread() -> None:
    previous = Recorder()
    signal.signal(signal.SIGTERM, previous)
    inside: list[object] = []
    failures: list[BaseException] = []

    def in_a_thread() -> None:
        try:
            with signals_deferred():
                inside.append(signal.getsignal(signal.SIGTERM))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    worker = threading.Thread(target=in_a_thread, name="not-main")
    worker.start()
    worker.join(timeout=10)

    assert failures == []
    assert inside == [previous]
    assert signal.getsignal(signal.SIGTERM) is previous
