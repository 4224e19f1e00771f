"""Pipeline CI/CD: ``mlnb check``, ``test``, ``build``, ``deploy`` and ``init``."""

from __future__ import annotations

from pathlib import Path

import click

from mlnb.cli.main import verbose
from mlnb.errors import ExitCode, UsageError


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--fix", is_flag=True, help="Strip outputs from notebooks in place.")
@verbose
def check(paths: tuple[Path, ...], fix: bool) -> None:
    """Lint pipeline specs and notebooks under PATHS (default: the current folder)."""
    from mlnb.delivery.lint import check_paths

    problems = check_paths(paths or (Path("."),), fix=fix)
    for problem in problems:
        click.echo(str(problem))
    if problems:
        count = len(problems)
        click.secho(f"{count} problem{'s' if count != 1 else ''} found", fg="red", err=True)
        raise click.exceptions.Exit(ExitCode.FAILED)
    click.echo("all checks passed", err=True)


@click.command("test")
@click.argument("pipelines", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--junit-xml", type=click.Path(path_type=Path), help="Write the results as JUnit XML."
)
@click.option("--no-nbval", is_flag=True, help="Skip running the notebooks by hand with nbval.")
@verbose
def test_command(pipelines: tuple[Path, ...], junit_xml: Path | None, no_nbval: bool) -> None:
    """Smoke-test PIPELINES (default: every spec in pipelines/) headless, as CI does.

    Each pipeline runs with its ci profile against a throwaway MLflow store,
    every stage executed; then nbval runs its notebooks by hand (lax). Exits 1
    naming the pipeline, stage or notebook, cell and exception of any failure.
    """
    from mlnb.delivery.pipeline_tests import CaseStatus, run_tests
    from mlnb.pipelines.locate import project_pipelines, spec_path

    specs = [spec_path(p) for p in pipelines] or project_pipelines(Path.cwd())
    if not specs:
        raise UsageError("no pipeline specs: name one, or run in a project with pipelines/")
    report = run_tests(specs, nbval=not no_nbval, say=click.echo)
    if junit_xml is not None:
        report.junit(junit_xml)
        click.echo(f"JUnit XML: {junit_xml}")
    failures = report.failures
    passed = sum(c.status == CaseStatus.PASSED for c in report.cases)
    if failures:
        click.secho(f"{len(failures)} failed, {passed} passed", fg="red", err=True)
        for case in failures:
            click.secho(f"error: {case.message}", fg="red", err=True)
        raise click.exceptions.Exit(ExitCode.FAILED)
    click.echo(f"all {passed} passed", err=True)


@click.command()
@click.argument("pipeline")
@click.option(
    "--out", type=click.Path(path_type=Path), help="Where the bundle goes [default: dist/]."
)
@click.option("--version", "label", help="The bundle version [default: its content hash].")
@click.option("--image", is_flag=True, help="Also build the Docker image (needs docker).")
@verbose
def build(pipeline: str, out: Path | None, label: str | None, image: bool) -> None:
    """Pack PIPELINE into a versioned, reproducible bundle, with a Dockerfile beside it."""
    from mlnb.delivery.bundle import build as build_bundle
    from mlnb.delivery.bundle import build_image
    from mlnb.pipelines.locate import spec_path

    built = build_bundle(spec_path(pipeline), out, label)
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
        click.echo(f"image:      {build_image(built)}")


@click.command()
@click.argument("bundle", required=False, type=click.Path(path_type=Path))
@click.option("--list", "listing", is_flag=True, help="List deployments, the live one marked.")
@click.option("--rollback", metavar="PIPELINE", help="Make the previous version live again.")
@click.option("--to", "to_version", metavar="VERSION", help="With --rollback: this version.")
@click.option(
    "--max-members",
    type=click.IntRange(min=1),
    help="Refuse a bundle of more members (files and folders) [default: 10000].",
)
@click.option(
    "--max-member-mib",
    type=click.IntRange(min=1),
    help="Refuse a bundle with a member larger than this, unpacked, in MiB [default: 256].",
)
@click.option(
    "--max-total-mib",
    type=click.IntRange(min=1),
    help="Refuse a bundle larger than this, unpacked, in MiB [default: 1024].",
)
@verbose
def deploy(
    bundle: Path | None,
    listing: bool,
    rollback: str | None,
    to_version: str | None,
    max_members: int | None,
    max_member_mib: int | None,
    max_total_mib: int | None,
) -> None:
    """Make BUNDLE the live version of its pipeline: what mlnb monitor retrains with.

    The bundle is checked against its manifest as it streams, every member's
    header against the limits before it is read; nothing is written when it is refused.
    """
    from mlnb.delivery import deploy as deployments
    from mlnb.delivery.bundle import Limits, MiB
    from mlnb.store import tracking_uri

    root = Path.cwd()
    uri = tracking_uri(root)
    if listing and not (bundle or rollback):
        records = deployments.history(root, uri)
        if not records:
            click.echo("nothing deployed yet: mlnb build PIPELINE, then mlnb deploy BUNDLE")
        for r in records:
            mark = "*" if r.live else " "
            commit = (r.git_commit or "")[:10]
            click.echo(f"{mark} {r.pipeline:<16} {r.version:<16} {r.action:<9} {r.time} {commit}")
        return
    if rollback and not bundle and not listing:
        done = deployments.rollback(root, uri, rollback, to_version)
    elif bundle is not None and not (listing or rollback):
        given = {
            "members": max_members,
            "member_size": max_member_mib and max_member_mib * MiB,
            "total_size": max_total_mib and max_total_mib * MiB,
        }
        limits = Limits(**{key: value for key, value in given.items() if value is not None})
        done = deployments.deploy(bundle, root, uri, limits)
    else:
        raise UsageError("give a BUNDLE, --list or --rollback PIPELINE")
    verb = "rolled back to" if done.action == deployments.DeployAction.ROLLBACK else "deployed"
    click.echo(f"{verb} {done.pipeline} {done.version}: live, in {done.path}")
    click.echo(f"mlnb monitor retrains with {done.spec}")


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--name", help="The pipeline and model name [default: the folder's name].")
@verbose
def init(directory: Path, name: str | None) -> None:
    """Create a project in DIRECTORY: notebooks, pipeline, monitor, CI and pre-commit configs.

    It passes mlnb check, mlnb test and mlnb build as it is.
    """
    from mlnb.delivery.scaffold import init as scaffold

    written = scaffold(directory, name)
    for path in written:
        click.echo(f"  {path}")
    click.echo(f"created {len(written)} files in {directory}; next: cd {directory} && mlnb test")


COMMANDS = [check, test_command, build, deploy, init]
