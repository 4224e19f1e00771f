"""Holding interrupts while a step must not stop halfway.

A pipeline run ends by registering and gating its model, then ending its
MLflow run; the monitor's retrain does the same. A Ctrl-C or SIGTERM in the
middle would leave a registered version whose pipeline run still claims to be
running, so :func:`signals_deferred` holds both signals for the length of the
block and then acts on each as the handler it replaced would have: a Python
handler is called (the default SIGINT handler raises
:class:`KeyboardInterrupt`), a default disposition is re-raised so the process
ends as it would have, an ignored signal stays ignored.

Only the main thread may install signal handlers; elsewhere the block runs
unguarded (signals are delivered to the main thread anyway).

:func:`terminate_as_interrupt` makes SIGTERM stop ``mlnb run`` and ``mlnb
sweep`` as Ctrl-C does: a CI cancelling a job, a supervisor or the JupyterLab
panel's Stop send it, and a shell starts background commands with SIGINT
ignored, which Python then leaves ignored, while SIGTERM always arrives.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

#: the signals held: the two a person or a supervisor sends to stop mlnb
DEFERRED = (signal.SIGINT, signal.SIGTERM)

#: what :func:`signal.signal` returns: a Python handler, SIG_DFL / SIG_IGN, or
#: ``None`` for a handler installed outside Python
Handler = Callable[[int, FrameType | None], Any] | int | None


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then act on them.

    Each signal that arrived is acted on once, in the order they first came,
    after the previous handlers are back in place.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[signal.Signals] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signal.Signals(signum))

    previous: dict[signal.Signals, Handler] = {
        signum: signal.signal(signum, hold) for signum in DEFERRED
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(caught):
            _act_on(signum, previous[signum])


def _act_on(signum: signal.Signals, handler: Handler) -> None:
    """Do what ``handler`` would have done with ``signum``."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`KeyboardInterrupt` in the main thread while the block runs.

    The run then stops as on Ctrl-C: its stages' kernels are stopped and its
    MLflow runs end ``KILLED``; a model being registered is still finished
    first (:func:`signals_deferred` acts on the SIGTERM afterwards).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
