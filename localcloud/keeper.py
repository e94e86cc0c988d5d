"""Saves the kept state every few seconds and at stop, so a crash loses little."""

from __future__ import annotations

import threading

from localcloud.console import Console
from localcloud.state import StateStore


class StateKeeper:
    """Start/stop component around ``StateStore.save_s3``."""

    def __init__(self, store: StateStore, interval: float, console: Console) -> None:
        self.store = store
        self._interval = interval
        self._console = console
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="state", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer (the final save is the cloud's, after every task has stopped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def save(self, announce: bool = False) -> None:
        with self._lock:
            try:
                summary = self.store.save_s3()
            except Exception as exc:  # saving must never take the cloud down
                self._console.line("localcloud", f"saving the state failed: {exc}")
                return
        if announce:
            self._console.line(
                "localcloud",
                f"kept {summary.objects} object(s) in {summary.buckets} bucket(s), "
                f"{summary.bytes} bytes, in {self.store.folder}",
            )

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.save()
