"""The ``mlnb`` group's one error handler: every failure is one line and an exit code."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from mlnb.cli.main import Group, verbose
from mlnb.errors import ExitCode, UsageError


@click.group(cls=Group)
@verbose
def cli() -> None:
    """A group with the handler of ``mlnb`` and commands that fail in each way."""


@cli.command()
@click.argument("path")
def opens(path: str) -> None:
    with open(path) as stream:
        stream.read()


@cli.command()
def breaks() -> None:
    raise RuntimeError("a bug\nwith a second line")


@cli.command()
def refuses() -> None:
    raise UsageError("nothing to do; name a pipeline")


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535))
def listens(port: int) -> None:
    raise AssertionError("never reached")


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args))


def test_an_os_error_is_its_file_and_reason(tmp_path) -> None:
    missing = tmp_path / "nowhere.csv"
    result = invoke("opens", str(missing))
    assert result.exit_code == ExitCode.FAILED
    assert result.output == f"error: {missing}: No such file or directory\n"


def test_an_unexpected_exception_is_one_line_naming_it() -> None:
    result = invoke("breaks")
    assert result.exit_code == ExitCode.FAILED
    assert result.output == (
        "error: unexpected RuntimeError: a bug; "
        "run the command again with --verbose to see where it happened\n"
    )


def test_verbose_shows_the_traceback_of_an_unexpected_exception() -> None:
    result = invoke("-v", "breaks")
    assert result.exit_code == ExitCode.FAILED
    assert "Traceback (most recent call last)" in result.output
    assert result.output.endswith("run the command again with --verbose to see where it happened\n")


def test_an_mlnb_error_keeps_its_message_and_exit_code() -> None:
    result = invoke("refuses")
    assert (result.exit_code, result.output) == (
        ExitCode.INVALID,
        "error: nothing to do; name a pipeline\n",
    )


@pytest.mark.parametrize("port", ["99999", "http"])
def test_clicks_own_usage_errors_pass_through(port: str) -> None:
    result = invoke("listens", "--port", port)
    assert result.exit_code == 2
    assert "Invalid value for '--port'" in result.output
    assert "unexpected" not in result.output


def test_the_command_process_spares_jsonschema_its_iri_grammars() -> None:
    """nbformat (so papermill) still imports and validates; jsonschema skips rfc3987-syntax."""
    code = (
        "import sys, mlnb.cli.main, papermill, nbformat\n"
        "nbformat.validate(nbformat.v4.new_notebook())\n"
        "print(sys.modules['rfc3987_syntax'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
