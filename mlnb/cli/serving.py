"""``mlnb serve`` and ``mlnb export-predictions``: the service and its prediction log."""

from __future__ import annotations

from pathlib import Path

import click

from mlnb.cli.main import verbose


@click.command()
@click.argument("model")
@click.option(
    "--alias", default="champion", show_default=True, help="The alias to serve and follow."
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--tokens",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="MLNB_SERVE_TOKENS",
    help="Tokens file, lines 'SCOPE TOKEN [NAME]' (scopes: predict, feedback); "
    "requests send 'Authorization: Bearer TOKEN' [env: MLNB_SERVE_TOKENS].",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Serve beyond loopback without tokens: anyone who reaches it may predict and label.",
)
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path),
    help="Prediction log folder [default: .mlnb/predictions].",
)
@click.option(
    "--poll-seconds",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="How often the alias is looked up.",
)
@verbose
def serve(
    model: str,
    alias: str,
    host: str,
    port: int,
    tokens: Path | None,
    insecure: bool,
    log_dir: Path | None,
    poll_seconds: float,
) -> None:
    """Serve MODEL's ALIAS version with MLflow's scoring protocol, following the alias."""
    from mlnb.serving.server import serve as run_service

    run_service(
        model,
        alias,
        host=host,
        port=port,
        log_dir=log_dir,
        poll_seconds=poll_seconds,
        tokens=tokens,
        insecure=insecure,
    )


@click.command("export-predictions")
@click.argument("target", type=click.Path(path_type=Path))
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path),
    help="Prediction log folder [default: .mlnb/predictions].",
)
@verbose
def export_predictions(target: Path, log_dir: Path | None) -> None:
    """Write the prediction log, with feedback labels joined, to TARGET (.csv or .parquet)."""
    from mlnb.predictions.log import default_log_dir, export

    rows = export(log_dir or default_log_dir(Path.cwd()), target)
    click.echo(f"{rows} predictions written to {target}")


COMMANDS = [serve, export_predictions]
