"""A large dataframe_split table of numbers takes numpy's path: the frame must be exactly
the one pandas' constructor builds, whatever the values."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import codecs, json_tables
from service.frames import column_index

ROWS = codecs.SMALL_FRAME_ROWS + 1  # above the small-frame path's limit

numbers = st.one_of(
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
)
odd_values = st.one_of(
    st.booleans(),
    st.text(max_size=3),
    st.integers(2**63, 2**70),
    st.integers(-(2**70), -(2**63) - 1),
    st.just(float("nan")),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def tables(draw: Any, odd: bool) -> list[list[Any]]:
    width = draw(st.integers(1, 4))
    kinds = [draw(st.sampled_from(["int", "float", "mixed"])) for _ in range(width)]
    column = {
        "int": st.integers(-(2**62), 2**62),
        "float": st.floats(allow_nan=False, allow_infinity=False),
        "mixed": numbers,
    }
    rows = [[draw(column[kind]) for kind in kinds] for _ in range(ROWS)]
    if odd:
        rows[draw(st.integers(0, ROWS - 1))][draw(st.integers(0, width - 1))] = draw(odd_values)
    return rows


def body_of(rows: list[list[Any]]) -> bytes:
    columns = [f"c{i}" for i in range(len(rows[0]))]
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()


def expected(body: bytes) -> pd.DataFrame:
    """pandas' constructor on the same parsed document (orjson reads an int beyond 64 bits
    as a float; NaN needs Python's json module)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = json.loads(body)
    return codecs.frame_from_json(document).frame  # no body: pandas' constructor


@settings(max_examples=150, deadline=None)
@given(tables(odd=False))
def test_a_table_of_numbers_is_the_frame_pandas_builds(rows: list[list[Any]]) -> None:
    body = body_of(rows)
    pd.testing.assert_frame_equal(codecs.decode_json(body).frame, expected(body))


@settings(max_examples=150, deadline=None)
@given(tables(odd=True))
def test_a_table_with_any_other_value_is_still_the_frame_pandas_builds(
    rows: list[list[Any]],
) -> None:
    body = body_of(rows)
    try:
        want = expected(body)
    except ValueError:  # pandas refuses it too (a list where a value should be)
        with pytest.raises(ValueError):
            codecs.decode_json(body)
        return
    pd.testing.assert_frame_equal(codecs.decode_json(body).frame, want)


@pytest.mark.parametrize(
    ("value", "taken"),
    [
        (1.5, True),
        (None, True),
        (True, False),  # numpy would make it 1.0; pandas keeps the column as objects
        ("1.5", False),  # numpy would parse it
        (2**63, False),  # beyond int64
    ],
)
def test_numpys_path_is_taken_only_for_numbers_and_nulls(value: Any, taken: bool) -> None:
    rows = [[1, 2.5] for _ in range(ROWS)]
    rows[3][1] = value
    body = body_of(rows)
    document = json.loads(body)
    allowed = codecs._numbers_only(body, document, "dataframe_split")
    table = json_tables.numeric_table(column_index(("c0", "c1")), rows) if allowed else None
    assert (table is not None) == taken


def test_a_column_of_nulls_only_stays_objects_as_in_pandas() -> None:
    rows = [[1.5, None] for _ in range(ROWS)]
    frame = codecs.decode_json(body_of(rows)).frame
    assert frame["c1"].dtype == np.dtype(object)
    pd.testing.assert_frame_equal(frame, expected(body_of(rows)))


def test_an_escaped_name_skips_the_byte_count() -> None:
    body = b'{"dataframe_split": {"columns": ["\\u0061"], "data": []}}'
    assert not json_tables.holds_only_numbers(body, json.loads(body))


@pytest.mark.parametrize("big", [2**53 + 1, -(2**62) - 1, 2**63 - 1])
def test_an_int_column_keeps_ints_a_float_cannot_hold(big: int) -> None:
    rows = [[position, 0.5] for position in range(ROWS)]
    rows[-1][0] = big
    frame = codecs.decode_json(body_of(rows)).frame
    assert frame["c0"].dtype == np.dtype(np.int64)
    assert int(frame["c0"].iloc[-1]) == big
    pd.testing.assert_frame_equal(frame, expected(body_of(rows)))
