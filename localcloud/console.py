"""One console for every component and child process, prefixed by name like docker compose."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import IO

_COLORS = (36, 33, 32, 35, 34, 91, 92, 93, 94, 95, 96)


class Console:
    """Writes ``name | text`` lines; safe to call from any thread."""

    def __init__(self, stream: IO[str] | None = None, color: bool | None = None) -> None:
        self._stream = stream
        self._color = color
        self._lock = threading.RLock()  # signal handlers print too
        self._width = 8
        self._palette: dict[str, int] = {}

    def line(self, name: str, text: str) -> None:
        """Print one line under the component ``name``."""
        stream = self._stream or sys.stdout
        with self._lock:
            self._width = max(self._width, len(name))
            label = name.ljust(self._width)
            if self._use_color(stream):
                code = self._palette.setdefault(name, _COLORS[len(self._palette) % len(_COLORS)])
                label = f"\x1b[{code}m{label} |\x1b[0m"
            else:
                label = f"{label} |"
            try:
                stream.write(f"{label} {text.rstrip()}\n")
                stream.flush()
            except (OSError, ValueError):
                pass

    def pipe(
        self, name: str, source: IO[bytes], on_line: Callable[[str], bool | None] | None = None
    ) -> threading.Thread:
        """Copy a child's output to the console line by line, in a thread, until EOF.

        A line for which ``on_line`` returns True was consumed by it and is not printed.
        """

        def copy() -> None:
            with source:
                for raw in iter(source.readline, b""):
                    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    if on_line is None or not on_line(text):
                        self.line(name, text)

        thread = threading.Thread(target=copy, name=f"pipe-{name}", daemon=True)
        thread.start()
        return thread

    def handler(self, name: str) -> logging.Handler:
        """A logging handler that prints records under ``name`` (for moto's own loggers)."""
        return _ConsoleHandler(self, name)

    def _use_color(self, stream: IO[str]) -> bool:
        if self._color is not None:
            return self._color
        return "NO_COLOR" not in os.environ and hasattr(stream, "isatty") and stream.isatty()


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Console, name: str) -> None:
        super().__init__()
        self._console = console
        self._name = name

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._console.line(self._name, self.format(record))
        except Exception:
            self.handleError(record)
