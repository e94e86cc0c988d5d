"""The batch worker's logging: JSON lines on stderr in the shared format (service.jsonlog)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from service import jsonlog

log = logging.getLogger("service.worker")
NOISY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def configure_logging(level: str) -> None:
    """JSON lines on stderr (CloudWatch keeps one event per line, and jq reads them)."""
    root = logging.getLogger()
    root.setLevel(level)
    if not any(isinstance(h.formatter, jsonlog.JsonFormatter) for h in root.handlers):
        root.handlers = [jsonlog.json_handler(sys.stderr)]
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def log_event(level: int, event: str, **fields: Any) -> None:
    """One worker event: its name, and the fields a reader filters on."""
    jsonlog.log_event(log, level, event, **fields)
