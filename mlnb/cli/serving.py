"""``mlnb serve`` and ``mlnb export-predictions``: the service and its prediction log."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlnb.cli.main import verbose
from mlnb.cli.predictions import RETENTION
from mlnb.serving import MAX_BODY_BYTES, TIMEOUT_SECONDS

if TYPE_CHECKING:
    from mlnb.predictions.retention import Retention
    from mlnb.serving.challenger import Challenger


class ChallengerType(click.ParamType):
    """``--shadow TARGET`` or ``--canary TARGET:PERCENT%``: an alias or version of MODEL.

    A bad value is click's usage error (exit 2) naming the option and the form that works.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.name = "ALIAS|VERSION" if mode == "shadow" else "ALIAS:PERCENT%"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from mlnb.serving.challenger import CANARY, SHADOW, Challenger

        if isinstance(value, Challenger):
            return value
        try:
            return Challenger.parse(SHADOW if self.mode == "shadow" else CANARY, str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


@click.command()
@click.argument("model", required=False)
@click.option(
    "-m",
    "--model-uri",
    help="What to serve, as mlflow models serve takes it: models:/NAME@ALIAS (following the "
    "alias) or models:/NAME/VERSION (that version only).",
)
@click.option(
    "--alias", default="champion", show_default=True, help="The alias of MODEL to serve and follow."
)
@click.option("-h", "--host", default="127.0.0.1", show_default=True)
@click.option("-p", "--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "-w",
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    envvar="MLFLOW_MODELS_WORKERS",
    help="Server processes on the port, each following the alias, one prediction log.",
)
@click.option(
    "-t",
    "--timeout",
    default=TIMEOUT_SECONDS,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    envvar="MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT",
    help="Seconds a request may be scored; then 504.",
)
@click.option(
    "--max-body-bytes",
    default=MAX_BODY_BYTES,
    show_default=True,
    type=click.IntRange(min=1),
    help="The largest request body taken; larger: 413.",
)
@click.option(
    "--env-manager",
    type=click.Choice(["local"]),
    hidden=True,
    help="Accepted for mlflow models serve's command lines: mlnb serves in its own environment.",
)
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
    help="Prediction log folder [default: predictions/ in the state folder].",
)
@click.option(
    "--log-retention",
    type=RETENTION,
    help="What the prediction log keeps: an age (30d), a size (2GB) or both (30d,2GB); closed "
    "days are gzipped, older ones deleted [default: everything].",
)
@click.option(
    "--shadow",
    type=ChallengerType("shadow"),
    help="Also score every request with this alias or version of MODEL (e.g. challenger), off "
    "the request's path: its predictions are logged, the champion answers.",
)
@click.option(
    "--canary",
    type=ChallengerType("canary"),
    help="Answer a share of the requests with this alias or version (e.g. challenger:10%), "
    "chosen by a hash of the X-Request-Key header (else the request id).",
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
    model: str | None,
    model_uri: str | None,
    alias: str,
    host: str,
    port: int,
    workers: int,
    timeout: float,
    max_body_bytes: int,
    env_manager: str | None,
    tokens: Path | None,
    insecure: bool,
    log_dir: Path | None,
    log_retention: Retention | None,
    shadow: Challenger | None,
    canary: Challenger | None,
    poll_seconds: float,
) -> None:
    """Serve MODEL's ALIAS version (or -m MODEL_URI) with MLflow's scoring protocol."""
    from mlnb.serving.server import serve as run_service

    if (model is None) == (model_uri is None):
        raise click.UsageError(
            "name the model to serve once: MODEL (with --alias), or -m models:/NAME@ALIAS "
            "or -m models:/NAME/VERSION"
        )
    if model_uri is not None and not model_uri.startswith("models:/"):
        raise click.BadParameter(
            f"'{model_uri}' is not a registered model's URI; mlnb serves models:/NAME@ALIAS "
            "or models:/NAME/VERSION",
            param_hint="'-m'",
        )
    if shadow is not None and canary is not None:
        raise click.UsageError(
            "give --shadow or --canary, not both: a service scores one challenger beside its "
            "champion"
        )
    run_service(
        model_uri or str(model),
        alias,
        host=host,
        port=port,
        log_dir=log_dir,
        poll_seconds=poll_seconds,
        tokens=tokens,
        insecure=insecure,
        timeout=timeout,
        max_body_bytes=max_body_bytes,
        workers=workers,
        log_retention=log_retention,
        shadow=str(shadow) if shadow is not None else None,
        canary=str(canary) if canary is not None else None,
    )


@click.command("export-predictions")
@click.argument("target", type=click.Path(path_type=Path))
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path),
    help="Prediction log folder [default: predictions/ in the state folder].",
)
@verbose
def export_predictions(target: Path, log_dir: Path | None) -> None:
    """Write the prediction log, with feedback labels joined, to TARGET (.csv or .parquet)."""
    from mlnb.predictions.log import default_log_dir, export

    rows = export(log_dir or default_log_dir(Path.cwd()), target)
    click.echo(f"{rows} predictions written to {target}")


COMMANDS = [serve, export_predictions]
