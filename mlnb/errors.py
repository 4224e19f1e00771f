"""The one exception tree of mlnb.

Every error a user can cause or meet is an :class:`MlnbError`: the CLI turns it
into one clear line (or a short block) and an exit code, and never shows a
traceback unless ``--verbose`` asks for one. Each subclass carries the fields a
user or a program needs to act on it, the way papermill's execution error
carries the cell index, exception name and value::

    MlnbError
    ├── UsageError           a command was called with options that do not go together
    │   └── NotFoundError    what a command or request names is not there
    ├── SpecError            a pipeline or monitor spec is invalid (all problems at once)
    ├── NotebookError        a notebook cannot be read or has no parameters cell
    ├── StageError           a stage did not complete
    │   ├── CellError        a cell raised an exception
    │   ├── KernelDiedError  the kernel died (killed, out of memory)
    │   ├── StageTimeoutError the stage ran past its ``timeout``
    │   └── MissingOutputError a declared output was not written
    ├── PipelineError        a pipeline run failed or cannot be resumed
    ├── TrackingError        the MLflow store cannot be reached or used
    ├── KernelStartError     a Jupyter kernel does not start (mlnb.engine.kernels)
    ├── RegistryError        a model cannot be registered, gated or promoted (mlnb.models)
    ├── PredictionLogError   the prediction log cannot be read or exported (mlnb.predictions.log)
    │   ├── RetentionError   a retention setting is invalid (mlnb.predictions.retention)
    │   └── LogWriteError    a record could not be written durably (mlnb.predictions.log)
    ├── ServeError           the prediction service cannot start (mlnb.serving.server)
    ├── TokensError          a service's tokens file cannot be read or has a bad line
    │                        (mlnb.serving.auth)
    ├── BundleError          a bundle cannot be built, or fails its manifest check
    │                        (mlnb.delivery.bundle)
    ├── VendorError          mlnb's own wheel cannot be built or repacked for a bundle
    │                        (mlnb.delivery.vendor)
    ├── DeployError          a bundle cannot be deployed or rolled back (mlnb.delivery.deploy)
    └── ScaffoldError        a project cannot be created where asked (mlnb.delivery.scaffold)

Those named with a module live beside the code that raises them, so that
importing the error tree stays free of MLflow. :class:`ExitCode` names every
exit code the command line uses, once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlnb.pipelines.results import PipelineResult


class ExitCode(IntEnum):
    """What the ``mlnb`` command exits with."""

    OK = 0
    FAILED = 1  # a run, check, test or command failed
    INVALID = 2  # a spec, notebook or the command line is invalid
    REJECTED = 3  # the gate kept the champion
    PROMOTED = 4  # mlnb monitor --once: retrained, and the new version is champion
    SKIPPED = 5  # mlnb monitor --once: a trigger fired but no retrain started
    INTERRUPTED = 130  # Ctrl-C or SIGTERM


class MlnbError(Exception):
    """Root of every error mlnb raises on purpose.

    ``exit_code`` is what the command line exits with.
    """

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Problem:
    """One problem found in a file: where it is and what to do about it."""

    file: str
    location: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.location}" if self.location else self.file
        return f"{where}: {self.message}"


class UsageError(MlnbError):
    """A command was called with options that do not go together, or with nothing to do."""

    exit_code = ExitCode.INVALID


class NotFoundError(UsageError):
    """What a command or a request names (a pipeline, a run, a stage) is not there."""


class SpecError(MlnbError):
    """A pipeline spec (or a notebook it names) is invalid.

    ``problems`` lists every problem found, each with its file and key, so a
    user fixes them all in one pass.
    """

    exit_code = ExitCode.INVALID

    def __init__(self, problems: list[Problem], kind: str = "pipeline spec") -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the {kind}:"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class NotebookError(MlnbError):
    """A notebook cannot be read, or lacks what mlnb needs from it."""

    exit_code = ExitCode.INVALID

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class StageError(MlnbError):
    """A stage of a pipeline run did not complete.

    Attributes:
        stage: the stage name.
        notebook: the path of the executed notebook (with its outputs), when
            one was written.
    """

    def __init__(self, stage: str, message: str, notebook: Path | str | None = None) -> None:
        self.stage = stage
        self.notebook = str(notebook) if notebook else None
        text = f"stage '{stage}' failed: {message}"
        if self.notebook:
            text += f"\n  executed notebook: {self.notebook}"
        super().__init__(text)


class CellError(StageError):
    """A cell of a stage notebook raised an exception.

    Attributes:
        cell: the 1-based position of the failing cell in the source notebook.
        ename: the exception class name, e.g. ``ValueError``.
        evalue: the exception message.
        traceback: the traceback lines as the kernel reported them.
    """

    def __init__(
        self,
        stage: str,
        cell: int,
        ename: str,
        evalue: str,
        notebook: Path | str | None = None,
        traceback: list[str] | None = None,
    ) -> None:
        self.cell = cell
        self.ename = ename
        self.evalue = evalue
        self.traceback = list(traceback or [])
        said = f"cell {cell} raised {ename}: {evalue}"
        missing = re.fullmatch(r"No module named '([\w.]+)'", evalue)
        fix = (
            missing_store_module(missing[1]) if ename == "ModuleNotFoundError" and missing else None
        )
        super().__init__(stage, f"{said}; {fix}" if fix else said, notebook)


class KernelDiedError(StageError):
    """The kernel running a stage died (killed, or out of memory)."""

    def __init__(self, stage: str, cell: int | None, notebook: Path | str | None = None) -> None:
        self.cell = cell
        where = f" while running cell {cell}" if cell else ""
        super().__init__(
            stage,
            f"the kernel died{where} (killed, or out of memory?); "
            "check the notebook's memory use, then resume the run",
            notebook,
        )


class StageTimeoutError(StageError):
    """A stage ran longer than its ``timeout`` and was stopped."""

    def __init__(
        self, stage: str, timeout: float, cell: int | None, notebook: Path | str | None = None
    ) -> None:
        self.timeout = timeout
        self.cell = cell
        where = f" in cell {cell}" if cell else ""
        super().__init__(
            stage,
            f"timed out after {timeout:g} s{where}; raise the stage's 'timeout' in the spec "
            "or make the notebook faster",
            notebook,
        )


class MissingOutputError(StageError):
    """A stage finished without writing an output it declares."""

    def __init__(
        self, stage: str, output: str, path: Path | str, notebook: Path | str | None
    ) -> None:
        self.output = output
        self.path = str(path)
        super().__init__(
            stage,
            f"declared output '{output}' was not written (expected at {self.path}); "
            f"write the file at the path the notebook receives in its '{output}' parameter",
            notebook,
        )


class PipelineError(MlnbError):
    """A pipeline run failed, or a run cannot be resumed.

    Attributes:
        run_id: the MLflow id of the pipeline's parent run, when there is one.
        failures: the stage errors that stopped the run.
        result: the whole run, when it ran (its stages, workspace, store).
    """

    def __init__(
        self,
        message: str,
        run_id: str | None = None,
        failures: list[StageError] | None = None,
        result: PipelineResult | None = None,
    ) -> None:
        self.run_id = run_id
        self.failures = list(failures or [])
        self.result = result
        if result is not None and result.status == "KILLED":  # an interrupt stopped it
            self.exit_code = ExitCode.INTERRUPTED
        super().__init__(message)


class TrackingError(MlnbError):
    """The MLflow tracking store cannot be reached or used."""


#: the client library MLflow imports for artifacts written straight to an object store, by
#: the module a missing one is imported as: (the store, what installs it)
STORE_MODULES = {
    "boto3": ("S3 (s3://)", "boto3"),
    "botocore": ("S3 (s3://)", "boto3"),
    "google.cloud": ("Google Cloud Storage (gs://)", "google-cloud-storage"),
    "google.cloud.storage": ("Google Cloud Storage (gs://)", "google-cloud-storage"),
    "azure": ("Azure Blob Storage (wasbs://)", "azure-storage-blob azure-identity"),
    "azure.storage": ("Azure Blob Storage (wasbs://)", "azure-storage-blob azure-identity"),
    "azure.storage.blob": ("Azure Blob Storage (wasbs://)", "azure-storage-blob azure-identity"),
}


def missing_store_module(module: str | None) -> str | None:
    """How to fix an object store's client library that is not installed; None if not one.

    A store whose server runs without ``--serve-artifacts`` hands its clients
    the object store's URI, and MLflow imports the store's library only when
    the first artifact is written: that is where its absence shows.
    """
    if module not in STORE_MODULES:
        return None
    store, package = STORE_MODULES[module]
    hint = "pip install 'mlnb[team]'" if package == "boto3" else f"pip install {package}"
    return (
        f"the store keeps artifacts on {store}, and writing them needs {package.split()[0]}, "
        f"which is not installed: {hint}, or run the server with --serve-artifacts so that "
        "clients write through it"
    )


def suggest(name: str, candidates: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for a near candidate, or ``""``."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
