"""The REST API under /mlnb/api/ on a real Jupyter server, a real store and real runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from tornado.httpclient import HTTPResponse

from mlnb.delivery.lint import check_spec
from mlnb.engine.parameters import injected_cell
from mlnb.lab import parameters as paramsmod
from mlnb.pipelines.locate import load_pipeline
from tests.conftest import leftover_processes
from tests.lab.conftest import mlnb

pytestmark = pytest.mark.slow  # the module trains the example

Fetch = Callable[..., Awaitable[HTTPResponse]]


async def get(jp_fetch: Fetch, *path: str, **params: str) -> Any:
    response = await jp_fetch("mlnb", "api", *path, params=params)
    return json.loads(response.body)


async def failing(jp_fetch: Fetch, *path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    response = await jp_fetch("mlnb", "api", *path, raise_error=False, **kw)
    return response.code, json.loads(response.body)


async def post(jp_fetch: Fetch, *path: str, body: Any) -> tuple[int, dict[str, Any]]:
    return await failing(jp_fetch, *path, method="POST", body=json.dumps(body))


async def test_pipelines_have_their_dag_and_the_problems_mlnb_check_reports(
    jp_fetch: Fetch, trained: Path
) -> None:
    found = {p["id"]: p for p in (await get(jp_fetch, "pipelines"))["pipelines"]}
    assert sorted(found) == ["cancer", "p", "slow", "typo"]  # monitor.yaml is no pipeline
    cancer = found["cancer"]
    assert cancer["problems"] == [] and cancer["profiles"] == ["ci"]
    assert [(s["name"], s["level"]) for s in cancer["stages"]] == [
        ("prepare", 0),
        ("train", 1),
        ("evaluate", 2),
    ]
    assert {(e["source"], e["target"], e["kind"], e["output"]) for e in cancer["edges"]} == {
        ("prepare", "train", "output", "train_path"),
        ("prepare", "evaluate", "output", "test_path"),
        ("train", "evaluate", "output", "model_path"),
    }
    assert [(e["source"], e["target"], e["kind"]) for e in found["p"]["edges"]] == [
        ("fail", "after", "needs")
    ]
    expected = [str(p) for p in check_spec(trained / "pipelines" / "typo.yaml")]
    assert expected and [p["text"] for p in found["typo"]["problems"]] == expected
    assert "frist" in found["typo"]["problems"][0]["message"]
    assert [s["name"] for s in found["typo"]["stages"]] == ["first", "second"]


async def test_runs_show_each_stage_and_a_failure_opens_at_its_cell(
    jp_fetch: Fetch, trained: Path
) -> None:
    (run,) = (await get(jp_fetch, "pipelines", "cancer", "runs"))["runs"]
    assert run["status"] == "FINISHED" and run["trigger"] == "manual" and run["profile"] == "ci"
    assert [(s["name"], s["state"], s["notebook"]) for s in run["stages"]] == [
        ("prepare", "succeeded", True),
        ("train", "succeeded", True),
        ("evaluate", "succeeded", True),
    ]
    assert run["url"].endswith(f"/runs/{run['run_id']}") and run["seconds"] > 0
    (failed,) = (await get(jp_fetch, "pipelines", "p", "runs"))["runs"]
    assert failed["status"] == "FAILED"
    assert [(s["name"], s["state"]) for s in failed["stages"]] == [("fail", "failed")]
    assert "boom" in failed["stages"][0]["error"]
    cell = await get(jp_fetch, "runs", failed["run_id"], "stages", "fail", "failing-cell")
    executed = nbformat.read(
        trained / ".mlnb" / "runs" / failed["run_id"] / "fail.ipynb", as_version=4
    )
    assert "boom" in executed.cells[cell["index"]].source and cell["id"]
    page = await jp_fetch(
        "mlnb", "api", "runs", failed["run_id"], "stages", "fail", "notebook", method="GET"
    )
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"].startswith("sandbox")
    assert f'id="cell-id={cell["id"]}"' in page.body.decode()


async def test_parameters_are_those_papermill_injected(jp_fetch: Fetch, trained: Path) -> None:
    listed = await get(jp_fetch, "parameters", notebook="notebooks/evaluate.ipynb")
    (use,) = listed["uses"]
    assert (use["pipeline"], use["stage"], use["profiles"]) == ("cancer", "evaluate", ["ci"])
    (run,) = use["runs"]
    workspace = trained / ".mlnb" / "runs" / run["run_id"]
    injected = injected_cell(workspace / "evaluate.ipynb")
    assert injected and str(workspace / "train" / "model.joblib") in injected
    answer = await get(
        jp_fetch,
        "parameters",
        notebook="notebooks/evaluate.ipynb",
        pipeline="cancer",
        stage="evaluate",
        run=run["run_id"],
    )
    assert answer["source"] == injected and answer["origin"] == "executed notebook"
    # resolved without the executed notebook, the parameters are the same, word for word
    pipeline = load_pipeline(trained / "pipelines" / "cancer.yaml", "ci")
    for stage in ("prepare", "train", "evaluate"):
        assert paramsmod.resolve(pipeline, stage, workspace) == injected_cell(
            workspace / f"{stage}.ipynb"
        )
    profile = await get(
        jp_fetch,
        "parameters",
        notebook="notebooks/train.ipynb",
        pipeline="cancer",
        stage="train",
        profile="ci",
    )
    assert "n_estimators = 5" in profile["source"] and profile["run_id"] == run["run_id"]
    plain = await get(
        jp_fetch, "parameters", notebook="notebooks/train.ipynb", pipeline="cancer", stage="train"
    )
    assert "n_estimators = 200" in plain["source"]


async def test_models_say_what_mlnb_status_says(jp_fetch: Fetch, trained: Path) -> None:
    status = mlnb(trained, "status", "--json")
    assert status.returncode == 0, status.stderr
    (expected,) = json.loads(status.stdout)
    (model,) = (await get(jp_fetch, "models"))["models"]
    assert model == expected and model["champion"] == "1"


@pytest.mark.parametrize(
    ("path", "kw", "code", "says"),
    [
        (("pipelines", "nope", "runs"), {}, 404, "no pipeline 'nope'"),
        (("pipelines", "cancer", "runs"), {"params": {"limit": "0"}}, 400, "limit"),
        (("runs", "0" * 32), {}, 404, "no run"),
        (("parameters",), {}, 400, "notebook="),
        (("launches", "1-1"), {}, 404, "no run '1-1'"),
        (("runs",), {"method": "POST", "body": "{"}, 400, "not JSON"),
        (("runs",), {"method": "POST", "body": "[]"}, 400, "JSON object"),
        (("runs",), {"method": "POST", "body": "{}"}, 400, "'pipeline'"),
        (("runs",), {"method": "POST", "body": "x" * 70_000}, 413, "bytes"),
    ],
)
async def test_bad_requests_answer_json_naming_the_fix(
    jp_fetch: Fetch, path: tuple[str, ...], kw: dict[str, Any], code: int, says: str
) -> None:
    got, body = await failing(jp_fetch, *path, **kw)
    assert got == code and says in body["message"] and "traceback" not in body


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"pipeline": "cancer", "profile": "fast"}, "profile"),
        ({"pipeline": "cancer", "params": {"n_trees": 3}}, "n_trees"),
        ({"pipeline": "cancer", "params": {f"k{i}": 1 for i in range(40)}}, "at most 32"),
        ({"pipeline": "cancer", "params": {"seed": "1" * 2000}}, "at most 1000"),
        ({"pipeline": "cancer", "params": {"a=b": 1}}, "not a name"),
        ({"pipeline": "typo"}, "frist"),
    ],
)
async def test_a_run_that_cannot_start_starts_no_process(
    jp_fetch: Fetch, body: dict[str, Any], says: str
) -> None:
    code, answer = await post(jp_fetch, "runs", body=body)
    assert code == 400 and says in answer["message"]
    assert (await get(jp_fetch, "launches"))["launches"] == []


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds (the run's own pace decides; pytest's timeout bounds it)."""
    while not await check():
        await asyncio.sleep(0.3)


async def test_stop_interrupts_a_run_as_ctrl_c_does(jp_fetch: Fetch, trained: Path) -> None:
    code, launch = await post(jp_fetch, "runs", body={"pipeline": "slow"})
    assert code == 202 and launch["state"] == "running" and launch["pid"] > 0
    state: dict[str, Any] = {}

    async def stage_running() -> bool:
        state.update(await get(jp_fetch, "launches", launch["id"]))
        assert state["state"] == "running", state["output"]
        if not state["run_id"]:
            return False
        run = await get(jp_fetch, "runs", state["run_id"])
        return [(s["name"], s["state"]) for s in run["stages"]] == [("nap", "running")]

    await until(stage_running)
    code, stopping = await post(jp_fetch, "launches", launch["id"], "stop", body={})
    assert code == 202 and stopping["state"] in ("stopping", "exited")

    async def exited() -> bool:
        state.update(await get(jp_fetch, "launches", launch["id"]))
        return bool(state["state"] == "exited")

    await until(exited)
    assert state["returncode"] == 130, state["output"]
    run = await get(jp_fetch, "runs", state["run_id"])
    assert run["status"] == "KILLED"
    assert [(s["name"], s["state"]) for s in run["stages"]] == [("nap", "killed")]
    assert not leftover_processes(trained)


async def test_a_server_that_stops_stops_the_runs_it_started(
    jp_fetch: Fetch, jp_serverapp: Any, trained: Path
) -> None:
    code, launch = await post(jp_fetch, "runs", body={"pipeline": "slow"})
    assert code == 202
    state: dict[str, Any] = {}

    async def stage_running() -> bool:
        state.update(await get(jp_fetch, "launches", launch["id"]))
        if not state["run_id"]:
            return False
        run = await get(jp_fetch, "runs", state["run_id"])
        return [s["state"] for s in run["stages"]] == ["running"]

    await until(stage_running)
    await jp_serverapp.extension_manager.stop_all_extensions()  # what the server's shutdown calls
    lab = next(a for a in jp_serverapp.extension_manager.extension_apps["mlnb.lab"])
    (process,) = [launch.process for launch in lab.lab.launcher.launches.values()]
    assert process.returncode == 130
    assert not leftover_processes(trained)


async def test_the_api_takes_jupyters_token_and_nothing_else(
    jp_fetch: Fetch, http_server_client: Any, jp_base_url: str
) -> None:
    assert (await jp_fetch("mlnb", "api", "models")).code == 200
    response = await http_server_client.fetch(f"{jp_base_url}mlnb/api/pipelines", raise_error=False)
    assert response.code == 403
