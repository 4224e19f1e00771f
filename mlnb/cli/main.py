"""The ``mlnb`` group: its one error handler, its one ``--verbose``, and its commands."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

from mlnb import __version__
from mlnb.errors import ExitCode, MlnbError, missing_store_module

# jsonschema, which nbformat (so papermill) imports, builds 39 lark grammars at
# import when the optional rfc3987-syntax is installed (JupyterLab's
# jupyter-events brings it), only to check the "iri" string formats that no
# schema mlnb validates uses: a second of CPU on every command that executes a
# notebook. In mlnb's own process, jsonschema finds it missing, as on a machine
# without JupyterLab.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

VERBOSE = "mlnb.verbose"


def _set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().meta[VERBOSE] = True


#: ``--verbose``, declared once: taken by the group and by every command (``mlnb -v run``
#: and ``mlnb run -v`` mean the same)
verbose = click.option(
    "--verbose",
    "-v",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_set_verbose,
    help="Show tracebacks.",
)


_F = TypeVar("_F", bound=Callable[..., Any])


def stops_on_sigterm(command: _F) -> _F:
    """A command that SIGTERM stops as Ctrl-C does.

    See :func:`mlnb.pipelines.signals.terminate_as_interrupt`.
    """

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        from mlnb.pipelines.signals import terminate_as_interrupt

        with terminate_as_interrupt():
            return command(*args, **kwargs)

    return run  # type: ignore[return-value]


def fail(message: str, code: ExitCode = ExitCode.FAILED) -> None:
    """End a command with ``error: message`` and ``code``, the way every failure ends."""
    click.secho(f"error: {message}", fg="red", err=True)
    raise click.exceptions.Exit(code)


class Group(click.Group):
    """A click group whose commands fail one way: a message and an exit code.

    An :class:`MlnbError` says what went wrong and exits with its code; any
    other exception is still one line (an ``OSError`` as its file and reason,
    anything else by its type and message, with ``--verbose`` to see where);
    click's own usage errors and exits pass through.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except MlnbError as error:
            if ctx.meta.get(VERBOSE):
                traceback.print_exception(error)
            fail(str(error), error.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="red", err=True)
            raise click.exceptions.Exit(ExitCode.INTERRUPTED) from None
        except Exception as error:
            if ctx.meta.get(VERBOSE):
                traceback.print_exception(error)
            fail(unexpected(error))


def unexpected(error: Exception) -> str:
    """One line for an exception mlnb did not raise on purpose."""
    if isinstance(error, ModuleNotFoundError) and (fix := missing_store_module(error.name)):
        return fix
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    said = str(error).strip().splitlines()
    return (
        f"unexpected {type(error).__name__}: {said[0] if said else ''}; "
        "run the command again with --verbose to see where it happened"
    )


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlnb")
@verbose
def main() -> None:
    """CI/CD and continuous training for ML pipelines whose stages are notebooks."""
    from mlnb.store import bound_http_waits

    bound_http_waits()  # a store that is down is an error within seconds, not minutes


def _register() -> None:
    from mlnb.cli import (
        delivery,
        lab,
        models,
        monitoring,
        pipelines,
        predictions,
        serving,
        sweeps,
    )

    for module in (pipelines, sweeps, models, serving, predictions, monitoring, delivery, lab):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
