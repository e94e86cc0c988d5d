import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.preprocessing import StandardScaler

from service import features

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
