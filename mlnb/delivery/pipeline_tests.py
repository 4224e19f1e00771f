"""``mlnb test``: smoke-test pipelines headless, as CI does on every change.

Two checks per pipeline, each reported per stage or notebook:

1. **The pipeline** runs with its ``ci`` profile (small parameters), every
   stage executed (no cache), against a throwaway MLflow store in a
   temporary folder, so the gate and registration run too without touching
   the project's store. Its workspace is removed afterwards, unless a stage
   failed: the failure names the executed notebook in it.
2. **The notebooks run by hand**: nbval (``--nbval-lax``) executes each stage
   notebook (and each drift notebook of a monitor that retrains with the
   pipeline) with its own defaults, in stage order, the way a data scientist
   runs them in JupyterLab; their MLflow calls go to the throwaway store.

A failure names the pipeline, the stage (or notebook), the cell and the
exception. ``--junit-xml`` writes the cases as JUnit XML for CI systems.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mlnb.errors import MlnbError, PipelineError, SpecError

CI_PROFILE = "ci"
#: colour codes: nbval's own, and the kernel's traceback (pytest's JUnit XML writes ESC as #x1B)
_ANSI = re.compile(r"(?:\x1b|#x1B)\[[0-9;]*m")


@dataclass
class Case:
    """One test case: a stage of a pipeline run, or a notebook run by nbval."""

    suite: str
    name: str
    status: str  # passed, failed, skipped
    seconds: float = 0.0
    message: str = ""


@dataclass
class Report:
    """Every case of one ``mlnb test``."""

    cases: list[Case] = field(default_factory=list)

    @property
    def failures(self) -> list[Case]:
        return [c for c in self.cases if c.status == "failed"]

    def junit(self, path: Path) -> None:
        """Write the cases as JUnit XML (one testsuite per pipeline or notebook set)."""
        suites: dict[str, list[Case]] = {}
        for case in self.cases:
            suites.setdefault(case.suite, []).append(case)
        root = ET.Element("testsuites", name="mlnb test")
        for suite, cases in suites.items():
            node = ET.SubElement(
                root,
                "testsuite",
                name=suite,
                tests=str(len(cases)),
                failures=str(sum(c.status == "failed" for c in cases)),
                skipped=str(sum(c.status == "skipped" for c in cases)),
                time=f"{sum(c.seconds for c in cases):.3f}",
            )
            for case in cases:
                item = ET.SubElement(
                    node, "testcase", classname=suite, name=case.name, time=f"{case.seconds:.3f}"
                )
                if case.status == "failed":
                    failure = ET.SubElement(item, "failure", message=case.message.split("\n")[0])
                    failure.text = case.message
                elif case.status == "skipped":
                    ET.SubElement(item, "skipped", message=case.message)
        path.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def run_tests(
    specs: Iterable[Path],
    *,
    nbval: bool = True,
    say: Callable[[str], None] | None = None,
) -> Report:
    """Smoke-test each pipeline, then its notebooks standalone.

    Args:
        specs: pipeline spec files.
        nbval: also run the notebooks by hand with nbval.
        say: receives a line per case as it ends.
    """
    say = say or (lambda line: None)
    report = Report()
    scratch = Path(tempfile.mkdtemp(prefix="mlnb-test-"))
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    try:
        from mlnb.tracking import Tracker

        Tracker(scratch, uri)  # creates the store: its artifacts stay in the scratch folder
        notebooks: dict[Path, Path] = {}  # notebook → project root, in stage order
        for spec in specs:
            cases, found = _pipeline(Path(spec), uri, say)
            report.cases += cases
            notebooks.update(found)
        if nbval and notebooks:
            for case in _nbval(notebooks, uri, scratch, say):
                report.cases.append(case)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def _pipeline(
    spec: Path, uri: str, say: Callable[[str], None]
) -> tuple[list[Case], dict[Path, Path]]:
    """Run one pipeline with its ci profile; its cases and the notebooks to run by hand."""
    from mlnb.pipelines.locate import load_monitor, load_pipeline, monitors_of
    from mlnb.pipelines.runner import run_pipeline
    from mlnb.specs.pipeline import read_spec

    suite = f"pipeline {spec.stem}"
    try:
        profiles = read_spec(spec)[0].profiles
        profile = CI_PROFILE if CI_PROFILE in profiles else None
        pipeline = load_pipeline(spec, profile)
    except SpecError as exc:
        say(f"✗ {spec}: invalid spec\n{_indent(str(exc))}")
        return [Case(suite, "spec", "failed", message=str(exc))], {}
    suite = f"pipeline {pipeline.name}"
    note = f"profile {profile}" if profile else "no ci profile: the spec's own parameters"
    say(f"pipeline {pipeline.name} ({note}, throwaway MLflow store)")
    cases: list[Case] = []
    notebooks = {stage.notebook: pipeline.root for stage in pipeline.stages}
    for monitor in monitors_of(pipeline):
        try:
            drift = load_monitor(monitor).drift_notebook
        except SpecError as exc:
            say(f"  ✗ {monitor.name}: invalid monitor spec\n{_indent(str(exc))}")
            cases.append(Case(suite, f"monitor {monitor.name}", "failed", message=str(exc)))
            continue
        if drift is not None:
            notebooks[drift] = pipeline.root
    started = time.perf_counter()
    result = None
    error: MlnbError | None = None
    try:
        result = run_pipeline(pipeline, force=True, tracking_uri=uri, trigger="test")
    except PipelineError as exc:
        result, error = exc.result, exc
    except MlnbError as exc:
        error = exc
    if result is None:
        say(f"  ✗ {pipeline.name}: {error}")
        cases.append(Case(suite, "run", "failed", time.perf_counter() - started, str(error)))
        return cases, notebooks
    try:
        for stage in result.stages:
            if stage.status in ("succeeded", "cached", "reused"):
                say(f"  ✓ {stage.name} ({stage.seconds:.1f} s)")
                cases.append(Case(suite, stage.name, "passed", stage.seconds))
            elif stage.status == "skipped":
                say(f"  - {stage.name}: skipped (an upstream stage failed)")
                cases.append(Case(suite, stage.name, "skipped", message="an upstream stage failed"))
            else:
                message = f"pipeline {pipeline.name}: {stage.error}"
                say(f"  ✗ {message}")
                cases.append(Case(suite, stage.name, "failed", stage.seconds, message))
        model = pipeline.spec.model
        if model is not None and all(s.status != "failed" for s in result.stages):
            if result.status == "FINISHED" and result.registration is not None:
                decision = result.decision.reason if result.decision else "registered"
                say(f"  ✓ model {model.name}: {decision}")
                cases.append(Case(suite, "model", "passed"))
            else:
                say(f"  ✗ model {model.name}: {error}")
                cases.append(Case(suite, "model", "failed", message=str(error)))
    finally:
        if not any(case.status == "failed" for case in cases):
            shutil.rmtree(result.workspace, ignore_errors=True)
    return cases, notebooks


def _nbval(
    notebooks: dict[Path, Path], uri: str, scratch: Path, say: Callable[[str], None]
) -> Iterable[Case]:
    """Run the notebooks with nbval in one pytest process; one case per notebook."""
    suite = "notebooks (nbval --nbval-lax)"
    say(f"notebooks run by hand ({len(notebooks)}, nbval --nbval-lax)")
    root = next(iter(notebooks.values()))
    report = scratch / "nbval.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval-lax",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "-q",
        "--color=no",
        f"--junit-xml={report}",
        f"--rootdir={root}",
        *[str(nb) for nb in notebooks],
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DO_NOT_TRACK": "true"}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    cells = _read_junit(report)
    if not cells:
        tail = (done.stdout + done.stderr).strip()[-2000:]
        yield Case(suite, "nbval", "failed", message=f"nbval did not run:\n{tail}")
        return
    for notebook, root_of in notebooks.items():
        try:
            rel = notebook.relative_to(root_of)
        except ValueError:
            rel = notebook
        mine = [c for c in cells if _same_notebook(c[0], notebook, rel)]
        seconds = sum(c[2] for c in mine)
        failed = [c for c in mine if c[3]]
        if not mine:
            yield Case(suite, str(rel), "skipped", message="nbval collected no cells")
        elif failed:
            _, cell, _, message = failed[0]
            text = f"{rel}: {_headline(notebook, cell, message)}\n{message}"
            say(f"  ✗ {text.splitlines()[0]}")
            yield Case(suite, str(rel), "failed", seconds, text)
        else:
            say(f"  ✓ {rel} ({len(mine)} cells, {seconds:.1f} s)")
            yield Case(suite, str(rel), "passed", seconds)


def _read_junit(path: Path) -> list[tuple[str, str, float, str]]:
    """(classname, cell name, seconds, failure text or '') of every case pytest wrote."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return []
    cases = []
    for item in tree.iter("testcase"):
        failure = item.find("failure")
        if failure is None:
            failure = item.find("error")
        text = ""
        if failure is not None:
            text = _ANSI.sub("", failure.text or failure.get("message") or "")
        cases.append(
            (
                item.get("classname", ""),
                item.get("name", ""),
                float(item.get("time") or 0),
                text.strip(),
            )
        )
    return cases


def _headline(notebook: Path, cell: str, report: str) -> str:
    """``cell 2 raised FileNotFoundError: ...`` from nbval's ``Cell 1`` and its report.

    nbval counts code cells from 0; mlnb reports positions in the notebook
    (every cell, from 1), as ``mlnb run`` does.
    """
    from mlnb.notebook import read

    position = cell
    match = re.fullmatch(r"Cell (\d+)", cell)
    if match:
        try:
            code = [i for i, c in enumerate(read(notebook).cells) if c.cell_type == "code"]
        except MlnbError:
            code = []
        if int(match.group(1)) < len(code):
            position = f"cell {code[int(match.group(1))] + 1}"
    lines = [line.strip() for line in report.splitlines() if line.strip()]
    return f"{position} raised {lines[-1]}" if lines else f"{position} failed"


def _same_notebook(classname: str, notebook: Path, rel: Path) -> bool:
    """Whether a pytest classname (``notebooks.train.ipynb``) names ``notebook``."""
    dotted = rel.as_posix().replace("/", ".")
    return classname.endswith(dotted) or classname.endswith(notebook.name)


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())
