"""``mlnb monitor`` and ``mlnb status``: continuous training, and what it has done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mlnb.cli.main import verbose
from mlnb.tags import ModelDecision, OnlineDecision

if TYPE_CHECKING:
    from mlnb.monitoring.status import ModelStatus, OnlineLine


@click.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--once", is_flag=True, help="Run one check, then exit with a code that tells.")
@verbose
def monitor(spec: Path, once: bool) -> None:
    """Check the model of monitor SPEC on its schedule; retrain when a trigger fires.

    Each check runs the drift notebook on the recent predictions, scores the
    labeled ones, and retrains, gates and promotes when drift, performance or
    the schedule calls for it. Ctrl-C or SIGTERM stops after the current check
    (a second one aborts it; a model is never left half-registered).

    \b
    Exit codes of --once:
      0  no trigger fired
      1  the check or the retrain failed
      3  retrained; the champion stays (the gate rejected the new version,
         or it passed and promotion is manual: a person runs mlnb promote,
         or online: the live comparison decides)
      4  retrained, or promoted on live evidence; the new version is champion
      5  a trigger fired but no retrain started (cooldown, one running, no
         labels, or suspicious labels)
    """
    from mlnb.monitoring.runner import watch
    from mlnb.pipelines.locate import load_monitor, spec_path

    loaded = load_monitor(spec_path(spec))
    code = watch(loaded, once=once, say=lambda line: click.echo(line, err=True))
    raise click.exceptions.Exit(code)


@click.command()
@click.argument("models", nargs=-1)
@click.option("--checks", default=3, show_default=True, help="How many recent checks to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@verbose
def status(models: tuple[str, ...], checks: int, as_json: bool) -> None:
    """For each registered model (or MODELS): what serves, its figures, recent checks, retrains."""
    from mlnb.monitoring.status import gather

    found = gather(Path.cwd(), list(models), checks=checks)
    if as_json:
        click.echo(json.dumps([m.as_dict() for m in found], indent=2, default=str))
    else:
        render(found)


def render(models: list[ModelStatus]) -> None:
    """Print the status for a person (rich on a terminal, plain text in a log)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not models:
        console.print("no registered models yet: `mlnb run` a pipeline with a model: section")
        return
    for model in models:
        console.rule(f"[bold]{model.name}")
        if model.champion is None:
            console.print("champion: none yet")
        else:
            score = (
                f", {model.champion_metric} {model.champion_score:.4f}"
                if model.champion_score is not None
                else ""
            )
            why = f" — trained on {model.champion_trigger}" if model.champion_trigger else ""
            if model.champion_reason:
                why += f" ({model.champion_reason})"
            console.print(f"champion: v{model.champion}{score}{why}")
        if model.challenger and model.challenger != model.champion:
            console.print(_challenger(model))
        if model.online is not None:
            console.print(online_line(model.online))
        if model.served_version is not None:
            console.print(f"serving: v{model.served_version} (last prediction {model.served_at})")
        else:
            console.print("serving: no prediction logged yet")
        if model.checks:
            table = Table(title="recent checks", title_justify="left", show_edge=False)
            for column in ("time (UTC)", "version", "drift", "labels", "figures", "decision"):
                table.add_column(column)
            for line in model.checks:
                figures = ", ".join(f"{k} {v:.4g}" for k, v in sorted(line.metrics.items()))
                table.add_row(
                    line.time, f"v{line.version}", line.drift, line.labels, figures, line.decision
                )
            console.print(table)
        else:
            console.print("checks: none yet (`mlnb monitor pipelines/monitor.yaml`)")
        if model.retrain is not None:
            r = model.retrain
            version = f" → v{r.version}" if r.version else ""
            console.print(f"last retrain: {r.time} UTC, {r.status}{version}: {r.reason}")
            if r.evidence:
                console.print(f"  because {r.evidence}")


def _challenger(model: ModelStatus) -> str:
    """The challenger's line: what the gate made of it, and who acts when promotion is manual."""
    line = f"challenger: v{model.challenger}"
    if model.challenger_reason:
        line += f" — {model.challenger_reason}"
    if model.challenger_online_reason and model.challenger_online != OnlineDecision.COMPARED:
        line += f"\n  online: {model.challenger_online_reason}"
    elif model.challenger_decision == ModelDecision.PASSED:
        line += (
            f"\n  awaiting a person (promotion is manual): mlnb promote {model.name} "
            f"--version {model.challenger}, or move the alias champion in the MLflow UI"
        )
    return line


def online_line(line: OnlineLine) -> str:
    """The newest live comparison: both values, the interval, the counts, the mode."""
    head = f"online ({line.mode}, {line.time} UTC): challenger v{line.challenger}"
    ours, theirs = line.figure(f"champion_{line.metric}"), line.figure(f"challenger_{line.metric}")
    if line.mode == "canary":
        counts = (
            f"{line.figure('challenger_labels') or 0:.0f} canary and "
            f"{line.figure('champion_labels') or 0:.0f} champion labels"
        )
    else:
        counts = f"{line.figure('labels') or 0:.0f} paired labels"
    low, high, p = line.figure("ci_low"), line.figure("ci_high"), line.figure("p_value")
    if ours is None or theirs is None or low is None or high is None:
        return f"{head} against champion v{line.champion} on {counts} — {line.reason}"
    return (
        f"{head} {line.metric} {theirs:.4f} against champion v{line.champion} {ours:.4f}, "
        f"difference {line.figure('difference') or 0:+.4f} (CI {low:+.4f} to {high:+.4f}, "
        f"p={p or 0:.3g}) on {counts} — {line.decision}: {line.reason}"
    )


COMMANDS = [monitor, status]
