"""Write child output to CloudWatch Logs in moto, as Lambda and the awslogs driver do on AWS."""

from __future__ import annotations

import threading
import time

from moto.logs.models import logs_backends

_LOCK = threading.Lock()


class LogStreamWriter:
    """One log stream; creates its group when missing (AWS would, for Lambda)."""

    def __init__(self, account_id: str, region: str, group: str, stream: str) -> None:
        self.group = group
        self.stream = stream
        self._backend = logs_backends[account_id][region]
        with _LOCK:
            self._backend.ensure_log_group(group)
            if stream not in self._backend.groups[group].streams:
                self._backend.create_log_stream(group, stream)

    def write(self, message: str) -> None:
        """Append one event; a vanished group (stack deleted, reset) drops the line."""
        event = {"timestamp": int(time.time() * 1000), "message": message}
        with _LOCK:
            try:
                self._backend.put_log_events(self.group, self.stream, [event])
            except Exception:  # logging must never break the caller
                return
