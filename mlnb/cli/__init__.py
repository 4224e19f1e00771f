"""The ``mlnb`` command line: a thin click adapter.

Each command gathers its options, calls one library function and shows what
came back. One handler (:class:`~mlnb.cli.main.Group`) turns an
:class:`~mlnb.errors.MlnbError` into ``error: ...`` and its exit code and an
interrupt into exit 130; ``--verbose`` adds the traceback. Exit codes are
:class:`~mlnb.errors.ExitCode`. Heavy modules are imported inside the
commands, so ``mlnb --help`` imports neither MLflow nor papermill.
"""

from mlnb.cli.main import main

__all__ = ["main"]
