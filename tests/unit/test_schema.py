"""The input schema: each type read the way the pipeline was fitted, violations named."""

import re

import numpy as np
import pandas as pd
import pytest

from service.errors import InvalidData, ManifestError
from service.schema import Field, conform, infer_schema, parse_schema


def one(field: Field, values: list) -> pd.Series:
    frame = pd.DataFrame({field.name: pd.Series(values, dtype=object)})
    return conform(frame, [field])[field.name]


def test_numbers_from_text_and_blanks_as_missing():
    got = one(Field("x", "number"), ["1.5", "", None, 2])
    np.testing.assert_array_equal(got.to_numpy(), [1.5, np.nan, np.nan, 2.0])


def test_integers_stay_int64_unless_missing():
    assert one(Field("n", "integer"), [1, 2.0, "3"]).dtype == np.int64
    assert one(Field("n", "integer"), [1, None]).dtype == np.float64


def test_booleans_from_words_and_numbers():
    got = one(Field("b", "boolean"), [True, "false", "YES", 0, "1"])
    assert got.dtype == np.bool_
    assert got.tolist() == [True, False, True, False, True]


def test_dates_small_and_large_frames_agree_and_zones_become_utc():
    field = Field("d", "datetime", unit="us")
    values = ["2024-01-02T03:04:05+02:00", "2024-01-02", "2024-01-02 03:04:05.123456Z"]
    small = one(field, values)
    large = one(field, values * 30)[:3]
    assert small.dtype == np.dtype("datetime64[us]")
    assert small.tolist() == large.tolist()
    assert small[0] == pd.Timestamp("2024-01-02 01:04:05")


def test_empty_text_is_missing_and_numbers_in_text_columns_become_text():
    got = one(Field("s", "string", ("a", "b")), ["a", "", None, 7])
    assert got[0] == "a" and got[3] == "7"
    assert pd.isna(got[1]) and pd.isna(got[2])


def test_unseen_category_is_missing_for_the_model_to_handle():
    got = one(Field("c", "category", ("old", "new")), ["old", "moon"])
    assert list(got.cat.categories) == ["old", "new"]
    assert got[0] == "old" and pd.isna(got[1])


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        (Field("x", "number"), "ten", "'x' must be numeric but holds 'ten'"),
        (Field("x", "number"), float("inf"), "finite"),
        (Field("n", "integer"), 1.5, "'n' must be whole-number but holds 1.5"),
        (Field("b", "boolean"), "perhaps", "'b' must be boolean but holds 'perhaps'"),
        (Field("d", "datetime"), "yesterday", "'d' must be a date/time (ISO 8601) but holds"),
        (Field("d", "datetime"), 1700000000, "1700000000"),
        (Field("s", "string"), {"a": 1}, "'s' must be text"),
    ],
)
def test_violations_name_the_column_and_the_value(field, value, words):
    with pytest.raises(InvalidData, match=re.escape(words)):
        one(field, [value])


def test_schema_comes_from_sample_dtypes():
    sample = pd.DataFrame(
        {
            "x": [1.0, np.nan],
            "n": [1, 2],
            "b": [True, False],
            "s": ["b", "a"],
            "c": pd.Categorical(["u", "v"], categories=["v", "u"]),
            "d": pd.to_datetime(["2024-01-01", "2024-01-02"]).astype("datetime64[ms]"),
        }
    )
    schema = infer_schema(sample, ["n", "x", "b", "s", "c", "d"])
    assert [f.to_json() for f in schema] == [
        {"name": "n", "type": "integer"},
        {"name": "x", "type": "number"},
        {"name": "b", "type": "boolean"},
        {"name": "s", "type": "string", "categories": ["a", "b"]},
        {"name": "c", "type": "category", "categories": ["v", "u"]},
        {"name": "d", "type": "datetime", "unit": "ms"},
    ]
    assert parse_schema([f.to_json() for f in schema], "here") == schema


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ([], "non-empty list"),
        ([{"name": "x", "type": "complex"}], "type 'complex'"),
        ([{"type": "number"}], "needs a 'name'"),
        ([{"name": "x", "type": "number"}] * 2, "twice"),
        ([{"name": "d", "type": "datetime", "unit": "weeks"}], "'unit'"),
    ],
)
def test_bad_schema_in_a_manifest_is_named(value, words):
    with pytest.raises(ManifestError, match=words):
        parse_schema(value, "s3://b/m/")
