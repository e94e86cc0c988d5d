"""Small CSV bodies of numbers skip Arrow's reader: the frame must be the one Arrow gives."""

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import codecs, csv_rows

_NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(0, 999).map(lambda n: f"{n:05d}"),  # leading zeros
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(-1e6, 1e6).map(lambda f: f"{f:.17g}"),
    st.sampled_from(["", "-0", "-0.0", "1e5", "1E-5", "2.5e+3", "7e99", "1.", ".5", "+1"]),
    st.sampled_from(["NaN", "nan", "inf", "true", "0", "1", "x", " 1", "2024-01-01", "N/A"]),
)
_TABLES = st.integers(1, 6).flatmap(
    lambda width: st.lists(
        st.lists(_NUMBERS, min_size=width, max_size=width), min_size=1, max_size=8
    )
)


def _body(names, rows, end, quoted):
    mark = '"' if quoted else ""
    lines = [",".join(f"{mark}{name}{mark}" for name in names)] if names else []
    lines += [",".join(row) for row in rows]
    return (end.join(lines) + end).encode()


@settings(max_examples=400, deadline=None)
@given(_TABLES, st.booleans(), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_small_csv_frames_equal_arrows(rows, header, end, quoted):
    names = [f"c{i}" for i in range(len(rows[0]))] if header else None
    body = _body(names, rows, end, quoted)
    small = csv_rows.read(body, header)
    if small is None:
        return
    try:
        expected = codecs._arrow_csv_frame(body, header)
    except Exception as exc:
        pytest.fail(f"Arrow refuses {body!r} ({exc}) but the fast path read it")
    pd.testing.assert_frame_equal(codecs._small_csv_frame(small), expected, check_exact=True)


@pytest.mark.parametrize("end", ["\n", "\r\n", ""])
def test_a_row_of_numbers_takes_the_fast_path(end):
    """SageMaker's usual request: one headerless line of numbers, its last end optional."""
    body = f"1,11.953,24.79,-7,-0.5e3,0{end}".encode()
    small = csv_rows.read(body, header=False)
    assert small is not None
    assert small.dtypes == ["int64", "float64", "float64", "int64", "float64", "int64"]
    expected = codecs._arrow_csv_frame(body, header=False)
    pd.testing.assert_frame_equal(codecs._small_csv_frame(small), expected, check_exact=True)


@pytest.mark.parametrize(
    "body",
    [
        b'"1",2\n',  # quoted
        b"1,2\n3\n",  # ragged
        b",\n,\n",  # a column without a value: Arrow's null type
        b"\xef\xbb\xbf1,2\n",  # a byte-order mark
        b"1,true\n",  # a boolean
        b"9223372036854775808,1\n",  # beyond int64
        b"1,2\n" * (csv_rows.SMALL_CSV_ROWS + 1),
    ],
)
def test_anything_else_goes_to_arrow(body):
    assert csv_rows.read(body, header=False) is None
