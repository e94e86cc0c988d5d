import warnings

import numpy as np
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
