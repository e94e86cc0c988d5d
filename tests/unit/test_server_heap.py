"""After a model loads, the serving process leaves what is alive out of later GC passes."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service.server import YOUNG_OBJECTS, settle_heap


@pytest.fixture(autouse=True)
def _thresholds_restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def _tracked(kind: type) -> int:
    """How many objects of `kind` the collector's generations hold (frozen ones excluded)."""
    return sum(isinstance(o, kind) for o in gc.get_objects())


def test_what_is_alive_at_load_is_left_out_of_later_passes() -> None:
    kept = _Cycle()
    assert _tracked(_Cycle) == 1
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert _tracked(_Cycle) == 0
    finally:
        gc.unfreeze()
    assert _tracked(_Cycle) == 1 and kept.me is kept


def test_garbage_cycles_are_collected_before_freezing_and_at_each_reload() -> None:
    gc.disable()
    try:
        _Cycle()  # unreachable at once: only the collector can free it
        settle_heap()
        gc.unfreeze()
        assert _tracked(_Cycle) == 0
        old_model = _Cycle()
        settle_heap()  # loaded: frozen while in use
        del old_model  # replaced by a reload: now garbage, but frozen
        settle_heap()  # the reload's pass unfreezes first, so it is collected
        gc.unfreeze()
        assert _tracked(_Cycle) == 0
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_thousand_rows_of_young_objects_set_off_no_collection() -> None:
    later = gc.get_threshold()[1:]
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    try:
        settle_heap()
        gc.callbacks.append(count)
        rows = [[row, 0.5] for row in range(1_000)]  # a 1,000-row JSON body's lists
        assert len(rows) == 1_000 and collections == []
        assert gc.get_threshold() == (YOUNG_OBJECTS, *later)
        many = [[row] for row in range(YOUNG_OBJECTS + 1_000)]
        assert len(many) > YOUNG_OBJECTS and collections  # the collector still runs
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
