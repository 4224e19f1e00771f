"""Time the parts of a path by wrapping the functions it calls, in this process only.

The benchmarks use it to say where a figure's time goes without changing
mlnb: :meth:`Clock.wrap` replaces a function, method or coroutine function by
one that adds its wall-clock time to a label, and :meth:`Clock.restore` puts
the originals back. :meth:`Clock.take` gives the times by label;
:meth:`Clock.take_by_thread` by label and the kind of thread that spent them
(its name up to the first ``_``: ``MainThread``, ``mlnb-stage``, ...).
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections import defaultdict
from typing import Any


class Clock:
    """Adds up the time spent in wrapped functions, by label, until :meth:`take`."""

    def __init__(self) -> None:
        self.parts: dict[tuple[str, str], float] = defaultdict(float)
        self._undo: list[tuple[Any, str, Any, bool]] = []
        self._lock = threading.Lock()

    def wrap(self, owner: Any, name: str, label: str) -> None:
        had = name in vars(owner)
        original = getattr(owner, name)

        def add(start: float) -> None:
            elapsed = time.perf_counter() - start
            thread = threading.current_thread().name.split("_")[0]
            with self._lock:
                self.parts[label, thread] += elapsed

        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    add(start)

            setattr(owner, name, timed_async)
        else:

            @functools.wraps(original)
            def timed(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    add(start)

            setattr(owner, name, timed)
        self._undo.append((owner, name, original, had))

    def take_by_thread(self) -> dict[tuple[str, str], float]:
        """Seconds by (label, thread kind) since the last take; the clock starts again."""
        with self._lock:
            parts, self.parts = dict(self.parts), defaultdict(float)
        return parts

    def take(self) -> dict[str, float]:
        """Seconds by label since the last take; the clock starts again."""
        found: dict[str, float] = defaultdict(float)
        for (label, _), seconds in self.take_by_thread().items():
            found[label] += seconds
        return dict(found)

    def restore(self) -> None:
        for owner, name, original, had in reversed(self._undo):
            if had:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._undo.clear()
