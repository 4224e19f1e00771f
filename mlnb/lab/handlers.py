"""The REST API under ``/mlnb/api/``: tornado handlers on Jupyter's own authentication.

Every handler is a jupyter_server :class:`APIHandler` behind
``tornado.web.authenticated``, so it takes the token (or the login cookie) any
Jupyter endpoint takes. Errors answer JSON ``{"message": ...}`` with a 4xx
status naming what to fix, never a traceback. The work (MLflow queries,
specs, notebooks) runs on worker threads, off the server's event loop.

===============================================  =========================================
``GET  /mlnb/api/pipelines``                     every spec: stages, edges, profiles, problems
``GET  /mlnb/api/pipelines/<id>/runs?limit=N``   its recent runs with their stages' states
``GET  /mlnb/api/runs/<run_id>``                 one pipeline run with its stages' states
``POST /mlnb/api/runs``                          start ``mlnb run``: ``{pipeline, profile, params}``
``GET  /mlnb/api/launches[/<id>]``               the runs started here: process, state, output
``POST /mlnb/api/launches/<id>/stop``            stop one as Ctrl-C does
``GET  /mlnb/api/runs/<run_id>/stages/<stage>``  a stage's executed notebook, as HTML
``GET  /mlnb/api/parameters?notebook=P``         the stages using notebook P, their runs
``GET  /mlnb/api/parameters?notebook=P&...``     with ``pipeline``, ``stage`` and ``run`` or
                                                 ``profile``: the parameters cell's source
``GET  /mlnb/api/models``                        each registered model's status
===============================================  =========================================
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from mlnb.errors import MlnbError, NotFoundError, SpecError, TrackingError, UsageError
from mlnb.lab import launcher as launchmod
from mlnb.lab import parameters as paramsmod
from mlnb.lab import project
from mlnb.lab import runs as runsmod
from mlnb.store import redacted_text
from mlnb.tracking import Tracker

#: the largest request body the API reads
MAX_BODY = 64 * 1024
#: where the API is, below the server's base URL
API = "/mlnb/api"
_RUN_ID = r"[0-9a-f]{32}"
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_T = TypeVar("_T")


class Lab:
    """What the handlers share: the project folder, its store (opened once), the launches."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.launcher = launchmod.Launcher(root)
        self._tracker: Tracker | None = None

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.root)
        return self._tracker


class Handler(APIHandler):
    """An mlnb endpoint: JSON in, JSON out, ``MlnbError`` as a 4xx answer naming the fix."""

    lab: Lab

    def initialize(self, lab: Lab) -> None:
        self.lab = lab

    async def work(self, call: Callable[[], _T]) -> _T:
        """Run ``call`` on a worker thread; an mlnb error becomes a JSON 4xx answer."""
        try:
            return await asyncio.to_thread(call)
        except NotFoundError as error:
            raise Answer(404, str(error)) from None
        except UsageError as error:
            raise Answer(400, str(error)) from None
        except SpecError as error:
            raise Answer(400, str(error), problems=[str(p) for p in error.problems]) from None
        except TrackingError as error:  # the store's own "no run 'ID'" is a run not there
            missing = str(error).startswith("no run ")
            raise Answer(404 if missing else 503, redacted_text(str(error))) from None
        except MlnbError as error:
            raise Answer(400, redacted_text(str(error))) from None

    def body(self) -> dict[str, Any]:
        """The request's JSON object (at most :data:`MAX_BODY` bytes)."""
        if len(self.request.body) > MAX_BODY:
            raise Answer(413, f"the request body is over {MAX_BODY} bytes")
        try:
            found = json.loads(self.request.body or b"{}")
        except ValueError as error:
            raise Answer(400, f"the request body is not JSON: {error}") from None
        if not isinstance(found, dict):
            raise Answer(400, "the request body must be a JSON object")
        return found

    def reply(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value, default=str))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error as ``{"message": ...}`` (with ``problems`` for a spec), never a traceback."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, Answer):
            reply: dict[str, Any] = {"message": exc.message, **exc.extra}
        elif isinstance(exc, tornado.web.HTTPError):
            reply = {"message": exc.log_message or exc.reason or self._reason}
        else:
            reply = {"message": f"{self._reason}: the server's log says why"}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(reply))


class Answer(tornado.web.HTTPError):
    """A 4xx answer and its message (and any fields beside it)."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(status, message.replace("%", "%%"))
        self.message = message
        self.extra = extra


class PipelinesHandler(Handler):
    @tornado.web.authenticated
    async def get(self) -> None:
        found = await self.work(lambda: project.pipelines(self.lab.root))
        self.reply({"root": str(self.lab.root), "pipelines": [p.as_dict() for p in found]})


def _limit(handler: Handler) -> int:
    text = handler.get_argument("limit", "10")
    if not text.isdigit() or not 1 <= int(text) <= runsmod.MAX_RUNS:
        raise Answer(400, f"limit must be a whole number from 1 to {runsmod.MAX_RUNS}")
    return int(text)


class PipelineRunsHandler(Handler):
    @tornado.web.authenticated
    async def get(self, pipeline: str) -> None:
        limit = _limit(self)

        def found() -> list[dict[str, Any]]:
            spec, _ = project.read_spec(project.spec_of(self.lab.root, pipeline))
            return [r.as_dict() for r in runsmod.recent(self.lab.tracker, spec.name, limit)]

        self.reply({"pipeline": pipeline, "runs": await self.work(found)})


class RunHandler(Handler):
    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        def found() -> runsmod.PipelineRun:
            tracker = self.lab.tracker
            return runsmod.describe(tracker, runsmod.pipeline_run(tracker, run_id))

        self.reply((await self.work(found)).as_dict())


class StartHandler(Handler):
    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.body()
        pipeline, profile = body.get("pipeline"), body.get("profile") or None
        if not isinstance(pipeline, str) or not pipeline:
            raise Answer(400, "the body needs 'pipeline': the id of a spec in pipelines/")
        if profile is not None and not isinstance(profile, str):
            raise Answer(400, "'profile' must be the name of one of the spec's profiles")

        def start() -> launchmod.Launch:
            params = launchmod.overrides(body.get("params"))
            spec = project.spec_of(self.lab.root, pipeline)
            from mlnb.pipelines.locate import load_pipeline
            from mlnb.specs.pipeline import parse_assignments

            # every problem of the spec, profile and overrides before a process starts
            load_pipeline(spec, profile, parse_assignments(f"{k}={v}" for k, v in params.items()))
            return self.lab.launcher.start(pipeline, spec, profile, params)

        launch = await self.work(start)
        self.reply(launch.as_dict(), status=202)


class LaunchesHandler(Handler):
    @tornado.web.authenticated
    async def get(self, launch_id: str | None = None) -> None:
        launcher = self.lab.launcher

        def found() -> Any:
            chosen = [launcher.get(launch_id)] if launch_id else list(launcher.launches.values())
            for launch in chosen:
                launcher.find_run(self.lab.tracker, launch)
            items = [launch.as_dict() for launch in chosen]
            return items[0] if launch_id else {"launches": items}

        self.reply(await self.work(found))


class StopHandler(Handler):
    @tornado.web.authenticated
    async def post(self, launch_id: str) -> None:
        launch = await self.work(lambda: self.lab.launcher.stop(launch_id))
        self.reply(launch.as_dict(), status=202)


class NotebookHandler(Handler):
    """A stage's executed notebook as HTML, shown sandboxed (its outputs run no script here)."""

    @tornado.web.authenticated
    async def get(self, run_id: str, stage: str) -> None:
        def render() -> str:
            tracker = self.lab.tracker
            run = runsmod.pipeline_run(tracker, run_id)
            executed = runsmod.executed_notebook(tracker, runsmod.stage_run(tracker, run, stage))
            if executed is None:
                raise NotFoundError(f"no executed notebook of stage '{stage}' in run '{run_id}'")
            from mlnb.tracking import render_html

            with tempfile.TemporaryDirectory() as scratch:
                return render_html(executed, Path(scratch) / "notebook.html").read_text()

        html = await self.work(render)
        self.set_header("Content-Security-Policy", "sandbox allow-popups")
        self.finish(html, set_content_type="text/html; charset=utf-8")


class FailingCellHandler(Handler):
    @tornado.web.authenticated
    async def get(self, run_id: str, stage: str) -> None:
        def found() -> dict[str, Any]:
            tracker = self.lab.tracker
            run = runsmod.pipeline_run(tracker, run_id)
            executed = runsmod.executed_notebook(tracker, runsmod.stage_run(tracker, run, stage))
            cell = runsmod.failing_cell(executed) if executed else None
            return {"index": cell[0], "id": cell[1]} if cell else {"index": None, "id": None}

        self.reply(await self.work(found))


class ParametersHandler(Handler):
    @tornado.web.authenticated
    async def get(self) -> None:
        notebook = self.get_argument("notebook", "")
        if not notebook or len(notebook) > 1000:
            raise Answer(400, "give ?notebook=<path of the notebook, relative to the project>")
        pipeline = self.get_argument("pipeline", "")
        root, tracker_of = self.lab.root, lambda: self.lab.tracker
        if not pipeline:

            def listed() -> dict[str, Any]:
                found = []
                for use in paramsmod.uses(root, notebook):
                    spec, _ = project.read_spec(project.spec_of(root, use.pipeline))
                    recent = runsmod.recent(tracker_of(), spec.name, limit=10)
                    found.append(
                        {
                            "pipeline": use.pipeline,
                            "stage": use.stage,
                            "profiles": use.profiles,
                            "runs": [
                                {
                                    "run_id": r.run_id,
                                    "status": r.status,
                                    "started": r.started,
                                    "profile": r.profile,
                                }
                                for r in recent
                            ],
                        }
                    )
                return {"notebook": notebook, "uses": found}

            self.reply(await self.work(listed))
            return
        stage, run_id = self.get_argument("stage", ""), self.get_argument("run", "")
        profile = self.get_argument("profile", "")
        if not stage:
            raise Answer(400, "give &stage=<the stage of the pipeline that runs this notebook>")

        def chosen() -> paramsmod.Parameters:
            if run_id:
                return paramsmod.of_run(tracker_of(), root, pipeline, stage, run_id)
            return paramsmod.of_profile(tracker_of(), root, pipeline, stage, profile or None)

        self.reply((await self.work(chosen)).as_dict())


class ModelsHandler(Handler):
    @tornado.web.authenticated
    async def get(self) -> None:
        from mlnb.monitoring.status import gather

        found = await self.work(lambda: gather(self.lab.root, [], checks=3))
        self.reply({"models": [m.as_dict() for m in found]})


def routes(lab: Lab) -> list[tuple[str, type[Handler], dict[str, Any]]]:
    """The API's URL patterns (below the server's base URL), each handler given ``lab``."""
    table: list[tuple[str, type[Handler]]] = [
        ("pipelines", PipelinesHandler),
        (f"pipelines/({_NAME})/runs", PipelineRunsHandler),
        ("runs", StartHandler),
        (f"runs/({_RUN_ID})", RunHandler),
        (f"runs/({_RUN_ID})/stages/({_NAME})/notebook", NotebookHandler),
        (f"runs/({_RUN_ID})/stages/({_NAME})/failing-cell", FailingCellHandler),
        ("launches", LaunchesHandler),
        (r"launches/([0-9]+-[0-9]+)", LaunchesHandler),
        (r"launches/([0-9]+-[0-9]+)/stop", StopHandler),
        ("parameters", ParametersHandler),
        ("models", ModelsHandler),
    ]
    return [(url_path_join(API, path), handler, {"lab": lab}) for path, handler in table]
