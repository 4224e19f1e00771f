"""The ``mlnb`` command line: a thin click adapter.

Each command parses its options, calls one library function and turns an
:class:`~mlnb.errors.MlnbError` into a clear message and an exit code. Heavy
modules are imported inside the commands, so ``mlnb --help`` stays fast and
never imports MLflow.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from mlnb import __version__
from mlnb.errors import MlnbError, PipelineError

EXIT_INTERRUPTED = 130


def _fail(error: MlnbError, verbose: bool) -> NoReturn:
    if verbose:
        import traceback

        traceback.print_exception(error)
    click.secho(f"error: {error}", fg="red", err=True)
    sys.exit(error.exit_code)


def _spec_path(value: str) -> Path:
    """A spec path, or a pipeline name found as pipelines/<name>.yaml."""
    path = Path(value)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    for suffix in (".yaml", ".yml"):
        candidate = Path("pipelines") / f"{value}{suffix}"
        if candidate.exists():
            return candidate
    return path


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlnb")
def main() -> None:
    """CI/CD and continuous training for ML pipelines whose stages are notebooks."""


@main.command()
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
    "--no-promote", is_flag=True, help="Register the model as challenger without running the gate."
)
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")
def run(
    pipeline: str,
    params: tuple[str, ...],
    profile: str | None,
    force: bool,
    jobs: int,
    resume: str | None,
    log_output: bool,
    no_promote: bool,
    verbose: bool,
) -> None:
    """Execute PIPELINE (a spec file, or a name in pipelines/), tracked in MLflow.

    With a model section, the model becomes a new registered version
    (alias challenger) and the gate decides whether it becomes champion.
    """
    from mlnb.console import reporter
    from mlnb.pipeline import run_pipeline
    from mlnb.spec import parse_assignments

    show = None
    try:
        overrides = parse_assignments(params)
        show = reporter()
        result = run_pipeline(
            _spec_path(pipeline),
            profile=profile,
            overrides=overrides,
            force=force,
            jobs=jobs,
            resume=resume,
            log_output=log_output,
            on_event=show,
            promote=not no_promote,
        )
    except KeyboardInterrupt:
        if show is not None:
            show.close()
        click.secho("interrupted", fg="red", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except PipelineError as error:
        if show is not None:
            show.close()
        result = getattr(error, "result", None)
        if result is None:
            _fail(error, verbose)
        _summary(result)
        for failure in result.failures:
            click.secho(f"error: {failure}", fg="red", err=True)
        click.echo(
            f"pipeline run {result.run_id} {result.status} — resume it with: "
            f"mlnb run {pipeline} --resume {result.run_id}",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED if result.status == "KILLED" else 1)
    except MlnbError as error:
        if show is not None:
            show.close()
        _fail(error, verbose)
    show.close()
    _summary(result)


def _summary(result: Any) -> None:
    counts: dict[str, int] = {}
    for stage in result.stages:
        counts[stage.status] = counts.get(stage.status, 0) + 1
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    click.echo(
        f"pipeline '{result.pipeline}' {result.status.lower()} in {result.seconds:.1f} s ({parts})"
    )
    click.echo(f"run id:    {result.run_id}")
    click.echo(f"store:     {result.tracking_uri}")
    click.echo(f"see it:    {result.url}")
    click.echo(f"workspace: {result.workspace}")
    if result.registration is not None:
        reg = result.registration
        how = "registered" if reg.created else "unchanged"
        click.echo(f"model:     {reg.name} version {reg.version} ({how}; alias challenger)")
    if result.decision is not None:
        _decision(result.decision)


def _decision(decision: Any) -> None:
    colour = "green" if decision.promoted else "yellow"
    click.secho(f"gate:      {decision.reason}", fg=colour)


@main.command()
@click.argument("model")
@click.option("--version", "version", help="The version to promote (default: the challenger).")
@click.option("--force", is_flag=True, help="Move champion without running the gate.")
@click.option("--rollback", is_flag=True, help="Return champion to the version before.")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")
def promote(model: str, version: str | None, force: bool, rollback: bool, verbose: bool) -> None:
    """Run the gate for MODEL, or move its champion alias by hand."""
    from mlnb.registry import CHALLENGER, Registry, RegistryError
    from mlnb.store import tracking_uri

    try:
        registry = Registry(tracking_uri(Path.cwd()))
        registry.require(model)
        if rollback:
            if version or force:
                raise RegistryError("--rollback takes neither --version nor --force")
            decision = registry.rollback(model)
        else:
            target = version or registry.alias(model, CHALLENGER)
            if target is None:
                raise RegistryError(f"'{model}' has no challenger; name a version with --version")
            if force:
                decision = registry.set_champion(model, target, f"v{target} promoted by hand")
            else:
                decision = registry.gate(model, target)
    except MlnbError as error:
        _fail(error, verbose)
    _decision(decision)
    champion = registry.alias(model, "champion")
    click.echo(f"champion:  {model} version {champion}" if champion else "champion:  none")
    if not decision.promoted:
        sys.exit(3)


@main.command()
@click.argument("model")
@click.option(
    "--alias", default="champion", show_default=True, help="The alias to serve and follow."
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path),
    help="Prediction log folder [default: .mlnb/predictions].",
)
@click.option(
    "--poll-seconds",
    default=1.0,
    show_default=True,
    type=float,
    help="How often the alias is looked up.",
)
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")
def serve(
    model: str,
    alias: str,
    host: str,
    port: int,
    log_dir: Path | None,
    poll_seconds: float,
    verbose: bool,
) -> None:
    """Serve MODEL's ALIAS version with MLflow's scoring protocol, following the alias."""
    from mlnb.serve import serve as run_service

    try:
        run_service(model, alias, host=host, port=port, log_dir=log_dir, poll_seconds=poll_seconds)
    except MlnbError as error:
        _fail(error, verbose)


@main.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--once", is_flag=True, help="Run one check, then exit with a code that tells.")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")
def monitor(spec: Path, once: bool, verbose: bool) -> None:
    """Check the model of monitor SPEC on its schedule; retrain when a trigger fires.

    Each check runs the drift notebook on the recent predictions, scores the
    labeled ones, and retrains, gates and promotes when drift, performance or
    the schedule calls for it. Ctrl-C or SIGTERM stops after the current check
    (a second one aborts it; a model is never left half-registered).

    \b
    Exit codes of --once:
      0  no trigger fired
      1  the check or the retrain failed
      3  retrained; the gate kept the champion
      4  retrained; the new version is champion
      5  a trigger fired but no retrain started (cooldown, one running, no labels)
    """
    import threading

    from mlnb.monitor import MonitorRunner
    from mlnb.monitorspec import load_monitor

    try:
        loaded = load_monitor(_spec_path(str(spec)))
    except MlnbError as error:
        _fail(error, verbose)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("stopping after the current check (signal again to abort it)", err=True)

    def abort(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    runner = MonitorRunner(loaded, say=lambda line: click.echo(line, err=True))
    try:
        if once:
            signal.signal(signal.SIGTERM, abort)  # like Ctrl-C: registration still completes
            code = runner.check(warm_next=False).exit_code
        else:
            signal.signal(signal.SIGINT, on_signal)
            signal.signal(signal.SIGTERM, on_signal)
            what = ", ".join(loaded.spec.triggers)
            click.echo(
                f"monitoring {loaded.spec.model}@{loaded.spec.alias} ({what}); Ctrl-C stops",
                err=True,
            )
            runner.run(stop)
            code = 0
    except KeyboardInterrupt:
        click.secho("interrupted", fg="red", err=True)
        code = EXIT_INTERRUPTED
    finally:
        runner.close()
    sys.exit(code)


@main.command()
@click.argument("models", nargs=-1)
@click.option("--checks", default=3, show_default=True, help="How many recent checks to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")
def status(models: tuple[str, ...], checks: int, as_json: bool, verbose: bool) -> None:
    """For each registered model (or MODELS): what serves, its figures, recent checks, retrains."""
    from mlnb.status import gather, render

    try:
        found = gather(Path.cwd(), list(models), checks=checks)
    except MlnbError as error:
        _fail(error, verbose)
    if as_json:
        import json

        click.echo(json.dumps([m.as_dict() for m in found], indent=2, default=str))
    else:
        render(found)


@main.command("test")
@click.argument("pipelines", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--junit-xml", type=click.Path(path_type=Path), help="Write the results as JUnit XML."
)
@click.option("--no-nbval", is_flag=True, help="Skip running the notebooks by hand with nbval.")
def test_command(pipelines: tuple[Path, ...], junit_xml: Path | None, no_nbval: bool) -> None:
    """Smoke-test PIPELINES (default: every spec in pipelines/) headless, as CI does.

    Each pipeline runs with its ci profile against a throwaway MLflow store,
    every stage executed; then nbval runs its notebooks by hand (lax). Exits 1
    naming the pipeline, stage or notebook, cell and exception of any failure.
    """
    from mlnb.smoke import discover_pipelines, run_tests

    specs = [_spec_path(str(p)) for p in pipelines] or discover_pipelines(Path.cwd())
    if not specs:
        click.secho("no pipeline specs: name one, or run in a project with pipelines/", fg="red")
        sys.exit(2)
    report = run_tests(specs, nbval=not no_nbval, say=lambda line: click.echo(line))
    if junit_xml is not None:
        report.junit(junit_xml)
        click.echo(f"JUnit XML: {junit_xml}")
    failures = report.failures
    passed = sum(c.status == "passed" for c in report.cases)
    if failures:
        click.secho(f"{len(failures)} failed, {passed} passed", fg="red", err=True)
        for case in failures:
            click.secho(f"error: {case.message}", fg="red", err=True)
        sys.exit(1)
    click.echo(f"all {passed} passed", err=True)


@main.command()
@click.argument("pipeline")
@click.option(
    "--out", type=click.Path(path_type=Path), help="Where the bundle goes [default: dist/]."
)
@click.option("--version", "label", help="The bundle version [default: its content hash].")
@click.option("--image", is_flag=True, help="Also build the Docker image (needs docker).")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")
def build(pipeline: str, out: Path | None, label: str | None, image: bool, verbose: bool) -> None:
    """Pack PIPELINE into a versioned, reproducible bundle, with a Dockerfile beside it."""
    from mlnb.bundle import build as build_bundle
    from mlnb.bundle import build_image

    try:
        built = build_bundle(_spec_path(pipeline), out, label)
    except MlnbError as error:
        _fail(error, verbose)
    manifest = built.manifest
    click.echo(f"bundle:     {built.path} ({built.path.stat().st_size / 1024:.0f} KiB)")
    click.echo(f"version:    {manifest.version}")
    click.echo(f"files:      {len(manifest.files)}, content sha256 {manifest.content_sha256}")
    commit = manifest.git_commit or "not in git"
    if manifest.git_dirty:
        commit += " (with uncommitted changes: the bundle holds them, the commit does not)"
    click.echo(f"git:        {commit}")
    click.echo(f"Dockerfile: {built.dockerfile}")
    if image:
        try:
            tag = build_image(built)
        except MlnbError as error:
            _fail(error, verbose)
        click.echo(f"image:      {tag}")


@main.command()
@click.argument("bundle", required=False, type=click.Path(path_type=Path))
@click.option("--list", "listing", is_flag=True, help="List deployments, the live one marked.")
@click.option("--rollback", metavar="PIPELINE", help="Make the previous version live again.")
@click.option("--to", "to_version", metavar="VERSION", help="With --rollback: this version.")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")
def deploy(
    bundle: Path | None,
    listing: bool,
    rollback: str | None,
    to_version: str | None,
    verbose: bool,
) -> None:
    """Make BUNDLE the live version of its pipeline: what mlnb monitor retrains with."""
    from mlnb import deploy as deploymod
    from mlnb.store import tracking_uri

    root = Path.cwd()
    uri = tracking_uri(root)
    if sum(bool(x) for x in (bundle, listing, rollback)) != 1:
        click.secho("give a BUNDLE, --list or --rollback PIPELINE", fg="red", err=True)
        sys.exit(2)
    try:
        if listing:
            records = deploymod.history(root, uri)
            if not records:
                click.echo("nothing deployed yet: mlnb build PIPELINE, then mlnb deploy BUNDLE")
            for r in records:
                mark = "*" if r.live else " "
                commit = (r.git_commit or "")[:10]
                line = f"{r.pipeline:<16} {r.version:<16} {r.action:<9} {r.time} {commit}"
                click.echo(f"{mark} {line}")
            return
        if rollback:
            done = deploymod.rollback(root, uri, rollback, to_version)
        else:
            assert bundle is not None
            done = deploymod.deploy(bundle, root, uri)
    except MlnbError as error:
        _fail(error, verbose)
    verb = "rolled back to" if done.action == "rollback" else "deployed"
    click.echo(f"{verb} {done.pipeline} {done.version}: live, in {done.path}")
    click.echo(f"mlnb monitor retrains with {done.spec}")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", help="The pipeline and model name [default: the folder's name].")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")
def init(directory: Path, name: str | None, verbose: bool) -> None:
    """Create a project in DIRECTORY: notebooks, pipeline, monitor, CI and pre-commit configs.

    It passes mlnb check, mlnb test and mlnb build as it is.
    """
    from mlnb.scaffold import init as scaffold

    try:
        written = scaffold(directory, name)
    except MlnbError as error:
        _fail(error, verbose)
    for path in written:
        click.echo(f"  {path}")
    click.echo(f"created {len(written)} files in {directory}; next: cd {directory} && mlnb test")


@main.command("export-predictions")
@click.argument("target", type=click.Path(path_type=Path))
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path),
    help="Prediction log folder [default: .mlnb/predictions].",
)
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks.")
def export_predictions(target: Path, log_dir: Path | None, verbose: bool) -> None:
    """Write the prediction log, with feedback labels joined, to TARGET (.csv or .parquet)."""
    from mlnb.predlog import default_log_dir, export

    try:
        rows = export(log_dir or default_log_dir(Path.cwd()), target)
    except MlnbError as error:
        _fail(error, verbose)
    click.echo(f"{rows} predictions written to {target}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def ui(host: str, port: int) -> None:
    """Start the MLflow UI on this project's store (stop it with Ctrl-C)."""
    import subprocess

    from mlnb.store import default_artifact_location, tracking_uri

    uri = tracking_uri(Path.cwd())
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    location = default_artifact_location(uri)
    if location:
        command += ["--default-artifact-root", location]
    click.echo(f"MLflow UI on http://{host}:{port} for {uri} (Ctrl-C stops it)", err=True)
    process = subprocess.Popen(command)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        sys.exit(process.wait())
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        sys.exit(EXIT_INTERRUPTED)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--fix", is_flag=True, help="Strip outputs from notebooks in place.")
def check(paths: tuple[Path, ...], fix: bool) -> None:
    """Lint pipeline specs and notebooks under PATHS (default: the current folder)."""
    from mlnb.check import check_paths

    problems = check_paths(paths or (Path("."),), fix=fix)
    for problem in problems:
        click.echo(str(problem))
    if problems:
        click.secho(
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found", fg="red", err=True
        )
        sys.exit(1)
    click.echo("all checks passed", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
