"""service/frames.py builds the frames pandas' constructor would, or declines."""

import numpy as np
import orjson
import pandas as pd
import pytest

from service import codecs, frames
from service.frames import column_index, frame_of, frame_of_values, labels_of, strings
from service.schema import CONVERTERS, Field, conform

KEPT = [
    np.array([1.5, np.nan]),
    np.array([1, -(2**63)], dtype=np.int64),
    np.array([True, False]),
    np.array(["2024-01-01T00:00:01", "NaT"], dtype="datetime64[s]"),
    np.array(["2024-01-01T00:00:01.5", "NaT"], dtype="datetime64[ms]"),
    np.array(["2024-01-01T00:00:01.000005", "NaT"], dtype="datetime64[us]"),
    np.array(["2024-01-01T00:00:01.000000005", "NaT"], dtype="datetime64[ns]"),
    pd.array(["a", None], dtype="str"),
    pd.Categorical.from_codes([1, -1], categories=pd.Index(["x", "y"])),
    pd.array([1, None], dtype="Int64"),
    pd.array(pd.to_datetime(["2024-01-01", None]).tz_localize("UTC")),
]


@pytest.mark.parametrize("index", [pd.RangeIndex(2), pd.Index([7, 3])])
def test_kept_arrays_make_the_constructors_frame(index):
    names = column_index(tuple(f"c{i}" for i in range(len(KEPT))))
    built = frame_of(names, KEPT, index)
    expected = pd.DataFrame(dict(zip(names, KEPT, strict=True)), index=index, copy=False)
    assert built is not None
    pd.testing.assert_frame_equal(built, expected, check_exact=True)
    assert built.dtypes.tolist() == expected.dtypes.tolist()


def test_decoded_columns_of_one_dtype_share_a_block_in_their_places():
    """Rows as a decoder holds them make the constructor's frame, each column in its place."""
    rows = [[1.5, 1, 3.5, "a", 7, -0.0, True], [2.5, 2, None, "b", 8, 9.0, False]]
    columns = list("abcdefg")
    values = list(zip(*rows, strict=True))
    dtypes = [np.dtype(t) for t in ("float64", "int64", "float64")] + [None]
    dtypes += [np.dtype(t) for t in ("int64", "float64", "bool")]
    built = frame_of_values(column_index(tuple(columns)), values, dtypes)
    expected = pd.DataFrame(rows, columns=columns)
    pd.testing.assert_frame_equal(built, expected, check_exact=True)
    numeric = ["a", "b", "c", "e", "f"]
    np.testing.assert_array_equal(built[numeric].to_numpy(), expected[numeric].to_numpy())
    built.loc[0, "c"] = 0.25  # a block shared by columns is still written column by column
    assert built["a"].tolist() == [1.5, 2.5] and built["f"].tolist() == [-0.0, 9.0]


@pytest.mark.parametrize(
    "array",
    [
        np.array(["a", "b"], dtype=object),
        np.array([1.0, 2.0], dtype=np.float32),
        np.array([1, 2], dtype=np.int32),
        np.array([[1.0], [2.0]]),
        pd.arrays.NumpyExtensionArray(np.array([1.0, 2.0])),  # pandas unwraps it
        [1.0, 2.0],
        np.array([1.0]),  # the wrong length
    ],
)
def test_arrays_the_constructor_changes_are_declined(array):
    assert frame_of(column_index(("a",)), [array], pd.RangeIndex(2)) is None


def test_strings_are_pandas_strings():
    for values in (["a", "b"], ["", "é"], ["x\x00y"]):
        pd.testing.assert_extension_array_equal(
            strings(values), pd.array(values, dtype=pd.Series(["t"]).dtype)
        )


MIXED = (
    Field("amount", "number"),
    Field("tenure", "integer"),
    Field("plan", "string", ("basic", "plus", "pro")),
    Field("kind", "category", ("a", "b")),
    Field("active", "boolean"),
    Field("signup", "datetime", unit="us"),
)
BODIES = [
    b'[{"id": 1, "amount": 4.5, "tenure": 3, "plan": "pro", "kind": "a", "active": true,'
    b' "signup": "2020-05-27T12:37:04"}]',
    b'[{"id": 1, "amount": null, "tenure": 3.0, "plan": null, "kind": "zz", "active": "yes",'
    b' "signup": "2020-05-27T12:37:04+02:00"},'
    b' {"id": 2, "amount": 1, "tenure": null, "plan": "", "kind": null, "active": null,'
    b' "signup": null}]',
]


@pytest.mark.parametrize("body", BODIES)
def test_conform_gives_the_frame_pandas_built(body):
    """The schema check's frame, against the one pandas' constructor made of the same
    converted columns (what the schema check returned before service/frames.py)."""
    frame = codecs.decode(body, codecs.JSON)
    expected = pd.DataFrame(
        {f.name: CONVERTERS[f.type](frame[f.name], f) for f in MIXED},
        index=frame.index,
        copy=False,
    )
    pd.testing.assert_frame_equal(conform(frame, MIXED), expected, check_exact=True)
    csv = codecs.encode(frame, codecs.CSV)
    from_csv = codecs.decode(csv, codecs.CSV)
    pd.testing.assert_frame_equal(
        conform(from_csv, MIXED),
        pd.DataFrame(
            {f.name: CONVERTERS[f.type](from_csv[f.name], f) for f in MIXED},
            index=from_csv.index,
            copy=False,
        ),
        check_exact=True,
    )


def _every_dtype(rows: int) -> pd.DataFrame:
    half = rows // 2
    return pd.DataFrame(
        {
            "i": np.arange(rows),
            "f32": np.array([0.1, np.nan] * half, dtype=np.float32),
            "i32": np.arange(rows, dtype=np.int32),
            "u64": np.array([2**63 + 5, 1] * half, dtype=np.uint64),
            "b": [True, False] * half,
            "cat": pd.Categorical(["a", None] * half),
            "s": pd.array(["x", None] * half, dtype="str"),
            "dt": pd.to_datetime(["2020-01-01", None] * half),
            "tz": pd.to_datetime(["2020-01-01", "2021-06-01"] * half).tz_localize("UTC"),
            "I64": pd.array([1, None] * half, dtype="Int64"),
            "bn": pd.array([True, None] * half, dtype="boolean"),
            "td": pd.to_timedelta([1, 2] * half, unit="s"),
            "o": np.array([{"a": 1}, None] * half, dtype=object),
        }
    )


@pytest.mark.parametrize("media", [codecs.JSON, codecs.JSONLINES])
def test_small_answers_encode_as_large_ones_do(media):
    """The small-frame row path writes what the per-column path writes, for every dtype:
    a large frame's answer starts with its first rows' answer, byte for byte."""
    large = _every_dtype(2 * (codecs.SMALL_FRAME_ROWS + 1))
    small = codecs.encode(large.head(codecs.SMALL_FRAME_ROWS), media)
    whole = codecs.encode(large, media)
    if media == codecs.JSON:
        assert small.endswith(b"]}")
        small = small[: -len(b"]}")]
        assert orjson.loads(whole)["predictions"][0]["f32"] == pytest.approx(0.1)
    assert whole.startswith(small)


def test_labels_of_an_index_are_its_list():
    for index in (column_index(("b", "a", "é")), pd.Index(["x", "y"]), pd.Index([3, 1])):
        assert labels_of(index) == tuple(index.tolist())
    assert labels_of(column_index(("b", "a", "é"))) is labels_of(column_index(("b", "a", "é")))


def test_shared_indexes_start_afresh_and_stay_right():
    first = column_index(("p", "q"))
    assert column_index(("p", "q")) is first
    for i in range(frames.SHARED_INDEXES + 1):
        column_index((f"c{i}",))
    again = column_index(("p", "q"))
    assert again is not first
    assert labels_of(first) == labels_of(again) == ("p", "q")


def test_a_large_answer_naming_a_column_twice_encodes_as_its_dicts():
    rows = codecs.SMALL_FRAME_ROWS + 1
    frame = pd.DataFrame(np.arange(rows * 2).reshape(rows, 2), columns=["id", "id"])
    expected = [{"id": int(b)} for _, b in frame.to_numpy().tolist()]
    assert codecs.encode(frame, codecs.JSON) == orjson.dumps({"predictions": expected})
