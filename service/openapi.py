"""The endpoint's OpenAPI 3 description, served at /openapi.json.

Built from the same constants the app uses (media types, header names, error
codes), so the description cannot drift from what the server accepts.
"""

from typing import Any

from service import codecs

OPENAPI_VERSION = "3.0.3"
_REF = "#/components/schemas/"

ERROR_STATUSES = {
    "400": ("Malformed or empty body.", ["malformed_body", "bad_request"]),
    "401": ("API_KEY is set and the request does not carry it.", ["unauthorized"]),
    "404": ("No such route.", ["not_found"]),
    "405": ("The route does not accept this method.", ["method_not_allowed"]),
    "406": ("The server cannot answer in any type the Accept header allows.", ["not_acceptable"]),
    "413": ("The body is larger than MAX_REQUEST_MB.", ["payload_too_large"]),
    "415": (
        "The Content-Type is not one the server reads, or the body has a Content-Encoding "
        "(send it uncompressed).",
        ["unsupported_media_type"],
    ),
    "422": (
        "Readable input the model cannot use: missing columns (listed), non-numeric or "
        "infinite values, no rows.",
        ["invalid_data"],
    ),
    "500": ("Unexpected server failure; details are only in the server log.", ["internal_error"]),
    "503": ("No model is loaded (the message says why).", ["model_unavailable"]),
}


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
            )
        },
        ["dataframe_split"],
    ),
    "DataframeRecords": _object({"dataframe_records": RECORDS}, ["dataframe_records"]),
    "Instances": _object({"instances": {"oneOf": [RECORDS, COLUMNS]}}, ["instances"]),
    "Inputs": _object({"inputs": {"oneOf": [RECORDS, COLUMNS]}}, ["inputs"]),
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
            "error": {"type": "string", "description": "Short code, e.g. invalid_data."},
            "message": {"type": "string", "description": "What to fix."},
        },
        ["error", "message"],
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


def _binary(description: str) -> dict[str, Any]:
    return {"schema": {"type": "string", "format": "binary", "description": description}}


def _request_content() -> dict[str, Any]:
    json_shapes = [
        {"$ref": _REF + name}
        for name in ("DataframeSplit", "DataframeRecords", "Instances", "Inputs", "Records")
    ]
    return {
        codecs.JSON: {"schema": {"oneOf": json_shapes}},
        codecs.PARQUET: _binary("A parquet file."),
        codecs.X_PARQUET: _binary("A parquet file."),
        codecs.CSV: {"schema": {"type": "string", "description": "CSV with a header row."}},
        codecs.JSONLINES: {"schema": {"type": "string", "description": "One JSON object a line."}},
        codecs.NDJSON: {"schema": {"type": "string", "description": "One JSON object a line."}},
    }


def _prediction_content() -> dict[str, Any]:
    return {
        codecs.JSON: {"schema": {"$ref": _REF + "Predictions"}},
        codecs.PARQUET: _binary("Parquet with columns id, activation."),
        codecs.X_PARQUET: _binary("Parquet with columns id, activation."),
        codecs.CSV: {"schema": {"type": "string", "description": "CSV: id,activation."}},
        codecs.JSONLINES: {"schema": {"type": "string", "description": "One prediction a line."}},
        codecs.NDJSON: {"schema": {"type": "string", "description": "One prediction a line."}},
    }


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: {"$ref": f"#/components/responses/E{status}"} for status in statuses}


def _json(schema: str, description: str, headers: dict[str, Any] | None = None) -> dict:
    response: dict[str, Any] = {
        "description": description,
        "content": {codecs.JSON: {"schema": {"$ref": _REF + schema}}},
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


def _paths(security: list[dict[str, list]] | None) -> dict[str, Any]:
    protected = {"security": security} if security else {}
    protected_errors = ("401",) if security else ()
    return {
        "/ping": {
            "get": {
                "summary": "Readiness: 200 when a model is loaded and usable (SageMaker health check).",
                "operationId": "ping",
                "responses": {
                    "200": _json("Status", "A model is loaded.", MODEL_HEADERS),
                    **_errors("503"),
                },
            }
        },
        "/invocations": {
            "post": {
                "summary": "Predict: one output row (id, activation) per input row.",
                "operationId": "invocations",
                **protected,
                "parameters": [
                    {
                        "name": "Accept",
                        "in": "header",
                        "required": False,
                        "description": "Answer type; JSON when absent or */*.",
                        "schema": {"type": "string", "enum": list(codecs.MEDIA_TYPES)},
                    }
                ],
                "requestBody": {"required": True, "content": _request_content()},
                "responses": {
                    "200": {
                        "description": "Predictions in the negotiated type.",
                        "headers": MODEL_HEADERS,
                        "content": _prediction_content(),
                    },
                    **_errors("400", *protected_errors, "406", "413", "415", "422", "500", "503"),
                },
            }
        },
        "/execution-parameters": {
            "get": {
                "summary": "SageMaker batch transform parameters.",
                "operationId": "executionParameters",
                "responses": {"200": _json("ExecutionParameters", "Parameters.")},
            }
        },
        "/health": {
            "get": {
                "summary": "Liveness: 200 while the process serves, model or not.",
                "operationId": "health",
                "responses": {"200": _json("Status", "The process serves.")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics, summed over the server's processes.",
                "operationId": "metrics",
                **protected,
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(*protected_errors),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document.",
                "operationId": "openapi",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3 document.",
                        "content": {codecs.JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


def document(max_request_mb: float = 6.0, api_key_required: bool = False) -> dict[str, Any]:
    """The OpenAPI document for a server with these settings."""
    security = [{"ApiKeyHeader": []}, {"BearerKey": []}] if api_key_required else None
    responses = {
        f"E{status}": {
            "description": f"{text} Codes: {', '.join(codes)}.",
            "content": {codecs.JSON: {"schema": {"$ref": _REF + "Error"}}},
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
