"""The one log format of the batch trigger and the batch worker: a JSON object per line.

CloudWatch keeps one event per line and Logs Insights filters on every field, so each line is
``{"time", "level", "logger", "message", "event", <fields>}`` (plus ``request_id`` inside a
Lambda invocation and ``traceback`` for an exception). Standard library only: the Lambda
package carries this module.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import IO, Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the structured fields passed by ``log_event``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current:
            entry["request_id"] = current
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def json_handler(stream: IO[str]) -> logging.Handler:
    """A handler writing JSON lines to ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    return handler


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log the event name as the message, with ``event`` and the fields as JSON keys."""
    logger.log(level, event, extra={"fields": {"event": event, **fields}})
