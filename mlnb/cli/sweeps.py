"""``mlnb sweep``: a pipeline's ``sweep:`` section run as trials, the best one gated."""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from mlnb.cli.main import stops_on_sigterm, verbose
from mlnb.cli.pipelines import executor_factory, executor_options
from mlnb.errors import ExitCode
from mlnb.store import redacted_text

if TYPE_CHECKING:
    from mlnb.pipelines.sweep import SweepEvent, SweepResult, Trial

STYLE = {"finished": "green", "failed": "red", "killed": "red", "running": "yellow"}


@click.command()
@click.argument("pipeline")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a parameter of every trial (not one the sweep varies).",
)
@click.option("--profile", help="Apply a named profile of the spec to every trial (e.g. ci).")
@click.option(
    "--jobs",
    "-j",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Trials run at once (after the first, which fills the cache for the rest).",
)
@click.option("--trials", type=click.IntRange(min=1), help="Run at most this many trials.")
@click.option("--resume", metavar="SWEEP_RUN", help="Finish the trials a sweep did not finish.")
@click.option(
    "--no-promote",
    is_flag=True,
    help="Register the best trial's model, but move no alias and run no gate.",
)
@executor_options
@verbose
@stops_on_sigterm
def sweep(
    pipeline: str,
    params: tuple[str, ...],
    profile: str | None,
    jobs: int,
    trials: int | None,
    resume: str | None,
    no_promote: bool,
    executor: str,
    scheduler: str | None,
) -> None:
    """Run the sweep: section of PIPELINE, each trial a pipeline run nested in one sweep run.

    The best trial (by the sweep's metric and goal) has its model registered,
    aliased challenger and gated against the champion. Exits 0 when every
    trial finished, 1 when some failed (the best of the others is still
    delivered), 3 when the gate kept the champion.
    """
    from mlnb.pipelines.locate import spec_path
    from mlnb.pipelines.sweep import run_sweep
    from mlnb.specs.pipeline import parse_assignments

    path = spec_path(pipeline)
    make = executor_factory(executor, scheduler, path)
    show = TrialTable() if sys.stderr.isatty() else TrialLines()
    interrupt = threading.Event()
    try:
        result = run_sweep(
            path,
            profile=profile,
            overrides=parse_assignments(params),
            jobs=jobs,
            resume=resume,
            promote=not no_promote,
            max_trials=trials,
            executor=make,
            on_event=show,
            interrupt=interrupt,
        )
    finally:
        show.close()
    ranking(result)
    if result.status == "KILLED":
        click.secho(
            f"interrupted — finish it with: mlnb sweep {pipeline} --resume {result.run_id}",
            fg="red",
            err=True,
        )
        raise click.exceptions.Exit(ExitCode.INTERRUPTED)
    if result.failed:
        for trial in result.failed:
            click.secho(
                f"error: trial {trial.number} {format_params(trial.params)}: "
                f"{redacted_text(trial.error or '')}",
                fg="red",
                err=True,
            )
        click.echo(f"finish them with: mlnb sweep {pipeline} --resume {result.run_id}", err=True)
        raise click.exceptions.Exit(ExitCode.FAILED)
    if result.decision is not None and not result.decision.promoted:
        raise click.exceptions.Exit(ExitCode.REJECTED)


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def ranking(result: SweepResult) -> None:
    """The finished trials best first, and what became of the best one's model."""
    ranked = result.ranking()
    click.echo(
        f"sweep of '{result.pipeline}' {result.status.lower()} in {result.seconds:.1f} s: "
        f"{len(ranked)} of {len(result.trials)} trials finished, ranked by "
        f"{result.metric} ({result.goal})"
    )
    for place, trial in enumerate(ranked, 1):
        click.echo(
            f"  {place:>3}. trial {trial.number:<3} {result.metric} = {trial.value:.6g}   "
            f"{format_params(trial.params)}"
        )
    click.echo(f"sweep run: {result.run_id}")
    click.echo(f"see it:    {redacted_text(result.url)}")
    if result.registration is not None:
        reg = result.registration
        alias = "alias challenger" if result.decision is not None else "no alias moved"
        click.echo(
            f"model:     {reg.name} version {reg.version} from trial "
            f"{result.best.number if result.best else '?'} ({alias})"
        )
    if result.decision is not None:
        decided = result.decision
        click.secho(f"gate:      {decided.reason}", fg="green" if decided.promoted else "yellow")


class TrialLines:
    """One line per trial that starts or ends (CI logs, pipes)."""

    def __call__(self, event: SweepEvent) -> None:
        from mlnb.pipelines.sweep import SweepStarted

        if isinstance(event, SweepStarted):
            how = "resumed" if event.resumed else "started"
            click.echo(
                f"sweep of '{event.pipeline}' {how}: {event.total} trials by {event.metric} "
                f"({event.goal}), run {event.run_id}",
                err=True,
            )
            return
        trial = event.trial
        said = f"trial {trial.number} {trial.status}"
        if trial.value is not None:
            said += f" ({trial.value:.6g})"
        if trial.status != "running":
            said += f" in {trial.seconds:.1f} s"
        click.echo(f"{said}: {format_params(trial.params)}", err=True)

    def close(self) -> None:
        pass


class TrialTable:
    """A live table of the trials on a terminal (rich): parameters, state, metric, time."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self.keys: tuple[str, ...] = ()
        self.metric = ""
        self.trials: dict[int, Trial] = {}
        self.started: dict[int, float] = {}
        self.lock = threading.Lock()
        self.live = Live(console=self.console, refresh_per_second=4, get_renderable=self._render)
        self.live.start()

    def _render(self) -> Any:
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        for column in ("trial", *self.keys, "state", self.metric or "metric", "time"):
            table.add_column(column, justify="right" if column != "state" else "left")
        now = time.monotonic()
        with self.lock:
            rows = sorted(self.trials.values(), key=lambda t: t.number)
            started = dict(self.started)
        for trial in rows:
            seconds = trial.seconds
            if trial.status == "running" and trial.number in started:
                seconds = now - started[trial.number]
            style = STYLE.get(trial.status, "")
            table.add_row(
                str(trial.number),
                *(str(trial.params.get(k, "")) for k in self.keys),
                f"[{style}]{trial.status}[/]" if style else trial.status,
                f"{trial.value:.6g}" if trial.value is not None else "",
                f"{seconds:.1f} s" if seconds else "",
            )
        return table

    def __call__(self, event: SweepEvent) -> None:
        from mlnb.pipelines.sweep import SweepStarted

        with self.lock:
            if isinstance(event, SweepStarted):
                self.keys, self.metric = event.keys, event.metric
                self.trials.update({t.number: t for t in event.trials})
                return
            trial = event.trial
            self.trials[trial.number] = trial
            if trial.status == "running":
                self.started[trial.number] = time.monotonic()

    def close(self) -> None:
        self.live.stop()


COMMANDS = [sweep]
