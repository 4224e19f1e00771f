"""``mlnb run``: execute a pipeline, showing its stages as they run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from mlnb.cli.main import stops_on_sigterm, verbose
from mlnb.errors import PipelineError
from mlnb.store import redacted, redacted_text

_C = TypeVar("_C", bound=Callable[..., object])

if TYPE_CHECKING:
    from mlnb.models.gate import Decision
    from mlnb.pipelines.executors import Executor
    from mlnb.pipelines.results import PipelineResult


def executor_options(command: _C) -> _C:
    """``--executor local|dask`` and ``--scheduler``, for ``mlnb run`` and ``mlnb sweep``."""
    command = click.option(
        "--scheduler",
        metavar="ADDRESS",
        envvar="MLNB_SCHEDULER",
        help="The Dask scheduler for --executor dask (tcp://HOST:PORT) [env: MLNB_SCHEDULER].",
    )(command)
    return click.option(
        "--executor",
        type=click.Choice(["local", "dask"]),
        default="local",
        show_default=True,
        help="Where stage notebooks execute: kernels of this process, or Dask workers.",
    )(command)


def executor_factory(
    executor: str, scheduler: str | None, spec: Path
) -> Callable[[], Executor] | None:
    """What makes the executor ``--executor`` names for the pipeline at ``spec``; None: local."""
    if executor != "dask":
        return None
    from mlnb.pipelines.executors import dask_executor
    from mlnb.specs.pipeline import project_root
    from mlnb.store import state_dir

    state = state_dir(project_root(spec))
    return lambda: dask_executor(scheduler, state)


@click.command()
@click.argument("pipeline")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a parameter: KEY for every stage declaring it, STAGE.KEY for one stage.",
)
@click.option("--profile", help="Apply a named profile of the spec (e.g. ci).")
@click.option("--force", is_flag=True, help="Execute every stage, even those in the cache.")
@click.option(
    "--jobs",
    "-j",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Independent stages run at once.",
)
@click.option("--resume", metavar="RUN_ID", help="Continue a failed run in place.")
@click.option("--log-output", is_flag=True, help="Stream what the notebooks print.")
@click.option(
    "--no-promote",
    is_flag=True,
    help="Register the model version, but move no alias and run no gate.",
)
@executor_options
@verbose
@stops_on_sigterm
def run(
    pipeline: str,
    params: tuple[str, ...],
    profile: str | None,
    force: bool,
    jobs: int,
    resume: str | None,
    log_output: bool,
    no_promote: bool,
    executor: str,
    scheduler: str | None,
) -> None:
    """Execute PIPELINE (a spec file, or a name in pipelines/), tracked in MLflow.

    With a model section, the model becomes a new registered version
    (alias challenger) and the gate decides whether it becomes champion;
    its holdout and training data are stored with it in the store.
    """
    from mlnb.cli.console import reporter
    from mlnb.pipelines.locate import spec_path
    from mlnb.pipelines.runner import run_pipeline
    from mlnb.specs.pipeline import parse_assignments

    overrides = parse_assignments(params)
    path = spec_path(pipeline)
    make = executor_factory(executor, scheduler, path)
    stages = make() if make is not None else None
    show = reporter()
    try:
        result = run_pipeline(
            path,
            profile=profile,
            overrides=overrides,
            force=force,
            jobs=jobs,
            resume=resume,
            log_output=log_output,
            on_event=show,
            promote=not no_promote,
            executor=stages,
        )
    except PipelineError as error:
        show.close()
        if error.result is None:
            raise
        summary(error.result)
        for failure in error.result.failures:
            click.secho(f"error: {redacted_text(str(failure))}", fg="red", err=True)
        click.echo(
            f"pipeline run {error.result.run_id} {error.result.status} — resume it with: "
            f"mlnb run {pipeline} --resume {error.result.run_id}",
            err=True,
        )
        raise click.exceptions.Exit(error.exit_code) from None
    finally:
        show.close()
        if stages is not None:  # the run closed it, unless it never started
            stages.close()
    summary(result)


def summary(result: PipelineResult) -> None:
    """A finished run in a few lines: its stages, where it is, the model it delivered."""
    counts: dict[str, int] = {}
    for stage in result.stages:
        counts[stage.status] = counts.get(stage.status, 0) + 1
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    if result.up_to_date:
        click.echo(
            f"pipeline '{result.pipeline}' is up to date ({parts}): nothing executed, "
            "nothing recorded; --force executes every stage again"
        )
        click.echo(f"store:     {redacted(result.tracking_uri)}")
        click.echo(f"workspace: {result.workspace}")
        return
    click.echo(
        f"pipeline '{result.pipeline}' {result.status.lower()} in {result.seconds:.1f} s ({parts})"
    )
    click.echo(f"run id:    {result.run_id}")
    click.echo(f"store:     {redacted(result.tracking_uri)}")
    click.echo(f"see it:    {redacted_text(result.url)}")
    click.echo(f"workspace: {result.workspace}")
    if result.registration is not None:
        reg = result.registration
        how = "registered" if reg.created else "unchanged"
        alias = "alias challenger" if result.decision is not None else "no alias moved"
        click.echo(f"model:     {reg.name} version {reg.version} ({how}; {alias})")
    if result.decision is not None:
        decision(result.decision)


def decision(decided: Decision) -> None:
    """The gate's sentence, green when the version was promoted."""
    click.secho(f"gate:      {decided.reason}", fg="green" if decided.promoted else "yellow")


COMMANDS = [run]
