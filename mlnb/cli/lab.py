"""``mlnb lab``: JupyterLab on the project, its notebooks logging to the project's store."""

from __future__ import annotations

from pathlib import Path

import click

from mlnb.cli.main import verbose


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", type=click.IntRange(1, 65535), help="The port [default: JupyterLab's].")
@click.option("--no-browser", is_flag=True, help="Do not open a browser.")
@click.argument("jupyter_args", nargs=-1, type=click.UNPROCESSED)
@verbose
def lab(port: int | None, no_browser: bool, jupyter_args: tuple[str, ...]) -> None:
    """Start JupyterLab in this project with its MLflow store (stop it with Ctrl-C).

    Notebooks run by hand log to the store `mlnb run` uses; the mlnb panel in
    the left sidebar shows pipelines, runs and models. Further arguments go
    to JupyterLab (e.g. --ServerApp.ip=0.0.0.0). Needs mlnb[lab].
    """
    from mlnb.lab.app import run_lab

    raise click.exceptions.Exit(run_lab(Path.cwd(), port, not no_browser, jupyter_args))


COMMANDS = [lab]
