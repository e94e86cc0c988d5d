"""read_ahead: overlap producing the next item with consuming this one, in a thread; and
gil_switch, the interpreter's switch interval for a block of such threads."""

import contextlib
import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def read_ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` in a thread, at most `depth` items ahead of the consumer.

    Decoding the next row batch (pyarrow and numpy release the GIL) then overlaps the work on
    this one; the bounded queue keeps memory bounded. An exception of `items` is raised here;
    closing this iterator early stops the thread and closes `items`.
    """
    ready: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    closed = threading.Event()

    def put(item: Any) -> bool:
        while not closed.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:
            put(_Raised(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        closed.set()
        thread.join()


@contextlib.contextmanager
def gil_switch(seconds: float) -> Iterator[None]:
    """The interpreter's switch interval set to `seconds` for the block, then restored.

    A thread that comes back from a socket call (an S3 input's next MiB, an output's part)
    waits for the GIL until the thread running Python gives it up, after the switch
    interval: 5 ms by default. Beside one busy Python thread, reading the 10M-row input's
    955 MB that way took 7.9-8.1 s, and 1.0-1.3 s with 1 ms (bench/RESULTS.md).
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
