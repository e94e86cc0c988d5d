"""One error hierarchy for everything the service reports to a person.

Each error carries the HTTP status and the short code it maps to, so the web app
maps errors in one place and the batch worker turns the same errors into
`failed` reports. Messages say what to fix, never how the code failed.
"""


class ServiceError(Exception):
    """Base of every error the service explains to its caller."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(ServiceError):
    """The caller's data or request is wrong; retrying it unchanged cannot help."""

    status = 400
    code = "bad_request"


class MalformedBody(InputError):
    status = 400
    code = "malformed_body"


class Unauthorized(InputError):
    status = 401
    code = "unauthorized"


class NotFound(InputError):
    status = 404
    code = "not_found"


class MethodNotAllowed(InputError):
    status = 405
    code = "method_not_allowed"


class NotAcceptable(InputError):
    status = 406
    code = "not_acceptable"


class PayloadTooLarge(InputError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(InputError):
    status = 415
    code = "unsupported_media_type"


class InvalidData(InputError):
    """Well-formed input whose content the model cannot use (columns, types, no rows)."""

    status = 422
    code = "invalid_data"


class ModelError(ServiceError):
    """The model bundle cannot be loaded: the operator, not the caller, must act."""

    status = 503
    code = "model_unavailable"


class ManifestError(ModelError):
    code = "bad_manifest"


class HashMismatch(ModelError):
    code = "hash_mismatch"


class SettingsError(ServiceError):
    """A setting read from the environment is missing or invalid."""

    code = "bad_setting"
