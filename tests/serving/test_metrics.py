"""``GET /metrics``: requests, errors, latency, rows and the version served, in Prometheus text."""

from __future__ import annotations

from tests.serving.helpers import FORMATS, Server, Store, metric, raw


def test_metrics_count_requests_errors_and_the_version(server: Server, store: Store) -> None:
    assert server.predict(FORMATS["dataframe_split"](store.X.head(3))["json"]).status_code == 200
    assert server.predict(**raw(b"{")).status_code == 400
    response = server.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    ok = metric(text, "mlnb_serve_requests_total", endpoint="invocations", code="200")
    assert ok >= 1
    assert metric(text, "mlnb_serve_requests_total", endpoint="invocations", code="400") >= 1
    assert metric(text, "mlnb_serve_errors_total", endpoint="invocations", kind="bad_request") >= 1
    assert metric(text, "mlnb_serve_request_duration_seconds_count", endpoint="invocations") >= ok
    assert metric(text, "mlnb_serve_predicted_rows_total") >= 3
    assert metric(text, "mlnb_serve_model_version", model="cancer", version="1") == 1
    assert metric(text, "mlnb_serve_model_swaps_total") == 0
    assert metric(text, "mlnb_serve_model_load_failures_total") == 0
