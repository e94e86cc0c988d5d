"""Prometheus metrics summed over every server process, without a dependency.

The server forks several processes behind one port, so a scrape lands on one of
them at random. Each process therefore counts into its own slot of one shared
memory block (allocated before the fork), and any process can render the sum of
all slots. Slots are per process, so counting takes only a thread lock, and a
restarted process keeps adding to its predecessor's slot: counters never go back.
The label sets are fixed (routes, status codes, error codes), which keeps the
layout a flat array of float64 cells.
"""

import bisect
import mmap
import os
import struct
import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson

from service.errors import ENDPOINT_CODES, ServiceError
from service.media import PROMETHEUS

ROUTES = (
    "/ping",
    "/invocations",
    "/execution-parameters",
    "/health",
    "/metrics",
    "/openapi.json",
    "/version",
    "other",
)
OTHER_ROUTE = len(ROUTES) - 1
STATUSES = (200, 400, 401, 404, 405, 406, 413, 415, 422, 431, 500, 501, 503)
# Every code an answer can carry; an unknown one would count as internal_error.
ERROR_CODES = ENDPOINT_CODES
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = PROMETHEUS
PREFIX = "endpoint_"

_STATUS_INDEX = {status: i for i, status in enumerate(STATUSES)}
_ERROR_INDEX = {code: i for i, code in enumerate(ERROR_CODES)}
_INTERNAL_ERROR = _ERROR_INDEX[ServiceError.code]
_N_STATUS = len(STATUSES) + 1
_N_BUCKETS = len(BUCKETS) + 1
_REQUESTS = 0
_HISTOGRAM = _REQUESTS + len(ROUTES) * _N_STATUS
_SUMS = _HISTOGRAM + len(ROUTES) * _N_BUCKETS
_ROWS = _SUMS + len(ROUTES)
_ERRORS = _ROWS + 1
_RELOADS = _ERRORS + len(ERROR_CODES)
_RELOAD_FAILURES = _RELOADS + 1
_CELLS = _RELOAD_FAILURES + 1
_TEXT_BYTES = 4096
_TEXT_HEADER = struct.Struct("=QI")
_SLOT_BYTES = _CELLS * 8 + _TEXT_BYTES


class Metrics:
    """The shared block: one slot per server process. Create it before forking."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots
        self._block = mmap.mmap(-1, slots * _SLOT_BYTES)

    def slot(self, index: int) -> "SlotMetrics":
        """The recorder a process with this slot index writes into."""
        return SlotMetrics(self, index)

    def clear(self, index: int) -> None:
        """Forget what a slot says about its model (its process is gone); keep its counters."""
        SlotMetrics(self, index).publish_state(None)

    def cells(self, index: int) -> memoryview:
        start = index * _SLOT_BYTES
        return memoryview(self._block)[start : start + _CELLS * 8].cast("d")

    def text_view(self, index: int) -> memoryview:
        start = index * _SLOT_BYTES + _CELLS * 8
        return memoryview(self._block)[start : start + _TEXT_BYTES]

    def render(self) -> bytes:
        """Prometheus text exposition of the sum over all slots."""
        totals = [0.0] * _CELLS
        states = []
        for index in range(self.slots):
            for i, value in enumerate(self.cells(index)):
                totals[i] += value
            state = _read_text(self.text_view(index))
            if state:
                states.append(state)
        return "".join(_render(totals, states)).encode()


class SlotMetrics:
    """What one process records: requests, latency, rows, errors and its model's state."""

    def __init__(self, metrics: Metrics, index: int) -> None:
        self.metrics = metrics
        self._cells = metrics.cells(index)
        self._text = metrics.text_view(index)
        self._lock = threading.Lock()
        self._published: tuple[Any, ...] | None = None

    def observe(
        self, route: int, status: int, seconds: float, rows: int = 0, error: str | None = None
    ) -> None:
        """Count one answered request."""
        cells = self._cells
        with self._lock:
            cells[_REQUESTS + route * _N_STATUS + _STATUS_INDEX.get(status, _N_STATUS - 1)] += 1
            cells[_HISTOGRAM + route * _N_BUCKETS + bisect.bisect_left(BUCKETS, seconds)] += 1
            cells[_SUMS + route] += seconds
            if rows:
                cells[_ROWS] += rows
            if error is not None:
                cells[_ERRORS + _ERROR_INDEX.get(error, _INTERNAL_ERROR)] += 1

    def sync_store(self, store: Any) -> None:
        """Publish the model store's state if it changed since the last call (cheap to repeat)."""
        bundle = store.current
        key = (bundle, store.last_error, store.reloads, store.reload_failures)
        if key == self._published:
            return
        state = {
            "pid": os.getpid(),
            "name": bundle.name if bundle else None,
            "version": bundle.version if bundle else None,
            "error": store.last_error,
        }
        with self._lock:
            self._published = key
            self._cells[_RELOADS] = store.reloads
            self._cells[_RELOAD_FAILURES] = store.reload_failures
            _write_text(self._text, state)

    def publish_state(self, state: dict[str, Any] | None) -> None:
        with self._lock:
            _write_text(self._text, state)

    def render(self) -> bytes:
        return self.metrics.render()


def _write_text(view: memoryview, state: dict[str, Any] | None) -> None:
    """Seqlock write: the sequence is odd while the text changes, so readers retry."""
    data = orjson.dumps(state) if state else b""
    if len(data) > _TEXT_BYTES - _TEXT_HEADER.size:
        state = dict(state or {}, error=str((state or {}).get("error"))[:1000] + "...")
        data = orjson.dumps(state)
    sequence = _TEXT_HEADER.unpack_from(view)[0]
    _TEXT_HEADER.pack_into(view, 0, sequence + 1, 0)
    view[_TEXT_HEADER.size : _TEXT_HEADER.size + len(data)] = data
    _TEXT_HEADER.pack_into(view, 0, sequence + 2, len(data))


def _read_text(view: memoryview) -> dict[str, Any] | None:
    for _ in range(1000):
        sequence, length = _TEXT_HEADER.unpack_from(view)
        if sequence % 2:
            continue
        data = bytes(view[_TEXT_HEADER.size : _TEXT_HEADER.size + length])
        if _TEXT_HEADER.unpack_from(view)[0] == sequence:
            return orjson.loads(data) if data else None
    return None


def _render(totals: list[float], states: list[dict[str, Any]]) -> Iterable[str]:
    yield from _family("requests_total", "counter", "HTTP requests answered, by route and status.")
    for r, route in enumerate(ROUTES):
        for s, status in enumerate((*STATUSES, "other")):
            value = totals[_REQUESTS + r * _N_STATUS + s]
            if value:
                yield _sample("requests_total", {"route": route, "code": status}, value)
    yield from _family(
        "request_duration_seconds", "histogram", "Time to produce a response, by route."
    )
    for r, route in enumerate(ROUTES):
        counts = totals[_HISTOGRAM + r * _N_BUCKETS : _HISTOGRAM + (r + 1) * _N_BUCKETS]
        if not any(counts):
            continue
        cumulative = 0.0
        for bound, count in zip((*BUCKETS, "+Inf"), counts, strict=True):
            cumulative += count
            labels = {"route": route, "le": bound}
            yield _sample("request_duration_seconds_bucket", labels, cumulative)
        yield _sample("request_duration_seconds_sum", {"route": route}, totals[_SUMS + r])
        yield _sample("request_duration_seconds_count", {"route": route}, cumulative)
    yield from _family("predicted_rows_total", "counter", "Rows predicted by /invocations.")
    yield _sample("predicted_rows_total", {}, totals[_ROWS])
    yield from _family("errors_total", "counter", "Error responses, by error code.")
    for e, code in enumerate(ERROR_CODES):
        if totals[_ERRORS + e]:
            yield _sample("errors_total", {"error": code}, totals[_ERRORS + e])
    yield from _model_families(totals, states)


def _model_families(totals: list[float], states: list[dict[str, Any]]) -> Iterable[str]:
    yield from _family("workers", "gauge", "Server processes currently reporting.")
    yield _sample("workers", {}, len(states))
    yield from _family(
        "model_info", "gauge", "Model in use: the value is how many processes serve it."
    )
    serving = Counter((s["name"], s["version"]) for s in states if s.get("version") is not None)
    for (name, version), count in sorted(serving.items()):
        yield _sample("model_info", {"name": name, "version": version}, count)
    yield from _family("model_reloads_total", "counter", "New model bundles swapped in.")
    yield _sample("model_reloads_total", {}, totals[_RELOADS])
    yield from _family(
        "model_reload_failures_total", "counter", "Model bundles that failed to load."
    )
    yield _sample("model_reload_failures_total", {}, totals[_RELOAD_FAILURES])
    yield from _family(
        "model_reload_error",
        "gauge",
        "Why the latest load failed: the value is how many processes report it (0 when none).",
    )
    failing = Counter(s["error"] for s in states if s.get("error"))
    if not failing:
        yield _sample("model_reload_error", {"error": ""}, 0)
    for error, count in sorted(failing.items()):
        yield _sample("model_reload_error", {"error": error}, count)


def _family(name: str, kind: str, help_text: str) -> Iterable[str]:
    yield f"# HELP {PREFIX}{name} {help_text}\n"
    yield f"# TYPE {PREFIX}{name} {kind}\n"


def _sample(name: str, labels: dict[str, object], value: float) -> str:
    value = float(value)
    number = str(int(value)) if value.is_integer() else repr(value)
    if not labels:
        return f"{PREFIX}{name} {number}\n"
    text = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels.items())
    return f"{PREFIX}{name}{{{text}}} {number}\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
