"""The team setup's smoke test: a run logged through ``mlflow server`` is in PostgreSQL and S3."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.team


def test_a_run_goes_through_the_server_to_postgres_and_s3(
    mlflow_server, postgres, s3, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment_id = client.create_experiment("smoke")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "loss", 0.25, step=1)
    note = tmp_path / "hello.txt"
    note.write_text("hello, team\n")
    client.log_artifact(run_id, str(note), artifact_path="notes")
    client.set_terminated(run_id)

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"loss": 0.25}
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    # the run is a row of the server's PostgreSQL
    with postgres.connect() as conn:
        rows = conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)).fetchall()
    assert rows == [("FINISHED",)]
    # the artifact went through the server to the bucket
    keys = [k for k in s3.keys("artifacts/") if k.endswith(f"/{run_id}/artifacts/notes/hello.txt")]
    assert len(keys) == 1, s3.keys()
    body = s3.client().get_object(Bucket=s3.bucket, Key=keys[0])["Body"].read()
    assert body == b"hello, team\n"
    # and comes back through it
    back = client.download_artifacts(run_id, "notes/hello.txt", str(tmp_path / "back"))
    assert Path(back).read_text() == "hello, team\n"


def test_the_server_goes_down_and_comes_back_with_its_runs(mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment_id = client.create_experiment("survives a restart")
    port = mlflow_server.uri.rsplit(":", 1)[1]

    mlflow_server.stop()
    try:
        assert mlflow_server.pid is None
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{mlflow_server.uri}/health", timeout=2, trust_env=False)
    finally:
        mlflow_server.start()  # up again for the tests after this one, whatever happened
    assert mlflow_server.uri.endswith(f":{port}")
    assert client.get_experiment(experiment_id).name == "survives a restart"
