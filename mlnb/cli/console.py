"""How a pipeline run looks to a person: rich on a terminal, plain lines elsewhere.

This is presentation only; it turns :mod:`mlnb.pipelines.events` into output. On a
terminal a live table shows each stage's state, cells done of total and time
elapsed; off a terminal (CI logs) each event is one timestamped line. What a
notebook printed and why a stage failed are shown with the user info of any
URI in them as ``***`` (:func:`mlnb.store.redacted_text`).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

from mlnb.pipelines.events import (
    Event,
    RunStarted,
    StageFinished,
    StageOutput,
    StageProgress,
    StageStarted,
)
from mlnb.store import redacted_text

SYMBOLS = {
    "pending": "·",
    "running": "▶",
    "succeeded": "✔",
    "cached": "↺",
    "reused": "↺",
    "failed": "✘",
    "skipped": "–",
    "killed": "✘",
}


class PlainReporter:
    """One line per event, for logs."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self.lock:
            self.stream.write(f"{time.strftime('%H:%M:%S')} {redacted_text(text)}\n")
            self.stream.flush()

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            verb = "resuming" if event.resumed else "running"
            self._line(
                f"{verb} pipeline '{event.pipeline}' ({len(event.stages)} stages), "
                f"run {event.run_id}"
            )
        elif isinstance(event, StageStarted):
            self._line(f"[{event.stage}] started")
        elif isinstance(event, StageOutput):
            with self.lock:
                for line in redacted_text(event.text).splitlines():
                    self.stream.write(f"[{event.stage}] {line}\n")
                self.stream.flush()
        elif isinstance(event, StageFinished):
            detail = ""
            if event.status == "cached":
                detail = f" from run {event.source_run_id}"
            elif event.status == "failed" and event.error:
                detail = f": {event.error.splitlines()[0]}"
            timing = f" in {event.seconds:.1f} s" if event.seconds else ""
            self._line(f"[{event.stage}] {event.status}{timing}{detail}")

    def close(self) -> None:
        """Nothing to tear down."""


class LiveReporter:
    """A live table of stages on a terminal (rich)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = console or Console(stderr=True)
        self.rows: dict[str, dict[str, Any]] = {}
        self.title = ""
        self.lock = threading.Lock()
        self.live = Live(
            self._render(),
            console=self.console,
            refresh_per_second=8,
            transient=False,
            get_renderable=self._render,
        )
        self.live.start()

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        table.add_column("", width=1)
        table.add_column("stage")
        table.add_column("state")
        table.add_column("cells", justify="right")
        table.add_column("time", justify="right")
        now = time.monotonic()
        with self.lock:
            rows = list(self.rows.items())
        for name, row in rows:
            elapsed = row.get("seconds")
            if elapsed is None and row.get("start") is not None:
                elapsed = now - row["start"]
            cells = f"{row['done']}/{row['total']}" if row.get("total") else ""
            style = {
                "failed": "red",
                "killed": "red",
                "succeeded": "green",
                "cached": "cyan",
                "reused": "cyan",
                "running": "yellow",
            }.get(row["state"], "")
            table.add_row(
                SYMBOLS.get(row["state"], " "),
                name,
                f"[{style}]{row['state']}[/]" if style else row["state"],
                cells,
                f"{elapsed:.1f} s" if elapsed is not None else "",
            )
        return table

    def __call__(self, event: Event) -> None:
        with self.lock:
            if isinstance(event, RunStarted):
                self.title = f"{event.pipeline} · run {event.run_id}"
                for stage in event.stages:
                    self.rows.setdefault(stage, {"state": "pending"})
            elif isinstance(event, StageStarted):
                self.rows[event.stage] = {
                    "state": "running",
                    "start": time.monotonic(),
                    "done": 0,
                    "total": 0,
                }
            elif isinstance(event, StageProgress):
                row = self.rows.setdefault(event.stage, {"state": "running"})
                row["done"], row["total"] = event.done, event.total
            elif isinstance(event, StageFinished):
                row = self.rows.setdefault(event.stage, {})
                row["state"] = event.status
                row["seconds"] = event.seconds if event.status != "skipped" else None
                row["start"] = None
        if isinstance(event, StageOutput):
            text = redacted_text(event.text).rstrip("\n")
            if text:
                self.console.print(
                    f"[dim]\\[{event.stage}][/] {text}", highlight=False, markup=True
                )

    def close(self) -> None:
        """Draw the final state and stop refreshing."""
        self.live.stop()


def reporter(interactive: bool | None = None) -> PlainReporter | LiveReporter:
    """The reporter for this output: live on a terminal, plain lines otherwise."""
    if interactive is None:
        interactive = sys.stderr.isatty()
    return LiveReporter() if interactive else PlainReporter()
