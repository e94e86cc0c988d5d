"""The endpoint's WSGI app: translate HTTP into calls of the shared predict path.

The hot path stays plain WSGI (a dict of routes, the environ, bytes out) so that
a single-row request costs little more than the prediction itself. Every error
becomes a response in one place, `error_response`; a client never sees a stack
trace.

A prediction request is four steps in `App.invocations`: `read_body` (the bytes,
refused over MAX_REQUEST_MB), `codecs.read` (bytes -> rows, positional input named
by the bundle's `Layout`), `predict` (the path the batch worker shares) and
`codecs.encode` (rows -> the negotiated type; headerless CSV stays headerless).
`predict` goes through the process's `Batcher` (service/batching.py), which lets
concurrent small requests share one call when BATCH_MAX_ROWS is set; `predict_ready`
does the first three steps for several requests at once, sharing the calls, and leaves
each its answer for `invocations` to encode.

API_KEY guards the model and its telemetry (/invocations, /metrics). The health
checks (/ping, /health) and the public descriptions (/execution-parameters,
/openapi.json, /version) stay open: load balancers and SageMaker call them without a key.
"""

import hmac
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, NamedTuple, Protocol

import orjson
import pandas as pd

from service import __version__, codecs, metrics, openapi
from service.artifacts import Bundle
from service.batching import Batcher
from service.codecs import Layout
from service.errors import (
    MalformedBody,
    MethodNotAllowed,
    ModelError,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
)
from service.media import JSON, TEXT

log = logging.getLogger(__name__)
access_log = logging.getLogger("service.access")

MODEL_NAME_HEADER = "X-Model-Name"
MODEL_VERSION_HEADER = "X-Model-Version"
API_KEY_HEADER = "X-Api-Key"
PROTECTED_ROUTES = frozenset({"/invocations", "/metrics"})
_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}
_CHUNK = 1 << 16
MAX_PAYLOAD_MB = 100  # the most SageMaker batch transform accepts for MaxPayloadInMB

StartResponse = Callable[..., Any]
Handler = Callable[[dict[str, Any]], "Response"]
PREDICTED = "model_endpoint.predicted"  # the environ key of App.predict_ready's Predicted


class Store(Protocol):
    """What the app needs from a ModelStore: the bundle in use and why a load failed."""

    current: Bundle | None
    last_error: str | None
    reloads: int
    reload_failures: int


class Call(NamedTuple):
    """A prediction request, decoded: what to predict with, the rows, the answer's type."""

    bundle: Bundle
    rows: codecs.Decoded
    answer_type: str


class Predicted(NamedTuple):
    """A request predicted with others: when it began, and its answer or what refused it.
    `call` is None when it was refused before its rows were read."""

    started: float
    call: Call | None
    answer: pd.DataFrame | Exception


class Response(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    rows: int = 0
    error: str | None = None


@dataclass(frozen=True)
class AppConfig:
    """The settings the app reads, decoupled from how they were loaded."""

    max_request_bytes: int
    api_key: str | None = None
    max_concurrent: int = 1
    max_payload_mb: int = 6  # SageMaker's MaxPayloadInMB: never above the limit, nor 100
    access_log: bool = False
    batch_max_rows: int = 0
    batch_wait_seconds: float = 0.002
    default_accept: str = JSON


def config_from_settings(settings: Any) -> AppConfig:
    """AppConfig from ServeSettings (MAX_REQUEST_MB, API_KEY, WORKERS, THREADS)."""
    megabytes = float(settings.max_request_mb)
    return AppConfig(
        max_request_bytes=int(megabytes * 1024 * 1024),
        api_key=settings.api_key or None,
        max_concurrent=int(settings.workers) * int(settings.threads),
        max_payload_mb=min(MAX_PAYLOAD_MB, int(megabytes)),
        access_log=bool(getattr(settings, "access_log", False)),
        batch_max_rows=int(getattr(settings, "batch_max_rows", 0)),
        batch_wait_seconds=float(getattr(settings, "batch_wait_ms", 2.0)) / 1000,
        default_accept=str(getattr(settings, "default_accept", JSON)),
    )


def json_response(status: int, document: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
    body = orjson.dumps(document)
    return Response(
        status, [("Content-Type", JSON), ("Content-Length", str(len(body))), *headers], body
    )


def error_response(exc: ServiceError, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """The one mapping from an error to HTTP: its status, and {"error", "message"} with
    MLflow's "error_code" beside them."""
    document = {"error": exc.code, "message": exc.message, "error_code": exc.mlflow_code}
    response = json_response(exc.status, document, headers)
    return response._replace(error=exc.code)


class App:
    """The WSGI application. Build it with `create_app`."""

    def __init__(self, store: Store, config: AppConfig, recorder: Any = None) -> None:
        self.store = store
        self.config = config
        self.metrics = recorder if recorder is not None else metrics.Metrics().slot(0)
        self._api_key = config.api_key.encode() if config.api_key else None
        self.batcher = Batcher(
            config.batch_max_rows,
            config.batch_wait_seconds,
            getattr(self.metrics, "observe_batch", None),
        )
        self._health = json_response(200, {"status": "ok"})
        self._parameters = json_response(
            200,
            {
                "MaxConcurrentTransforms": config.max_concurrent,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": config.max_payload_mb,
            },
        )
        document = openapi.document(
            max_request_mb=config.max_request_bytes / (1024 * 1024),
            api_key_required=self._api_key is not None,
        )
        self._openapi = json_response(200, document)
        version = __version__.encode()
        self._version = Response(
            200, [("Content-Type", TEXT), ("Content-Length", str(len(version)))], version
        )
        self.routes: dict[str, dict[str, Handler]] = {
            "/ping": {"GET": self.ping},
            "/invocations": {"POST": self.invocations},
            "/execution-parameters": {"GET": lambda environ: self._parameters},
            "/health": {"GET": lambda environ: self._health},
            "/metrics": {"GET": self.render_metrics},
            "/openapi.json": {"GET": lambda environ: self._openapi},
            "/version": {"GET": lambda environ: self._version},
        }
        for methods in self.routes.values():
            if "GET" in methods:
                methods["HEAD"] = methods["GET"]
        self._model_headers: tuple[Bundle | None, list[tuple[str, str]]] = (None, [])
        self._layout: tuple[Bundle | None, Layout | None] = (None, None)
        self._route_index = {path: i for i, path in enumerate(metrics.ROUTES)}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        started = environ[PREDICTED].started if PREDICTED in environ else time.perf_counter()
        path = environ.get("PATH_INFO") or "/"
        route = self._route_index.get(path, metrics.OTHER_ROUTE)
        try:
            response = self.dispatch(path, environ)
        except ServiceError as exc:
            response = error_response(exc)
        except Exception:
            log.exception("unexpected error answering %s %s", environ.get("REQUEST_METHOD"), path)
            response = error_response(
                ServiceError("the server failed unexpectedly; the error is in its log")
            )
        start_response(_STATUS_LINES[response.status], response.headers)
        seconds = time.perf_counter() - started
        self.metrics.observe(route, response.status, seconds, response.rows, response.error)
        if self.config.access_log:
            access_log.info(
                "%s %s %d %.2fms rows=%d",
                environ.get("REQUEST_METHOD"),
                path,
                response.status,
                seconds * 1000,
                response.rows,
            )
        return [response.body]

    def dispatch(self, path: str, environ: dict[str, Any]) -> Response:
        """Route the request; errors for unknown routes, methods and missing keys."""
        found = self.handler(path, environ)
        return found if isinstance(found, Response) else found(environ)

    def handler(self, path: str, environ: dict[str, Any]) -> Handler | Response:
        """The route's handler for this request, or the response refusing it."""
        methods = self.routes.get(path)
        if methods is None:
            raise NotFound(f"no route {path}: see /openapi.json for the routes this server has")
        handler = methods.get(environ["REQUEST_METHOD"])
        if handler is None:
            allowed = ", ".join(sorted(methods))
            exc = MethodNotAllowed(f"{path} accepts {allowed}")
            return error_response(exc, [("Allow", allowed)])
        if self._api_key is not None and path in PROTECTED_ROUTES and not self._authorized(environ):
            exc = Unauthorized(
                f"{path} needs the API key: send it as '{API_KEY_HEADER}: <key>' "
                "or 'Authorization: Bearer <key>'"
            )
            return error_response(exc, [("WWW-Authenticate", "Bearer")])
        return handler

    def _authorized(self, environ: dict[str, Any]) -> bool:
        given = environ.get("HTTP_X_API_KEY")
        if given is None:
            scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
            if scheme.lower() != "bearer":
                return False
            given = token.strip()
        return hmac.compare_digest(given.encode("latin-1", "replace"), self._api_key or b"")

    def ping(self, environ: dict[str, Any]) -> Response:
        bundle = self.store.current
        if bundle is None:
            raise self._no_model()
        return json_response(
            200,
            {"status": "ok", "model": {"name": bundle.name, "version": bundle.version}},
            self.model_headers(bundle),
        )

    def invocations(self, environ: dict[str, Any]) -> Response:
        """Predict the rows in the body with the bundle in use when the request began."""
        done: Predicted | None = environ.pop(PREDICTED, None)
        if done is None:
            call = self.decode(environ)
            result = self.batcher.predict(call.bundle, call.rows.frame)
        else:
            call, result = done.call, done.answer
        if isinstance(result, Exception):
            raise result
        assert call is not None
        if not call.rows.ids:
            result = result.drop(columns=[call.bundle.id_column])
        payload = codecs.encode(result, call.answer_type, header=call.rows.header)
        headers = [
            ("Content-Type", call.answer_type),
            ("Content-Length", str(len(payload))),
            *self.model_headers(call.bundle),
        ]
        return Response(200, headers, payload, rows=len(result))

    def decode(self, environ: dict[str, Any]) -> Call:
        bundle = self.store.current
        if bundle is None:
            raise self._no_model()
        answer_type = codecs.negotiate(environ.get("HTTP_ACCEPT"), self.config.default_accept)
        _refuse_content_encoding(environ.get("HTTP_CONTENT_ENCODING"))
        body = self.read_body(environ)
        rows = codecs.read(body, environ.get("CONTENT_TYPE"), self.layout(bundle))
        return Call(bundle, rows, answer_type)

    def predict_ready(self, environs: list[dict[str, Any]]) -> None:
        """Decode the prediction requests among `environs`, which are all here now, and
        predict their rows in shared calls. Each leaves its answer, or what refused it,
        under PREDICTED in its environ; `__call__` then answers it as any request."""
        ready: list[tuple[dict[str, Any], float, Call]] = []
        for environ in environs:
            if not self._predicts(environ):
                continue
            started = time.perf_counter()
            try:
                ready.append((environ, started, self.decode(environ)))
            except Exception as exc:
                environ[PREDICTED] = Predicted(started, None, exc)
        try:
            answers = self.batcher.predict_ready([(c.bundle, c.rows.frame) for *_, c in ready])
        except Exception as exc:  # their bodies are read: each must leave with an answer
            log.exception("predicting %d requests together failed", len(ready))
            answers = [exc] * len(ready)
        for (environ, started, call), answer in zip(ready, answers, strict=True):
            environ[PREDICTED] = Predicted(started, call, answer)

    def _predicts(self, environ: dict[str, Any]) -> bool:
        """Whether `dispatch` would hand this request to `invocations`."""
        path = environ.get("PATH_INFO") or "/"
        return path in self.routes and self.handler(path, environ) == self.invocations

    def read_body(self, environ: dict[str, Any]) -> bytes:
        """The request body, refused with 413 before reading more than the limit (+1 byte)."""
        limit = self.config.max_request_bytes
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH")
        if length:
            try:
                size = int(length)
            except ValueError:
                raise MalformedBody(f"Content-Length {length!r} is not a number") from None
            if size > limit:
                raise self._too_large(size)
            body = stream.read(size)
            if len(body) < size:
                raise MalformedBody(f"the body ended after {len(body)} of {size} bytes")
            return body
        if not environ.get("wsgi.input_terminated") and "chunked" not in environ.get(
            "HTTP_TRANSFER_ENCODING", ""
        ):
            return b""
        parts, size = [], 0
        while size <= limit:
            part = stream.read(min(_CHUNK, limit + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
        if size > limit:
            raise self._too_large(None)
        return b"".join(parts)

    def _too_large(self, size: int | None) -> PayloadTooLarge:
        limit_mb = self.config.max_request_bytes / (1024 * 1024)
        told = f" ({size} bytes)" if size is not None else ""
        return PayloadTooLarge(
            f"the body{told} is over the {limit_mb:g} MB limit (MAX_REQUEST_MB): "
            "split the rows into smaller requests, or use the batch transform for files"
        )

    def model_headers(self, bundle: Bundle) -> list[tuple[str, str]]:
        """X-Model-Name/-Version, built once per bundle rather than per request."""
        cached_for, headers = self._model_headers
        if cached_for is not bundle:
            headers = [
                (MODEL_NAME_HEADER, _header_text(bundle.name)),
                (MODEL_VERSION_HEADER, _header_text(bundle.version)),
            ]
            self._model_headers = (bundle, headers)
        return headers

    def layout(self, bundle: Bundle) -> Layout:
        """The names positional input takes, built once per bundle."""
        cached_for, layout = self._layout
        if cached_for is not bundle or layout is None:
            layout = Layout(tuple(bundle.input_columns), bundle.id_column)
            self._layout = (bundle, layout)
        return layout

    def _no_model(self) -> ModelError:
        reason = self.store.last_error or "the model is still loading"
        return ModelError(f"no model is loaded: {reason}")

    def render_metrics(self, environ: dict[str, Any]) -> Response:
        self.metrics.sync_store(self.store)
        body = self.metrics.render()
        headers = [("Content-Type", metrics.CONTENT_TYPE), ("Content-Length", str(len(body)))]
        return Response(200, headers, body)


def _refuse_content_encoding(encoding: str | None) -> None:
    """A compressed body would reach the decoders as garbage: say so instead (RFC 7694)."""
    if encoding and encoding.strip().lower() not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported: send the body uncompressed"
        )


def _header_text(value: str) -> str:
    return (
        value.encode("latin-1", "replace").decode("latin-1").replace("\r", " ").replace("\n", " ")
    )


def create_app(store: Store, settings: Any, recorder: Any = None) -> App:
    """The app for ServeSettings (or an AppConfig); `recorder` is this process's metrics slot."""
    config = settings if isinstance(settings, AppConfig) else config_from_settings(settings)
    return App(store, config, recorder)
