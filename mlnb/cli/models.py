"""``mlnb promote`` and ``mlnb ui``: the gate and aliases by hand, and the MLflow UI."""

from __future__ import annotations

from pathlib import Path

import click

from mlnb.cli.main import verbose
from mlnb.cli.pipelines import decision
from mlnb.errors import ExitCode, UsageError


@click.command()
@click.argument("model")
@click.option("--version", "version", help="The version to promote (default: the challenger).")
@click.option("--force", is_flag=True, help="Move champion without running the gate.")
@click.option("--rollback", is_flag=True, help="Return champion to the version before.")
@verbose
def promote(model: str, version: str | None, force: bool, rollback: bool) -> None:
    """Run the gate for MODEL, or move its champion alias by hand."""
    from mlnb.models.registry import CHAMPION, Registry
    from mlnb.store import tracking_uri

    if rollback and (version or force):
        raise UsageError("--rollback takes neither --version nor --force")
    registry = Registry(tracking_uri(Path.cwd()))
    decided = registry.promote(model, version, force=force, rollback=rollback)
    decision(decided)
    champion = registry.alias(model, CHAMPION)
    click.echo(f"champion:  {model} version {champion}" if champion else "champion:  none")
    if not decided.promoted:
        raise click.exceptions.Exit(ExitCode.REJECTED)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@verbose
def ui(host: str, port: int) -> None:
    """Start the MLflow UI on this project's store (stop it with Ctrl-C).

    A store that is an `mlflow server` (an http:// or https:// URI) has its
    own UI: that one is opened instead.
    """
    from mlnb.store import HTTP_SCHEMES, redacted, tracking_uri
    from mlnb.tracking import run_ui

    uri = tracking_uri(Path.cwd())
    if uri.split("://", 1)[0].lower() in HTTP_SCHEMES:
        import webbrowser

        page = redacted(uri).replace("***@", "")  # the browser asks for the credentials
        click.echo(f"the store is an MLflow server; its UI is at {page}", err=True)
        webbrowser.open(page)
        return
    click.echo(f"MLflow UI on http://{host}:{port} for {redacted(uri)} (Ctrl-C stops it)", err=True)
    raise click.exceptions.Exit(run_ui(uri, host, port))


COMMANDS = [promote, ui]
