"""``mlnb predictions``: the prediction log's upkeep (``prune``), and the retention option type."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlnb.cli.main import fail, verbose

if TYPE_CHECKING:
    from mlnb.predictions.retention import Maintenance, Retention


class RetentionType(click.ParamType):
    """A retention setting as a click option: ``30d``, ``4w``, ``500MB``, ``30d,2GB``.

    A bad value is click's usage error (exit 2) with the reason and examples.
    """

    name = "retention"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from mlnb.predictions.retention import Retention, RetentionError

        if isinstance(value, Retention):
            return value
        try:
            return Retention.parse(str(value))
        except RetentionError as error:
            self.fail(str(error), param, ctx)


#: the type of every option that takes a retention setting
RETENTION = RetentionType()


@click.group()
@verbose
def predictions() -> None:
    """Look after the prediction log that `mlnb serve` writes."""


@predictions.command()
@click.option(
    "--retention",
    required=True,
    type=RETENTION,
    help="What to keep: an age (30d, 4w), a total size (500MB, 2GiB) or both (30d,2GB).",
)
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Prediction log folder [default: predictions/ in the state folder].",
)
@click.option(
    "--dry-run", is_flag=True, help="Say what would be compressed and deleted; do neither."
)
@verbose
def prune(retention: Retention, log_dir: Path | None, dry_run: bool) -> None:
    """Gzip the closed days of the prediction log and delete the days outside RETENTION.

    Days are UTC days: 30d keeps today and the 29 days before it; a size keeps
    the newest days that fit together, and today always. Safe beside a running
    `mlnb serve`: one process works on the log at a time.
    """
    from mlnb.predictions.log import default_log_dir
    from mlnb.predictions.retention import maintain

    folder = log_dir or default_log_dir(Path.cwd())
    done = maintain(folder, retention, datetime.now(UTC), dry_run=dry_run)
    if done.locked_by is not None:
        who = f"process {done.locked_by}" if done.locked_by > 0 else "another process"
        fail(f"{who} is maintaining the prediction log at {folder} right now; try again")
    show(done)


def show(done: Maintenance) -> None:
    """Print what a round of maintenance did (or would do) for a person."""
    would = "would " if done.dry_run else ""
    kept, freed = ("would keep", "would free") if done.dry_run else ("kept", "freed")
    for compressed in done.compressed:
        click.echo(
            f"{would}compress {compressed.source.name} "
            f"({_size(compressed.size)} -> {_size(compressed.packed)})"
        )
    if done.pruned is not None:
        for path in done.pruned.deleted:
            click.echo(f"{would}delete {path.name}")
        days = done.pruned.kept
        if days:
            plural = "s" if len(days) != 1 else ""
            span = f"{days[0]} to {days[-1]}" if len(days) > 1 else days[0]
            click.echo(f"{kept} {len(days)} day{plural}, {span} ({_size(done.pruned.kept_bytes)})")
        else:
            click.echo(f"{kept} no day files")
    click.echo(f"{freed} {_size(done.freed)}")


def _size(count: int) -> str:
    """Bytes for a person, in the powers of 1000 a retention's MB and GB mean."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


COMMANDS = [predictions]
