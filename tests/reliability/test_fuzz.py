"""Fuzzing: schemathesis against the real server's /openapi.json, and hypothesis property
tests for the format decoders and the shared predict path.

The properties: a decoder raises nothing but InputError subclasses whatever the bytes;
predict raises nothing but InvalidData whatever the frame; the server never answers 5xx
and every answer conforms to its own OpenAPI description.
"""

from __future__ import annotations

import collections
import io
import json
import os
import string
import sys
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from service import codecs
from service.artifacts import Bundle
from service.errors import InputError, InvalidData
from service.model import predict
from tests.endpoint_fixtures import EndpointServer

pytestmark = pytest.mark.reliability

# Cases per schemathesis mode (positive and negative): 2 x FUZZ_CASES requests in all.
FUZZ_CASES = int(os.environ.get("RELIABILITY_FUZZ_CASES", "600"))
MODEL_BODY_CASES = int(os.environ.get("RELIABILITY_MODEL_BODY_CASES", "300"))
PROPERTY_CASES = int(os.environ.get("RELIABILITY_PROPERTY_CASES", "300"))
# A schema-valid request may still hold the wrong columns (422) or rows of unequal length
# (400): JSON Schema cannot say "these columns" or "lists of equal length".
SCHEMA_VALID_STATUSES = ["2xx", "400", "422"]

# Until request R4 lands (a finite value that overflows once scaled is a 422, not a 500),
# generated magnitudes stay below it; the poison case overflow_after_scaling covers it.
BIG = sys.float_info.max
SPECIAL_FLOATS = st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0])
FLOATS = st.one_of(st.floats(min_value=-BIG, max_value=BIG), SPECIAL_FLOATS)

QUIET = settings(
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


# ------------------------------------------------------------------ schemathesis


@pytest.fixture(scope="module")
def schema(endpoint: EndpointServer) -> Any:
    config = schemathesis.Config.from_dict(
        {"checks": {"positive_data_acceptance": {"expected-statuses": SCHEMA_VALID_STATUSES}}}
    )
    return schemathesis.openapi.from_url(f"{endpoint.url}/openapi.json", config=config)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    schema: Any, endpoint: EndpointServer, http: requests.Session, mode: GenerationMode
) -> None:
    statuses: collections.Counter[tuple[str, int]] = collections.Counter()

    @settings(QUIET, max_examples=FUZZ_CASES)
    @given(case=schema.as_strategy(mode))
    def call(case: Any) -> None:
        response = case.call_and_validate(base_url=endpoint.url, session=http)
        statuses[(case.operation.label, response.status_code)] += 1

    call()
    print(f"schemathesis {mode}: {sum(statuses.values())} cases: {dict(statuses)}")
    assert sum(statuses.values()) >= FUZZ_CASES
    assert not [key for key in statuses if key[1] >= 500]


# ------------------------------------------------------------------ model-shaped bodies

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(min_value=-BIG, max_value=BIG),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def columns(bundle: Bundle) -> list[str]:
    return [bundle.id_column, *bundle.columns]


@st.composite
def model_rows(draw: st.DrawFn, columns: list[str]) -> dict[str, Any]:
    """A row with the model's real columns, a few dropped or holding any JSON value."""
    numbers = st.floats(min_value=-1e6, max_value=1e6)
    row: dict[str, Any] = {name: draw(numbers) for name in columns}
    for name in draw(st.lists(st.sampled_from(columns), unique=True, max_size=3)):
        if draw(st.booleans()):
            del row[name]
        else:
            row[name] = draw(ODD_VALUES)
    row.update(draw(st.dictionaries(st.text(max_size=4), ODD_VALUES, max_size=2)))
    return row


def test_model_shaped_json_never_gets_a_5xx(
    endpoint: EndpointServer, http: requests.Session, columns: list[str]
) -> None:
    statuses: collections.Counter[int] = collections.Counter()

    @settings(QUIET, max_examples=MODEL_BODY_CASES)
    @given(rows=st.lists(model_rows(columns), min_size=0, max_size=4))
    def call(rows: list[dict[str, Any]]) -> None:
        response = http.post(
            f"{endpoint.url}/invocations",
            data=json_bytes({"dataframe_records": rows}),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        statuses[response.status_code] += 1
        assert response.status_code in (200, 400, 422), response.text
        document = response.json()
        if response.status_code == 200:
            assert len(document["predictions"]) == len(rows)
        else:
            assert set(document) == {"error", "message", "error_code"}

    call()
    print(f"model-shaped bodies: {sum(statuses.values())} cases: {dict(statuses)}")
    assert statuses[200] > 0, "no case was a valid request: the strategy tests nothing"


# ------------------------------------------------------------------ decoders


def json_bytes(value: Any) -> bytes:
    """The standard library writes what orjson refuses: integers past 64 bits, Infinity."""
    return json.dumps(value).encode()


JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
SHAPE_KEYS = st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs"])
SPLIT_PARTS = st.fixed_dictionaries(
    {},
    optional={
        "columns": st.one_of(st.lists(st.text(max_size=4), max_size=4), JSON_VALUES),
        "data": st.one_of(st.lists(st.lists(JSON_LEAVES, max_size=4), max_size=4), JSON_VALUES),
        "index": JSON_VALUES,
    },
)
WRONG_JSON = st.one_of(
    JSON_VALUES,
    st.dictionaries(SHAPE_KEYS, st.one_of(JSON_VALUES, SPLIT_PARTS), min_size=1, max_size=2),
    st.lists(st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=3), max_size=4),
)
CELL = st.text(alphabet=string.printable + "é\x00\ufeff", max_size=8)
WRONG_CSV = st.builds(
    lambda header, rows, ending: ending.join(
        [",".join(header), *(",".join(row) for row in rows)]
    ).encode(),
    st.lists(CELL, min_size=0, max_size=5),
    st.lists(st.lists(CELL, max_size=6), max_size=5),
    st.sampled_from(["\n", "\r\n", "\r"]),
)
WRONG_JSONLINES = st.builds(
    lambda values: b"\n".join(json_bytes(v) for v in values),
    st.lists(st.one_of(JSON_VALUES, st.dictionaries(st.text(max_size=4), JSON_VALUES)), max_size=5),
)


def good_parquet() -> bytes:
    """With pandas metadata, so mutations can damage it too."""
    sink = io.BytesIO()
    table = pa.Table.from_pandas(
        pd.DataFrame({"id": [1, 2, 3], "mean_radius": [1.0, None, 3.5], "s": ["a", "b", "c"]})
    )
    pq.write_table(table, sink)
    return sink.getvalue()


PARQUET = good_parquet()
MUTATED_PARQUET = st.builds(
    lambda flips: _mutate(PARQUET, flips),
    st.lists(st.tuples(st.integers(0, len(PARQUET) - 1), st.integers(0, 255)), max_size=8),
)


def _mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    mutable = bytearray(data)
    for position, value in flips:
        mutable[position] = value
    return bytes(mutable)


def decode_or_input_error(body: bytes, media_type: str) -> pd.DataFrame | None:
    """The property: a frame, or an InputError with a message; nothing else escapes."""
    try:
        frame = codecs.decode(body, media_type)
    except InputError as exc:
        assert exc.message.strip()
        return None
    assert isinstance(frame, pd.DataFrame)
    return frame


@pytest.mark.parametrize("media_type", codecs.MEDIA_TYPES)
def test_decoders_raise_only_input_errors_on_arbitrary_bytes(media_type: str) -> None:
    @settings(QUIET, max_examples=PROPERTY_CASES)
    @given(body=st.binary(max_size=512))
    def check(body: bytes) -> None:
        decode_or_input_error(body, media_type)

    check()


@pytest.mark.parametrize(
    ("media_type", "bodies"),
    [
        (codecs.JSON, WRONG_JSON.map(json_bytes)),
        (codecs.CSV, WRONG_CSV),
        (codecs.JSONLINES, WRONG_JSONLINES),
        (codecs.NDJSON, WRONG_JSONLINES),
        (codecs.PARQUET, MUTATED_PARQUET),
        (codecs.X_PARQUET, MUTATED_PARQUET),
    ],
    ids=["json", "csv", "jsonlines", "ndjson", "parquet", "x-parquet"],
)
def test_decoders_raise_only_input_errors_on_structured_but_wrong_input(
    media_type: str, bodies: st.SearchStrategy[bytes], bundle: Bundle
) -> None:
    @settings(QUIET, max_examples=PROPERTY_CASES)
    @given(body=bodies)
    def check(body: bytes) -> None:
        frame = decode_or_input_error(body, media_type)
        if frame is not None:
            predicted_or_invalid(bundle, frame)

    check()


# ------------------------------------------------------------------ predict


def predicted_or_invalid(bundle: Bundle, frame: pd.DataFrame) -> None:
    """The property: one prediction per row, or InvalidData with a message."""
    try:
        result = predict(bundle, frame)
    except InvalidData as exc:
        assert exc.message.strip()
        return
    assert list(result.columns) == [bundle.id_column, bundle.output_column]
    assert len(result) == len(frame)
    assert np.isfinite(result[bundle.output_column].to_numpy(dtype=np.float64)).all()


CELLS = st.one_of(
    FLOATS,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.just(""),
    st.just(pd.NA),
    st.just(np.datetime64("2024-01-01")),
    st.lists(FLOATS, max_size=2),
)


@st.composite
def frames(draw: st.DrawFn, bundle: Bundle) -> pd.DataFrame:
    """Frames with some of the model's columns, some strangers, and cells of any type."""
    known = [bundle.id_column, *bundle.columns]
    names = draw(st.lists(st.sampled_from(known), unique=True, min_size=0, max_size=len(known)))
    if draw(st.booleans()):
        names = list(dict.fromkeys([*known, *names]))
    names += draw(st.lists(st.text(max_size=5), max_size=3))
    rows = draw(st.integers(0, 4))
    uniform = draw(st.booleans())
    data: dict[str, Any] = {}
    for name in dict.fromkeys(names):
        if uniform:
            data[name] = draw(st.lists(FLOATS, min_size=rows, max_size=rows))
        else:
            data[name] = pd.Series(
                draw(st.lists(CELLS, min_size=rows, max_size=rows)), dtype=object
            )
    return pd.DataFrame(data, index=range(rows))


def test_predict_raises_only_invalid_data_on_random_frames(bundle: Bundle) -> None:
    @settings(QUIET, max_examples=PROPERTY_CASES)
    @given(frame=frames(bundle))
    def check(frame: pd.DataFrame) -> None:
        predicted_or_invalid(bundle, frame)

    check()
