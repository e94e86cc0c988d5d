"""One error hierarchy for everything the service reports to a person, and the registry
of its codes.

Each error carries the HTTP status and the short code it maps to, and MLflow's
`error_code` (the name MLflow's scoring server would use, from its databricks
protos), so the web app maps errors in one place and the batch worker turns the
same errors into `failed` reports with the same code. Messages say what to fix,
never how the code failed. `ENDPOINT_ERRORS` lists every error an HTTP answer can
carry: /metrics counts them and /openapi.json documents them from this list.
"""


class ServiceError(Exception):
    """Base of every error the service explains to its caller."""

    status = 500
    code = "internal_error"
    mlflow_code = "INTERNAL_ERROR"
    summary = "Unexpected server failure; details are only in the server log."

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(ServiceError):
    """The caller's data or request is wrong; retrying it unchanged cannot help."""

    status = 400
    code = "bad_request"
    mlflow_code = "BAD_REQUEST"
    summary = "A request the HTTP server could not parse."


class MalformedBody(InputError):
    """The bytes are not what their type promises (or no bytes at all)."""

    status = 400
    code = "malformed_body"
    summary = "Malformed or empty body, or a JSON shape the server does not read."


class Unauthorized(InputError):
    status = 401
    code = "unauthorized"
    mlflow_code = "UNAUTHENTICATED"
    summary = "API_KEY is set and the request does not carry it."


class NotFound(InputError):
    status = 404
    code = "not_found"
    mlflow_code = "ENDPOINT_NOT_FOUND"
    summary = "No such route."


class MethodNotAllowed(InputError):
    status = 405
    code = "method_not_allowed"
    summary = "The route does not accept this method."


class NotAcceptable(InputError):
    status = 406
    code = "not_acceptable"
    summary = "The server cannot answer in any type the Accept header allows."


class PayloadTooLarge(InputError):
    status = 413
    code = "payload_too_large"
    summary = "The body is larger than MAX_REQUEST_MB."


class UnsupportedMediaType(InputError):
    status = 415
    code = "unsupported_media_type"
    summary = (
        "The Content-Type is not one the server reads, or the body has a Content-Encoding "
        "(send it uncompressed)."
    )


class InvalidData(InputError):
    """Well-formed input whose content the model cannot use (columns, types, no rows)."""

    status = 422
    code = "invalid_data"
    mlflow_code = "INVALID_PARAMETER_VALUE"
    summary = (
        "Readable input the model cannot use: missing columns (listed), values of the "
        "wrong type, infinite values, rows of the wrong width, no rows."
    )


class ModelError(ServiceError):
    """The model bundle cannot be loaded: the operator, not the caller, must act."""

    status = 503
    code = "model_unavailable"
    mlflow_code = "TEMPORARILY_UNAVAILABLE"
    summary = "No model is loaded (the message says why)."


class ManifestError(ModelError):
    code = "bad_manifest"


class HashMismatch(ModelError):
    code = "hash_mismatch"


class SettingsError(ServiceError):
    """A setting read from the environment is missing or invalid."""

    code = "bad_setting"


ENDPOINT_ERRORS: tuple[type[ServiceError], ...] = (
    InputError,
    MalformedBody,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidData,
    ServiceError,
    ModelError,
)
ENDPOINT_CODES: tuple[str, ...] = tuple(error.code for error in ENDPOINT_ERRORS)
STATUS_OF: dict[str, int] = {error.code: error.status for error in ENDPOINT_ERRORS}
