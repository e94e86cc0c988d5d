"""The endpoint's OpenAPI 3 description, served at /openapi.json.

Built from the same constants the app uses (media types, header names, error
codes), so the description cannot drift from what the server accepts.
"""

from typing import Any

from service import media
from service.errors import ENDPOINT_CODES, ENDPOINT_ERRORS

OPENAPI_VERSION = "3.0.3"
_REF = "#/components/schemas/"


def _error_statuses() -> dict[str, tuple[str, list[str]]]:
    """Each status with what it means and the codes it carries, from service/errors.py."""
    statuses: dict[str, tuple[str, list[str]]] = {}
    for error in sorted(ENDPOINT_ERRORS, key=lambda e: e.status):
        text, codes = statuses.get(str(error.status), ("", []))
        statuses[str(error.status)] = (f"{text} {error.summary}".strip(), [*codes, error.code])
    return statuses


ERROR_STATUSES = _error_statuses()


def _object(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict:
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


RECORD = {
    "type": "object",
    "description": "One row: the id column and the feature columns (any order, extras ignored). "
    "A missing or null feature is replaced by the training mean.",
    "additionalProperties": {"nullable": True},
}
RECORDS = {"type": "array", "items": {"$ref": _REF + "Record"}}
ROW = {
    "type": "array",
    "items": {"nullable": True},
    "description": "One positional row: the features in the bundle's input order, optionally "
    "with the id first (one value more than the features).",
}
ROWS = {"type": "array", "items": ROW}
PARAMS = {
    "type": "object",
    "description": "MLflow's inference parameters: accepted and ignored (the model takes none).",
}
EXACTLY_ONE = " Exactly one of dataframe_split, dataframe_records, instances, inputs."
COLUMNS = {
    "type": "object",
    "description": "Column name -> list of values, all lists of equal length.",
    "additionalProperties": {"type": "array", "items": {"nullable": True}},
}

SCHEMAS: dict[str, Any] = {
    "Record": RECORD,
    "Records": RECORDS,
    "DataframeSplit": _object(
        {
            "dataframe_split": _object(
                {
                    "columns": {"type": "array", "items": {"type": "string"}},
                    "data": {"type": "array", "items": {"type": "array", "items": {}}},
                },
                ["columns", "data"],
            ),
            "params": PARAMS,
        },
        ["dataframe_split"],
        description="MLflow's split orient." + EXACTLY_ONE,
    ),
    "DataframeRecords": _object(
        {"dataframe_records": RECORDS, "params": PARAMS},
        ["dataframe_records"],
        description="MLflow's records." + EXACTLY_ONE,
    ),
    "Instances": _object(
        {"instances": {"oneOf": [RECORDS, ROWS, COLUMNS, RECORD]}, "params": PARAMS},
        ["instances"],
        description="MLflow's instances." + EXACTLY_ONE,
    ),
    "Inputs": _object(
        {"inputs": {"oneOf": [RECORDS, ROWS, COLUMNS, RECORD]}, "params": PARAMS},
        ["inputs"],
        description="MLflow's inputs." + EXACTLY_ONE,
    ),
    "Rows": ROWS,
    "Prediction": _object(
        {"id": {"description": "The input row's id."}, "activation": {"type": "number"}},
        ["id", "activation"],
    ),
    "Predictions": _object(
        {"predictions": {"type": "array", "items": {"$ref": _REF + "Prediction"}}},
        ["predictions"],
    ),
    "Error": _object(
        {
            "error": {
                "type": "string",
                "enum": list(ENDPOINT_CODES),
                "description": "Short code, e.g. invalid_data.",
            },
            "message": {"type": "string", "description": "What to fix."},
            "error_code": {
                "type": "string",
                "description": "MLflow's name for the error, e.g. BAD_REQUEST.",
            },
        },
        ["error", "message", "error_code"],
    ),
    "Status": _object(
        {
            "status": {"type": "string", "enum": ["ok"]},
            "model": _object({"name": {"type": "string"}, "version": {"type": "string"}}),
        },
        ["status"],
    ),
    "ExecutionParameters": _object(
        {
            "MaxConcurrentTransforms": {"type": "integer"},
            "BatchStrategy": {"type": "string", "enum": ["MULTI_RECORD"]},
            "MaxPayloadInMB": {"type": "integer"},
        },
        ["MaxConcurrentTransforms", "BatchStrategy", "MaxPayloadInMB"],
    ),
}


CSV_IN = (
    "CSV. The first line is a header when it names one of the bundle's columns; otherwise "
    "every line is a row of positional values (the features in input order, optionally "
    "with the id first), as SageMaker batch transform sends them."
)
CSV_OUT = (
    "CSV: id,activation; after headerless input, no header and one line per input line "
    "in input order (the id only when the input carried one)."
)
LINES_IN = "One JSON object (a record) a line, or one array (a positional row) on every line."


def _binary(description: str) -> dict[str, Any]:
    return {"schema": {"type": "string", "format": "binary", "description": description}}


def _request_content() -> dict[str, Any]:
    json_shapes = [
        {"$ref": _REF + name}
        for name in ("DataframeSplit", "DataframeRecords", "Instances", "Inputs", "Records", "Rows")
    ]
    return {
        media.JSON: {"schema": {"oneOf": json_shapes}},
        media.PARQUET: _binary("A parquet file."),
        media.X_PARQUET: _binary("A parquet file."),
        media.CSV: {"schema": {"type": "string", "description": CSV_IN}},
        media.JSONLINES: {"schema": {"type": "string", "description": LINES_IN}},
        media.NDJSON: {"schema": {"type": "string", "description": LINES_IN}},
    }


def _prediction_content() -> dict[str, Any]:
    return {
        media.JSON: {"schema": {"$ref": _REF + "Predictions"}},
        media.PARQUET: _binary("Parquet with columns id, activation."),
        media.X_PARQUET: _binary("Parquet with columns id, activation."),
        media.CSV: {"schema": {"type": "string", "description": CSV_OUT}},
        media.JSONLINES: {"schema": {"type": "string", "description": "One prediction a line."}},
        media.NDJSON: {"schema": {"type": "string", "description": "One prediction a line."}},
    }


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: {"$ref": f"#/components/responses/E{status}"} for status in statuses}


def _json(schema: str, description: str, headers: dict[str, Any] | None = None) -> dict:
    response: dict[str, Any] = {
        "description": description,
        "content": {media.JSON: {"schema": {"$ref": _REF + schema}}},
    }
    if headers:
        response["headers"] = headers
    return response


MODEL_HEADERS = {
    "X-Model-Name": {
        "schema": {"type": "string"},
        "description": "Name of the model that answered.",
    },
    "X-Model-Version": {
        "schema": {"type": "string"},
        "description": "Version of the model that answered.",
    },
}


def _operation(operation_id: str, summary: str, responses: dict, **extra: Any) -> dict:
    return {"summary": summary, "operationId": operation_id, **extra, "responses": responses}


def _body(media_type: str, description: str, schema_type: str = "string") -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": schema_type}}}}


def _invocations(protected: dict[str, Any], protected_errors: tuple[str, ...]) -> dict[str, Any]:
    accept = {
        "name": "Accept",
        "in": "header",
        "required": False,
        "description": "Answer type; DEFAULT_ACCEPT (JSON unless set) when absent or */*.",
        "schema": {"type": "string", "enum": list(media.MEDIA_TYPES)},
    }
    predictions = {
        "description": "Predictions in the negotiated type.",
        "headers": MODEL_HEADERS,
        "content": _prediction_content(),
    }
    return _operation(
        "invocations",
        "Predict: one output row (id, activation) per input row.",
        {
            "200": predictions,
            **_errors("400", *protected_errors, "406", "413", "415", "422", "500", "503"),
        },
        **protected,
        parameters=[accept],
        requestBody={"required": True, "content": _request_content()},
    )


def _open_operations() -> dict[str, dict[str, Any]]:
    """The GET operations that never ask for a key, by path."""
    ping = "Readiness: 200 when a model is loaded and usable (SageMaker health check)."
    version = "The service's version, as text (MLflow's client asks for it)."
    return {
        "/ping": _operation(
            "ping",
            ping,
            {"200": _json("Status", "A model is loaded.", MODEL_HEADERS), **_errors("503")},
        ),
        "/execution-parameters": _operation(
            "executionParameters",
            "SageMaker batch transform parameters.",
            {"200": _json("ExecutionParameters", "Parameters.")},
        ),
        "/health": _operation(
            "health",
            "Liveness: 200 while the process serves, model or not.",
            {"200": _json("Status", "The process serves.")},
        ),
        "/version": _operation("version", version, {"200": _body(media.TEXT, "Version text.")}),
        "/openapi.json": _operation(
            "openapi", "This document.", {"200": _body(media.JSON, "OpenAPI 3 document.", "object")}
        ),
    }


def _metrics(protected: dict[str, Any], protected_errors: tuple[str, ...]) -> dict[str, Any]:
    text = _body(media.PROMETHEUS, "Prometheus text exposition format 0.0.4.")
    return _operation(
        "metrics",
        "Prometheus metrics, summed over the server's processes.",
        {"200": text, **_errors(*protected_errors)},
        **protected,
    )


def _paths(security: list[dict[str, list]] | None) -> dict[str, Any]:
    protected = {"security": security} if security else {}
    protected_errors = ("401",) if security else ()
    reads = _open_operations()
    return {
        "/ping": {"get": reads["/ping"]},
        "/invocations": {"post": _invocations(protected, protected_errors)},
        "/execution-parameters": {"get": reads["/execution-parameters"]},
        "/health": {"get": reads["/health"]},
        "/metrics": {"get": _metrics(protected, protected_errors)},
        "/version": {"get": reads["/version"]},
        "/openapi.json": {"get": reads["/openapi.json"]},
    }


def document(max_request_mb: float = 6.0, api_key_required: bool = False) -> dict[str, Any]:
    """The OpenAPI document for a server with these settings."""
    security = [{"ApiKeyHeader": []}, {"BearerKey": []}] if api_key_required else None
    responses = {
        f"E{status}": {
            "description": f"{text} Codes: {', '.join(codes)}.",
            "content": {media.JSON: {"schema": {"$ref": _REF + "Error"}}},
        }
        for status, (text, codes) in ERROR_STATUSES.items()
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Model endpoint",
            "version": "1",
            "description": "A scikit-learn model as an HTTP endpoint (also a SageMaker "
            f"inference container). Request bodies up to {max_request_mb:g} MB.",
        },
        "paths": _paths(security),
        "components": {
            "schemas": SCHEMAS,
            "responses": responses,
            "securitySchemes": {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "BearerKey": {"type": "http", "scheme": "bearer"},
            },
        },
    }
