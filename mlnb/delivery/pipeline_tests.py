"""``mlnb test``: smoke-test pipelines headless, as CI does on every change.

The checks of each pipeline, each reported per stage or notebook:

1. **The pipeline** runs with its ``ci`` profile (small parameters), every
   stage executed (no cache), against a throwaway MLflow store in a
   temporary folder, so the gate and registration run too without touching
   the project's store, and with a state folder of its own
   (``.mlnb/test``, on this machine), so its workspaces and cache entries
   never reach the project's cache. Its workspace is removed afterwards,
   unless a stage failed: the failure names the executed notebook in it.
2. **The sweep**, when the spec has one: its first two trials with the ci profile,
   each finished, the best trial's model registered and gated.
3. **The notebooks run by hand**: nbval (``--nbval-lax``) executes each stage
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
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from mlnb.errors import MlnbError, PipelineError, SpecError
from mlnb.pipelines.locate import load_monitor, load_pipeline, monitors_of
from mlnb.pipelines.results import PipelineResult, StageResult, StageStatus
from mlnb.pipelines.runner import run_pipeline
from mlnb.specs.pipeline import Pipeline, project_root, read_spec
from mlnb.store import STATE_DIR

CI_PROFILE = "ci"
NBVAL_SUITE = "notebooks (nbval --nbval-lax)"
#: colour codes: nbval's own, and the kernel's traceback (pytest's JUnit XML writes ESC as #x1B)
_ANSI = re.compile(r"(?:\x1b|#x1B)\[[0-9;]*m")

Say = Callable[[str], None]


class CaseStatus(StrEnum):
    """How a test case ended (as JUnit XML names it)."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass
class Case:
    """One test case: a stage of a pipeline run, or a notebook run by nbval."""

    suite: str
    name: str
    status: CaseStatus
    seconds: float = 0.0
    message: str = ""


@dataclass
class Report:
    """Every case of one ``mlnb test``."""

    cases: list[Case] = field(default_factory=list)

    @property
    def failures(self) -> list[Case]:
        return [c for c in self.cases if c.status == CaseStatus.FAILED]

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
                failures=str(sum(c.status == CaseStatus.FAILED for c in cases)),
                skipped=str(sum(c.status == CaseStatus.SKIPPED for c in cases)),
                time=f"{sum(c.seconds for c in cases):.3f}",
            )
            for case in cases:
                item = ET.SubElement(
                    node, "testcase", classname=suite, name=case.name, time=f"{case.seconds:.3f}"
                )
                if case.status == CaseStatus.FAILED:
                    failure = ET.SubElement(item, "failure", message=case.message.split("\n")[0])
                    failure.text = case.message
                elif case.status == CaseStatus.SKIPPED:
                    ET.SubElement(item, "skipped", message=case.message)
        path.parent.mkdir(parents=True, exist_ok=True)
        ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def run_tests(
    specs: Iterable[Path],
    *,
    nbval: bool = True,
    say: Say | None = None,
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
            report.cases += _nbval(notebooks, uri, scratch, say)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def _pipeline(spec: Path, uri: str, say: Say) -> tuple[list[Case], dict[Path, Path]]:
    """Run one pipeline with its ci profile; its cases and the notebooks to run by hand.

    Its workspace is removed unless a case failed (the failure names a notebook in it).
    """
    try:
        pipeline, profile = _load_for_ci(spec)
    except SpecError as exc:
        say(f"✗ {spec}: invalid spec\n{_indent(str(exc))}")
        return [Case(f"pipeline {spec.stem}", "spec", CaseStatus.FAILED, message=str(exc))], {}
    suite = f"pipeline {pipeline.name}"
    note = f"profile {profile}" if profile else "no ci profile: the spec's own parameters"
    say(f"pipeline {pipeline.name} ({note}, throwaway MLflow store)")
    cases, notebooks = _notebooks_by_hand(pipeline, suite, say)
    started = time.perf_counter()
    result, error = _run(pipeline, uri)
    if result is None:
        say(f"  ✗ {pipeline.name}: {error}")
        cases.append(
            Case(suite, "run", CaseStatus.FAILED, time.perf_counter() - started, str(error))
        )
        return cases, notebooks
    try:
        cases += [_stage_case(suite, pipeline.name, stage, say) for stage in result.stages]
        cases += _model_case(suite, pipeline, result, error, say)
        if pipeline.spec.sweep is not None and error is None:
            cases.append(_sweep_case(suite, spec, profile, uri, say))
    finally:
        if not any(case.status == CaseStatus.FAILED for case in cases):
            shutil.rmtree(result.workspace, ignore_errors=True)
    return cases, notebooks


def _load_for_ci(spec: Path) -> tuple[Pipeline, str | None]:
    """The pipeline with its ci profile, if it has one, and that profile's name."""
    profile = CI_PROFILE if CI_PROFILE in read_spec(spec)[0].profiles else None
    return load_pipeline(spec, profile), profile


def _notebooks_by_hand(
    pipeline: Pipeline, suite: str, say: Say
) -> tuple[list[Case], dict[Path, Path]]:
    """The notebooks nbval runs (stages, then the drift notebooks of monitors that retrain
    with the pipeline), each with its project root; a failed case per invalid monitor spec."""
    cases: list[Case] = []
    notebooks = {stage.notebook: pipeline.root for stage in pipeline.stages}
    for monitor in monitors_of(pipeline):
        try:
            drift = load_monitor(monitor).drift_notebook
        except SpecError as exc:
            say(f"  ✗ {monitor.name}: invalid monitor spec\n{_indent(str(exc))}")
            cases.append(
                Case(suite, f"monitor {monitor.name}", CaseStatus.FAILED, message=str(exc))
            )
            continue
        if drift is not None:
            notebooks[drift] = pipeline.root
    return cases, notebooks


def test_state(root: Path) -> Path:
    """The state folder of ``mlnb test``'s runs: ``<root>/.mlnb/test``, on this machine only.

    Its workspaces and cache entries never mix with the project's (nor with a
    team's shared ``MLNB_STATE_DIR``): a test run's entry would name a
    workspace that is removed once the test passes.
    """
    return root / STATE_DIR / "test"


def _run(pipeline: Pipeline, uri: str) -> tuple[PipelineResult | None, MlnbError | None]:
    """Run every stage on the throwaway store: the result (when it ran) and the error, if any."""
    try:
        result = run_pipeline(
            pipeline, force=True, tracking_uri=uri, trigger="test", state=test_state(pipeline.root)
        )
        return result, None
    except PipelineError as exc:
        return exc.result, exc
    except MlnbError as exc:
        return None, exc


def _stage_case(suite: str, name: str, stage: StageResult, say: Say) -> Case:
    """A stage of pipeline ``name``'s run as a case: passed (done), skipped or failed."""
    if StageStatus(stage.status).done:
        say(f"  ✓ {stage.name} ({stage.seconds:.1f} s)")
        return Case(suite, stage.name, CaseStatus.PASSED, stage.seconds)
    if stage.status == StageStatus.SKIPPED:
        say(f"  - {stage.name}: skipped (an upstream stage failed)")
        return Case(suite, stage.name, CaseStatus.SKIPPED, message="an upstream stage failed")
    message = f"pipeline {name}: {stage.error}"
    say(f"  ✗ {message}")
    return Case(suite, stage.name, CaseStatus.FAILED, stage.seconds, message)


def _model_case(
    suite: str,
    pipeline: Pipeline,
    result: PipelineResult,
    error: MlnbError | None,
    say: Say,
) -> list[Case]:
    """The model the pipeline delivers, once every stage passed: registered and gated, or not."""
    model = pipeline.spec.model
    if model is None or any(s.status == StageStatus.FAILED for s in result.stages):
        return []
    if result.status == "FINISHED" and result.registration is not None:
        decision = result.decision.reason if result.decision else "registered"
        say(f"  ✓ model {model.name}: {decision}")
        return [Case(suite, "model", CaseStatus.PASSED)]
    say(f"  ✗ model {model.name}: {error}")
    return [Case(suite, "model", CaseStatus.FAILED, message=str(error))]


#: trials of the sweep ``mlnb test`` runs: enough to show trials run, rank and deliver
SWEEP_TRIALS = 2


def _sweep_case(suite: str, spec: Path, profile: str | None, uri: str, say: Say) -> Case:
    """The pipeline's sweep, its first trials with the ci profile: each finished, the best
    delivered."""
    from mlnb.pipelines.sweep import run_sweep

    started = time.perf_counter()
    try:
        swept = run_sweep(
            spec,
            profile=profile,
            max_trials=SWEEP_TRIALS,
            tracking_uri=uri,
            state=test_state(project_root(spec)),
        )
    except MlnbError as exc:
        say(f"  ✗ sweep: {exc}")
        return Case(suite, "sweep", CaseStatus.FAILED, time.perf_counter() - started, str(exc))
    seconds = time.perf_counter() - started
    if not swept.failed:  # as for the pipeline's run: kept only to show what failed
        for trial in swept.trials:
            if trial.result is not None:
                shutil.rmtree(trial.result.workspace, ignore_errors=True)
    if swept.failed:
        message = "; ".join(f"trial {t.number}: {t.error}" for t in swept.failed)
        say(f"  ✗ sweep: {message}")
        return Case(suite, "sweep", CaseStatus.FAILED, seconds, message)
    best = swept.best
    said = f"{len(swept.trials)} trials, best {swept.metric} = {best.value:.4g}" if best else ""
    say(f"  ✓ sweep ({said}, {seconds:.1f} s)")
    return Case(suite, "sweep", CaseStatus.PASSED, seconds)


class _Cell(NamedTuple):
    """A test case of nbval's JUnit XML: one cell of a notebook."""

    classname: str
    name: str
    seconds: float
    failure: str  # the failure's text, '' when it passed


def _nbval(notebooks: dict[Path, Path], uri: str, scratch: Path, say: Say) -> list[Case]:
    """Run the notebooks with nbval in one pytest process; one case per notebook."""
    say(f"notebooks run by hand ({len(notebooks)}, nbval --nbval-lax)")
    report = scratch / "nbval.xml"
    done = _run_nbval(list(notebooks), uri, next(iter(notebooks.values())), report)
    cells = _read_junit(report)
    if not cells:
        tail = (done.stdout + done.stderr).strip()[-2000:]
        return [
            Case(NBVAL_SUITE, "nbval", CaseStatus.FAILED, message=f"nbval did not run:\n{tail}")
        ]
    return [_notebook_case(notebook, root, cells, say) for notebook, root in notebooks.items()]


def _run_nbval(
    notebooks: list[Path], uri: str, root: Path, report: Path
) -> subprocess.CompletedProcess[str]:
    """``pytest --nbval-lax`` on the notebooks from ``root``, their MLflow calls to ``uri``."""
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
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)


def _notebook_case(notebook: Path, root: Path, cells: list[_Cell], say: Say) -> Case:
    """One notebook's cells as a case: its first failing cell, or passed, or none collected."""
    try:
        rel = notebook.relative_to(root)
    except ValueError:
        rel = notebook
    mine = [c for c in cells if _same_notebook(c.classname, notebook, rel)]
    seconds = sum(c.seconds for c in mine)
    failed = [c for c in mine if c.failure]
    if not mine:
        return Case(NBVAL_SUITE, str(rel), CaseStatus.SKIPPED, message="nbval collected no cells")
    if failed:
        first = failed[0]
        text = f"{rel}: {_headline(notebook, first.name, first.failure)}\n{first.failure}"
        say(f"  ✗ {text.splitlines()[0]}")
        return Case(NBVAL_SUITE, str(rel), CaseStatus.FAILED, seconds, text)
    say(f"  ✓ {rel} ({len(mine)} cells, {seconds:.1f} s)")
    return Case(NBVAL_SUITE, str(rel), CaseStatus.PASSED, seconds)


def _read_junit(path: Path) -> list[_Cell]:
    """Every case pytest wrote, as a :class:`_Cell`; none when it wrote no report."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return []
    cells = []
    for item in tree.iter("testcase"):
        failure = item.find("failure")
        if failure is None:
            failure = item.find("error")
        text = ""
        if failure is not None:
            text = _ANSI.sub("", failure.text or failure.get("message") or "")
        cells.append(
            _Cell(
                item.get("classname", ""),
                item.get("name", ""),
                float(item.get("time") or 0),
                text.strip(),
            )
        )
    return cells


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
