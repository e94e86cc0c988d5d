import gzip
import io

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import codecs, files
from service.errors import InvalidData, MalformedBody, NotAcceptable, UnsupportedMediaType
from service.model import predict


def test_every_media_type_round_trips_predictions(bundle, sample_frame):
    expected = predict(bundle, sample_frame)
    for media in codecs.MEDIA_TYPES:
        if media == codecs.JSON:
            body = orjson.dumps(sample_frame.to_dict("records"))
        else:
            body = codecs.encode(sample_frame, media)
        decoded = codecs.decode(body, media)
        np.testing.assert_allclose(
            predict(bundle, decoded)["activation"], expected["activation"], atol=1e-12
        )


@pytest.mark.parametrize(
    "document",
    [
        lambda f: {"dataframe_split": {"columns": list(f.columns), "data": f.values.tolist()}},
        lambda f: {"dataframe_records": f.to_dict("records")},
        lambda f: {"instances": f.to_dict("records")},
        lambda f: {"inputs": f.to_dict("list")},
        lambda f: f.to_dict("records"),
    ],
    ids=["dataframe_split", "dataframe_records", "instances", "inputs", "records"],
)
def test_json_shapes(bundle, sample_frame, document):
    rows = sample_frame.head(5).fillna(0)
    decoded = codecs.decode(orjson.dumps(document(rows)), "application/json; charset=utf-8")
    assert decoded["id"].tolist() == rows["id"].tolist()
    np.testing.assert_allclose(
        predict(bundle, decoded)["activation"], predict(bundle, rows)["activation"], atol=1e-12
    )


@pytest.mark.parametrize("media", codecs.MEDIA_TYPES)
def test_empty_body_is_malformed(media):
    with pytest.raises(MalformedBody, match="empty"):
        codecs.decode(b"", media)


@pytest.mark.parametrize("media", codecs.MEDIA_TYPES)
def test_garbage_is_malformed_not_a_crash(media):
    with pytest.raises(MalformedBody):
        codecs.decode(b"\x00\xff\xfe\x01 PAR1 garbage {[", media)


@pytest.mark.parametrize(
    "document",
    [
        {"x": [1]},
        {"instances": [[1, 2]]},
        {"instances": [{"a": 1}], "dataframe_records": [{"a": 1}]},
        {"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}},
        {"inputs": {"a": [1], "b": [1, 2]}},
        3,
        "text",
        [1, 2],
    ],
)
def test_wrong_json_shapes_explain_the_accepted_ones(document):
    with pytest.raises(MalformedBody):
        codecs.decode(orjson.dumps(document), codecs.JSON)


def test_non_utf8_csv_says_so(tmp_path):
    body = "id,name\n1,caf\xe9\n".encode("latin-1")
    with pytest.raises(MalformedBody, match="'name' is not UTF-8"):
        codecs.decode(body, codecs.CSV)
    (tmp_path / "latin.csv").write_bytes(body)
    with pytest.raises(MalformedBody, match="UTF-8"):
        list(files.iter_batches(str(tmp_path / "latin.csv"), files.FileFormat("csv"), 10))


def test_unknown_content_type_is_415():
    with pytest.raises(UnsupportedMediaType) as caught:
        codecs.decode(b"<a/>", "text/xml")
    assert caught.value.status == 415
    with pytest.raises(UnsupportedMediaType, match="no Content-Type"):
        codecs.decode(b"{}", None)


def test_jsonlines_names_the_broken_line():
    with pytest.raises(MalformedBody, match="line 2"):
        codecs.decode(b'{"id": 1}\n{"id": \n', codecs.JSONLINES)


@pytest.mark.parametrize(
    ("accept", "default", "expected"),
    [
        (None, codecs.JSON, codecs.JSON),
        ("*/*", codecs.JSON, codecs.JSON),
        ("text/csv", codecs.JSON, codecs.CSV),
        ("text/csv;q=0.2, application/x-parquet", codecs.JSON, codecs.X_PARQUET),
        ("application/*", codecs.JSON, codecs.JSON),
        # a default answers what allows it as much as any other type
        (None, codecs.CSV, codecs.CSV),
        ("*/*", codecs.CSV, codecs.CSV),
        ("text/*", codecs.CSV, codecs.CSV),
        ("application/*", codecs.CSV, codecs.JSON),
        ("application/jsonlines", codecs.CSV, codecs.JSONLINES),
        ("text/csv;q=0.5, application/json", codecs.CSV, codecs.JSON),
    ],
)
def test_accept_negotiation(accept, default, expected):
    assert codecs.negotiate(accept, default) == expected


def test_unproducible_accept_is_406():
    with pytest.raises(NotAcceptable) as caught:
        codecs.negotiate("image/png")
    assert caught.value.status == 406


@pytest.mark.parametrize(
    ("key", "name", "gzipped"),
    [
        ("a/b.parquet", "parquet", False),
        ("x.CSV", "csv", False),
        ("dir/file.name.csv.gz", "csv", True),
        ("f.jsonl", "jsonl", False),
        ("f.jsonl.gz", "jsonl", True),
    ],
)
def test_file_format_from_key(key, name, gzipped):
    assert files.file_format(key) == files.FileFormat(name, gzipped)


@pytest.mark.parametrize("key", ["a.txt", "a.parquet.gz", "noext", "a.csv.zip"])
def test_unknown_file_formats(key):
    assert files.file_format(key) is None


def _write(frame, path, name, gzipped):
    if name == "parquet":
        frame.to_parquet(path, index=False)
        return
    text = (
        frame.to_csv(index=False) if name == "csv" else frame.to_json(orient="records", lines=True)
    )
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gzipped else data)


@pytest.mark.parametrize(
    ("name", "gzipped"),
    [("parquet", False), ("csv", False), ("csv", True), ("jsonl", False), ("jsonl", True)],
)
def test_files_stream_in_bounded_batches(bundle, sample_frame, tmp_path, name, gzipped):
    big = pd.concat([sample_frame] * 50, ignore_index=True).assign(id=lambda f: range(len(f)))
    path = tmp_path / "input"
    _write(big, path, name, gzipped)
    fmt = files.FileFormat(name, gzipped)
    batches = list(files.iter_batches(str(path), fmt, 1000, bundle.columns))
    assert sum(len(b) for b in batches) == len(big)
    assert len(batches) > 1
    if name == "parquet":
        assert max(len(b) for b in batches) <= 1000
    got = pd.concat([predict(bundle, b) for b in batches], ignore_index=True)
    np.testing.assert_allclose(got["activation"], predict(bundle, big)["activation"], atol=1e-12)


def test_csv_with_text_in_a_numeric_column_names_it(bundle, sample_frame, tmp_path):
    rows = sample_frame.head(20).astype({"mean_area": object})
    rows.loc[15, "mean_area"] = "oops"
    path = tmp_path / "bad.csv"
    rows.to_csv(path, index=False)
    with pytest.raises((MalformedBody, InvalidData), match="mean_area"):
        for batch in files.iter_batches(str(path), files.FileFormat("csv"), 5, bundle.columns):
            predict(bundle, batch)


@pytest.mark.parametrize("content", [b"", b"PAR1 not really", b"garbage" * 100])
def test_corrupt_parquet_file_is_malformed(tmp_path, content):
    path = tmp_path / "bad.parquet"
    path.write_bytes(content)
    with pytest.raises(MalformedBody):
        list(files.iter_batches(str(path), files.FileFormat("parquet"), 100))


def test_truncated_parquet_file_is_malformed(sample_frame, tmp_path):
    sink = io.BytesIO()
    sample_frame.to_parquet(sink, index=False)
    path = tmp_path / "cut.parquet"
    path.write_bytes(sink.getvalue()[: len(sink.getvalue()) // 2])
    with pytest.raises(MalformedBody):
        list(files.iter_batches(str(path), files.FileFormat("parquet"), 100))


@pytest.mark.parametrize("output_format", ["parquet", "csv", "jsonl"])
def test_batch_writer_round_trips(bundle, sample_frame, tmp_path, output_format):
    out = predict(bundle, sample_frame)
    path = tmp_path / f"out.{output_format}"
    with files.BatchWriter(str(path), output_format) as writer:
        writer.write(out.iloc[:70])
        writer.write(out.iloc[70:])
    assert writer.rows == len(out)
    if output_format == "parquet":
        back = pq.read_table(path).to_pandas()
    elif output_format == "csv":
        back = pd.read_csv(path)
    else:
        back = pd.read_json(path, lines=True)
    assert back["id"].tolist() == out["id"].tolist()
    np.testing.assert_allclose(back["activation"], out["activation"], atol=1e-12)


def _dictionary_columns(parquet: pq.ParquetFile) -> set[str]:
    groups = [parquet.metadata.row_group(index) for index in range(parquet.num_row_groups)]
    return {
        group.column(index).path_in_schema
        for group in groups
        for index in range(group.num_columns)
        if group.column(index).has_dictionary_page
    }


def test_parquet_outputs_keep_dictionaries_for_text_columns_only(tmp_path):
    rng = np.random.default_rng(7)
    out = pd.DataFrame(
        {
            "id": np.arange(5_000),
            "probability": rng.random(5_000),
            "label": rng.choice(["cat", "dog", "owl"], 5_000),
            "kind": pd.Categorical(rng.choice(["a", "b"], 5_000)),
            "flag": rng.random(5_000) > 0.5,
        }
    )
    path = tmp_path / "out.parquet"
    with files.BatchWriter(str(path), "parquet") as writer:
        writer.write(out.iloc[:2_500])
        writer.write(out.iloc[2_500:])
    answer = pq.ParquetFile(io.BytesIO(codecs.encode_parquet(out)))
    for written in (pq.ParquetFile(path), answer):
        assert _dictionary_columns(written) == {"label", "kind"}
        pd.testing.assert_frame_equal(written.read().to_pandas(), out)


_CELLS = st.one_of(
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
    st.booleans(),
    st.text(max_size=2),
)
_TABLES = st.integers(1, 5).flatmap(
    lambda width: st.tuples(
        st.lists(st.text(min_size=1, max_size=3), min_size=width, max_size=width, unique=True),
        st.lists(st.lists(_CELLS, min_size=width, max_size=width), min_size=1, max_size=70),
    )
)


@settings(max_examples=300, deadline=None)
@given(_TABLES)
def test_small_json_frames_equal_pandas(table):
    columns, rows = table
    fast = codecs._small_frame(columns, rows)
    if fast is not None:
        expected = pd.DataFrame(rows, columns=columns)
        pd.testing.assert_frame_equal(fast, expected, check_exact=True)
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    fast = codecs._small_records_frame(records)
    if fast is not None:
        pd.testing.assert_frame_equal(fast, pd.DataFrame.from_records(records), check_exact=True)


def test_answers_with_labels_booleans_datetimes_and_nulls_encode_in_every_type():
    """Pipeline bundles answer string labels and may carry datetime or nullable ids."""
    answer = pd.DataFrame(
        {
            "id": pd.to_datetime(["2024-01-01", None]),
            "label": ["dog", "cat"],
            "p_dog": [0.9, 0.2],
            "flag": [True, False],
            "n": pd.array([1, None], dtype="Int64"),
        }
    )
    for media in codecs.MEDIA_TYPES:
        for header in (True, False):
            assert codecs.encode(answer, media, header=header)
    lines = codecs.encode(answer, codecs.JSONLINES).splitlines()
    assert orjson.loads(lines[0]) == {
        "id": "2024-01-01T00:00:00",
        "label": "dog",
        "p_dog": 0.9,
        "flag": True,
        "n": 1,
    }
    assert orjson.loads(lines[1])["id"] is None and orjson.loads(lines[1])["n"] is None
    assert codecs.encode(answer, codecs.CSV, header=False).count(b"\n") == 2


def test_json_with_an_unpaired_surrogate_is_a_malformed_body():
    """orjson refuses `"\\ud800"`; the fallback for NaN (json.loads) lets it by, and pandas
    cannot store it: the client hears what to fix instead of a server error."""
    body = b'[{"id": 1, "plan": "\\ud800", "amount": NaN}]'
    for document in (body, body.replace(b', "amount": NaN', b"")):
        with pytest.raises(MalformedBody, match="unpaired surrogate"):
            codecs.read(document, codecs.JSON)


@pytest.mark.parametrize("threaded_from", [0, 1 << 40], ids=["threads", "one thread"])
def test_parquet_body_reads_the_same_with_and_without_threads(
    sample_frame, monkeypatch, threaded_from
):
    """Small bodies are read on one thread, big ones with Arrow's pool: same frame."""
    frame = sample_frame.assign(
        when=pd.Timestamp("2024-01-02T03:04:05Z"), label="a", flag=True, count=7
    )
    sink = io.BytesIO()
    frame.to_parquet(sink, index=False)
    monkeypatch.setattr(codecs, "THREADED_PARQUET_BYTES", threaded_from)
    pd.testing.assert_frame_equal(codecs.decode(sink.getvalue(), codecs.PARQUET), frame)


_NUMBER_COLUMNS = {
    "float64": st.floats(allow_subnormal=True),
    "float32": st.floats(width=32),
    "int64": st.integers(-(2**63), 2**63 - 1),
    "uint64": st.integers(0, 2**64 - 1),
    "int32": st.integers(-(2**31), 2**31 - 1),
    "bool": st.booleans(),
}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(sorted(_NUMBER_COLUMNS)), min_size=1, max_size=4),
    st.integers(codecs.SMALL_FRAME_ROWS + 1, 200),
    st.data(),
)
def test_many_rows_of_numbers_encode_as_orjson_writes_their_dicts(dtypes, rows, data):
    """The column-wise JSON of a large numeric answer, against orjson writing each row's
    dict (NaN and infinities as null, -0.0, 2**64 - 1, float32 as Python floats)."""
    frame = pd.DataFrame(
        {
            f"c{i}": np.array(
                data.draw(st.lists(_NUMBER_COLUMNS[d], min_size=rows, max_size=rows)), dtype=d
            )
            for i, d in enumerate(dtypes)
        }
    )
    records = [
        {f"c{i}": value for i, value in enumerate(row)}
        for row in zip(*(frame[c].tolist() for c in frame), strict=True)
    ]
    assert codecs.encode(frame, codecs.JSON) == orjson.dumps({"predictions": records})
    lines = b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records)
    assert codecs.encode(frame, codecs.JSONLINES) == lines


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(sorted(_NUMBER_COLUMNS)), min_size=1, max_size=4),
    st.integers(1, 80),
    st.booleans(),
    st.data(),
)
def test_numbers_encode_as_csv_as_arrows_pandas_conversion_writes_them(dtypes, rows, header, data):
    """The CSV of an answer of numbers, against Arrow writing `Table.from_pandas` of it."""
    frame = pd.DataFrame(
        {
            f"c{i}": np.array(
                data.draw(st.lists(_NUMBER_COLUMNS[d], min_size=rows, max_size=rows)), dtype=d
            )
            for i, d in enumerate(dtypes)
        }
    )
    sink = io.BytesIO()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=header))
    assert codecs.encode(frame, codecs.CSV, header=header) == sink.getvalue()
