"""The service's OpenAPI description (``/openapi.json``) and its Swagger UI page (``/docs``).

``mlflow models serve`` (MLflow 3, FastAPI) describes ``/ping``, ``/health``,
``/version`` and ``/invocations`` with empty schemas; mlnb describes the same
paths, its own (``/feedback``, ``/metrics``, ``/mlnb/health``,
``/mlnb/version``), and the request body of ``/invocations`` from the
serving version's signature: the columns and their types in each JSON
scoring format, CSV and Parquet. The page at ``/docs`` is FastAPI's Swagger
UI page, with the same assets.
"""

from __future__ import annotations

import html
from typing import Any

from mlnb import __version__
from mlnb.serving.parsing import CSV, JSON, PARQUET, InputSchema

#: JSON Schema types of MLflow's column types
_TYPES = {
    "double": {"type": "number"},
    "float": {"type": "number"},
    "long": {"type": "integer"},
    "integer": {"type": "integer"},
    "boolean": {"type": "boolean"},
    "string": {"type": "string"},
    "datetime": {"type": "string", "format": "date-time"},
    "binary": {"type": "string", "contentEncoding": "base64"},
}
_ANY: dict[str, Any] = {}


def _ok(description: str, schema: dict[str, Any] = _ANY) -> dict[str, Any]:
    return {"200": {"description": description, "content": {JSON: {"schema": schema}}}}


def _error(description: str) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
        "required": ["error_code", "message"],
    }
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _formats(schema: InputSchema | None) -> dict[str, Any]:
    """The JSON body of ``/invocations``: one scoring format of MLflow's, with the columns."""
    if schema is None:
        row: dict[str, Any] = {}
        record: dict[str, Any] = {"type": "object"}
    else:
        row = {
            "type": "array",
            "prefixItems": [_value(schema, i) for i in range(len(schema.columns))],
        }
        record = {
            "type": "object",
            "properties": {name: _value(schema, i) for i, name in enumerate(schema.columns)},
            "required": [
                n for n, required in zip(schema.columns, schema.required, strict=True) if required
            ],
        }
    split = {
        "type": "object",
        "properties": {
            "columns": {"type": "array", "items": {"type": "string"}},
            "data": {"type": "array", "items": row},
            "index": {"type": "array"},
        },
        "required": ["data"],
    }
    formats = {
        "dataframe_split": split,
        "dataframe_records": {"type": "array", "items": record},
        "instances": {"type": "array"},
        "inputs": {},
    }
    return {
        "oneOf": [
            {
                "type": "object",
                "properties": {name: body, "params": {"type": "object"}},
                "required": [name],
            }
            for name, body in formats.items()
        ]
    }


def _value(schema: InputSchema, index: int) -> dict[str, Any]:
    kind = dict(_TYPES.get(schema.kinds[index], {}))
    return kind if schema.required[index] else {"anyOf": [kind, {"type": "null"}]}


def describe(model: str, version: str, schema: InputSchema | None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a service serving ``version`` of ``model``."""
    invocations = {
        "summary": "Predict",
        "description": f"Predictions of version {version} of '{model}', in MLflow's scoring "
        "protocol; the answer names the version and the request id.",
        "operationId": "invocations",
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": _formats(schema)},
                CSV: {"schema": {"type": "string"}},
                PARQUET: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": {
            **_ok(
                "The predictions",
                {
                    "type": "object",
                    "properties": {
                        "predictions": {},
                        "model_version": {"type": "string"},
                        "request_id": {"type": "string"},
                    },
                },
            ),
            "400": _error("The input does not fit the model, or the model failed on it"),
            "413": _error("The request is over a limit of the service"),
            "415": _error("The media type is not JSON, CSV or Parquet, or not UTF-8"),
            "503": _error("The prediction log cannot be written"),
            "504": _error("The request took longer than the service's timeout"),
        },
    }
    feedback = {
        "summary": "Labels",
        "description": "Ground-truth labels for earlier predictions, by request id.",
        "operationId": "feedback",
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "request_id": {"type": "string"},
                            "labels": {"type": "array"},
                        },
                    }
                }
            },
        },
        "responses": {**_ok("How many items were accepted"), "404": _error("Unknown request")},
    }

    def get(summary: str, description: str, operation: str, answer: str) -> dict[str, Any]:
        return {
            "get": {
                "summary": summary,
                "description": description,
                "operationId": operation,
                "responses": _ok(answer),
            }
        }

    return {
        "openapi": "3.1.0",
        "info": {"title": f"mlnb serve: {model}", "version": __version__},
        "paths": {
            "/ping": get("Ping", "The service is up and a version is loaded.", "ping", "Up"),
            "/health": get("Ping", "As /ping (MLflow's health check).", "health", "Up"),
            "/version": get("Version", "MLflow's version, as text.", "version", "The version"),
            "/invocations": {"post": invocations},
            "/feedback": {"post": feedback},
            "/metrics": get("Metrics", "Prometheus metrics.", "metrics", "The metrics"),
            "/mlnb/health": get(
                "Health",
                "ok or degraded, the served and aliased versions, and each trouble.",
                "mlnb_health",
                "The service's state",
            ),
            "/mlnb/version": get(
                "Details",
                "The versions of MLflow, mlnb and the model, its run, files and store.",
                "mlnb_version",
                "The details",
            ),
        },
    }


def swagger_page(title: str) -> str:
    """The ``/docs`` page: Swagger UI on ``/openapi.json``, with FastAPI's assets."""
    return f"""<!DOCTYPE html>
<html>
<head>
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link type="text/css" rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
<title>{html.escape(title)} - Swagger UI</title>
</head>
<body>
<div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>
const ui = SwaggerUIBundle({{
  url: '/openapi.json',
  dom_id: '#swagger-ui',
  layout: 'BaseLayout',
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
}})
</script>
</body>
</html>
"""
