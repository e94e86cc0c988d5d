import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.preprocessing import StandardScaler

from service import features
from service.artifacts import Bundle
from service.errors import InvalidData

_VALUES = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(2, 30), st.integers(1, 6)), elements=_VALUES),
    st.booleans(),
    st.booleans(),
)
def test_standard_scaling_equals_sklearn_bit_for_bit(matrix, with_mean, with_std):
    scaler = StandardScaler(with_mean=with_mean, with_std=with_std).fit(matrix)
    rows = matrix[: max(1, len(matrix) // 2)]
    assert features._is_plain_standard_scaler(scaler, matrix.shape[1])
    np.testing.assert_array_equal(features._scale(scaler, rows), scaler.transform(rows))


def test_other_scalers_and_configurations_use_their_own_transform():
    class Shifted(StandardScaler):
        def transform(self, rows, copy=None):
            return super().transform(rows, copy) + 1

    matrix = np.arange(12, dtype=np.float64).reshape(4, 3)
    shifted = Shifted().fit(matrix)
    assert not features._is_plain_standard_scaler(shifted, 3)
    np.testing.assert_array_equal(features._scale(shifted, matrix), shifted.transform(matrix))
    pandas_out = StandardScaler().set_output(transform="pandas").fit(matrix)
    assert not features._is_plain_standard_scaler(pandas_out, 3)
    assert not features._is_plain_standard_scaler(StandardScaler().fit(matrix), 4)


def test_scaling_never_warns():
    scaler = StandardScaler().fit(np.array([[0.0, 1.0], [1e-3, 2.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled = features._scale(scaler, np.array([[1e308, 1.0]]))
    assert not np.isfinite(scaled).all()


@pytest.mark.parametrize("width", [1, 5])
def test_a_scaler_fitted_on_other_columns_keeps_sklearns_error(width):
    scaler = StandardScaler().fit(np.ones((3, 3)))
    with pytest.raises(ValueError):
        features._scale(scaler, np.ones((1, width)))


def test_prepare_data_four_artifacts_fills_means_and_scales(bundle, sample_frame):
    from service.data import prepare_data

    rows = sample_frame.head(20)
    by_hand = rows[list(bundle.columns)].fillna(bundle.mean).to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(prepare_data(rows, bundle), bundle.scaler.transform(by_hand))


def test_prepare_data_pipeline_gives_the_schema_columns_in_order(tmp_path):
    from service.artifacts import load_bundle
    from service.data import prepare_data
    from tests.model_kinds import kind_rows, write_kind_bundle

    bundle = load_bundle(str(write_kind_bundle("mixed", tmp_path / "mixed")))
    rows = kind_rows("mixed", 5)
    prepared = prepare_data(rows[rows.columns[::-1]].assign(extra=1), bundle)
    assert tuple(prepared.columns) == bundle.input_columns
    assert prepared["signup"].dtype == np.dtype("datetime64[us]")


_KINDS = {
    "float": lambda n: np.linspace(-1.5, 2.5, n),
    "nan": lambda n: np.where(np.arange(n) % 2 == 0, np.nan, 1.25),
    "int": lambda n: np.arange(n, dtype=np.int64) - 3,
    "uint": lambda n: np.full(n, 2**63 + 11, dtype=np.uint64),
    "bool": lambda n: np.arange(n) % 3 == 0,
    "Int64": lambda n: pd.array([None, *range(n - 1)], dtype="Int64"),
    "Float64": lambda n: pd.array([0.5] * (n - 1) + [None], dtype="Float64"),
    "text": lambda n: pd.array(["2.5"] * n, dtype="str"),
}


@pytest.mark.parametrize("rows", [1, features.FEW_ROWS, features.FEW_ROWS + 1, 5000])
@pytest.mark.parametrize(
    "kinds",
    [
        ("float", "int"),
        ("float", "nan", "bool"),
        ("int", "uint"),
        ("Int64", "float"),
        ("Float64", "int"),
        ("text", "float"),
        ("bool",),
        ("int", "bool"),
    ],
)
def test_the_feature_matrix_is_pandas_numbers_whatever_the_dtypes(rows, kinds):
    """Every path to the matrix (few rows, small all-numeric, per column) gives what
    pandas' own numeric conversion gives, column by column, in the asked order."""
    frame = pd.DataFrame({f"{kind}{i}": _KINDS[kind](rows) for i, kind in enumerate(kinds)})
    frame.insert(0, "id", np.arange(rows))
    wanted = tuple(reversed(frame.columns[1:].tolist()))
    expected = np.column_stack(
        [pd.to_numeric(frame[c]).to_numpy(dtype=np.float64, na_value=np.nan) for c in wanted]
    )
    got = features._feature_matrix(frame, wanted)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)


def _four_artifacts(matrix: np.ndarray, means: np.ndarray, scaler: object) -> Bundle:
    columns = tuple(f"c{i}" for i in range(matrix.shape[1]))
    return Bundle(
        name="m",
        version="1",
        model=None,
        scaler=scaler,
        mean=dict(zip(columns, means.tolist(), strict=True)),
        columns=columns,
        id_column="id",
        output_column="p",
        etag="e",
    )


def _by_hand(frame: pd.DataFrame, bundle: Bundle) -> np.ndarray:
    """The preparation as plain pandas and scikit-learn write it."""
    filled = frame[list(bundle.columns)].astype(np.float64).fillna(dict(bundle.mean))
    matrix = filled.to_numpy(dtype=np.float64)
    return matrix if bundle.scaler is None else bundle.scaler.transform(matrix)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([1, 2, features.FEW_ROWS + 1, features.SMALL_FRAME_ROWS + 1]),
    st.integers(1, 5),
    st.floats(0, 0.5),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_prepared_features_equal_pandas_and_sklearn_bit_for_bit(rows, width, holes, scaled, seed):
    generator = np.random.default_rng(seed)
    matrix = generator.normal(0, 1e3, (rows, width))
    matrix[generator.random((rows, width)) < holes] = np.nan
    frame = pd.DataFrame(matrix, columns=[f"c{i}" for i in range(width)])
    frame.insert(0, "id", np.arange(rows))
    before = frame.copy()
    fitted = StandardScaler().fit(generator.normal(5, 2, (10, width))) if scaled else None
    bundle = _four_artifacts(matrix, generator.normal(0, 1, width), fitted)
    np.testing.assert_array_equal(features.numeric_features(frame, bundle), _by_hand(frame, bundle))
    pd.testing.assert_frame_equal(frame, before)  # the request's frame is never written


@pytest.mark.parametrize("rows", [1, features.SMALL_FRAME_ROWS + 1])
def test_an_infinity_sent_is_named_and_an_overflow_is_told_apart(rows):
    matrix = np.ones((rows, 3))
    bundle = _four_artifacts(
        matrix, np.zeros(3), StandardScaler().fit(np.array([[0.0] * 3, [1e-10] * 3]))
    )
    frame = pd.DataFrame(matrix, columns=["c0", "c1", "c2"])
    infinite = frame.assign(c1=np.inf)
    with pytest.raises(InvalidData, match=r"columns c1 hold infinite values"):
        features.numeric_features(infinite, bundle)
    huge = frame.assign(c2=1e300)
    with pytest.raises(InvalidData, match=r"columns c2 hold values too large"):
        features.numeric_features(huge, bundle)
    sums_past_the_largest_float = pd.DataFrame(np.full((rows, 3), 1e308), columns=frame.columns)
    plain = _four_artifacts(matrix, np.zeros(3), None)
    np.testing.assert_array_equal(
        features.numeric_features(sums_past_the_largest_float, plain), np.full((rows, 3), 1e308)
    )


def test_a_missing_value_filled_with_an_infinite_mean_is_an_overflow_not_an_infinity_sent():
    matrix = np.array([[1.0, np.nan]])
    bundle = _four_artifacts(matrix, np.array([0.0, np.inf]), StandardScaler().fit(np.eye(2)))
    with pytest.raises(InvalidData, match=r"columns c1 hold values too large"):
        features.numeric_features(pd.DataFrame(matrix, columns=["c0", "c1"]), bundle)
