import numpy as np
import pandas as pd
import pytest

from service.errors import InvalidData
from service.model import predict


def reference(bundle, frame):
    """The model called by hand: fill with means, scale, predict_proba."""
    features = frame[list(bundle.columns)].to_numpy(dtype=float)
    means = np.array([bundle.mean[c] for c in bundle.columns])
    features = np.where(np.isnan(features), means, features)
    return bundle.model.predict_proba(bundle.scaler.transform(features))[:, 1]


def test_one_row_out_per_row_in_with_ids(bundle, sample_frame):
    out = predict(bundle, sample_frame)
    assert list(out.columns) == ["id", "activation"]
    assert out["id"].tolist() == sample_frame["id"].tolist()
    np.testing.assert_allclose(out["activation"], reference(bundle, sample_frame), atol=1e-12)


def test_column_order_and_extra_columns_do_not_matter(bundle, sample_frame):
    shuffled = sample_frame[sample_frame.columns[::-1]].assign(comment="ignored", other=1)
    np.testing.assert_allclose(
        predict(bundle, shuffled)["activation"],
        predict(bundle, sample_frame)["activation"],
        rtol=0,
        atol=1e-12,
    )


def test_missing_values_become_the_bundle_means(bundle, sample_frame):
    rows = sample_frame.head(5).copy()
    rows["mean_radius"] = np.nan
    filled = rows.copy()
    filled["mean_radius"] = bundle.mean["mean_radius"]
    np.testing.assert_array_equal(
        predict(bundle, rows)["activation"], predict(bundle, filled)["activation"]
    )


def test_small_and_large_frames_agree(bundle, sample_frame):
    big = pd.concat([sample_frame] * 30, ignore_index=True)  # above the small-frame fast path
    np.testing.assert_allclose(
        predict(bundle, big)["activation"].to_numpy()[: len(sample_frame)],
        predict(bundle, sample_frame)["activation"].to_numpy(),
        rtol=0,
        atol=1e-12,
    )


def test_missing_columns_are_all_listed(bundle, sample_frame):
    with pytest.raises(InvalidData) as caught:
        predict(bundle, sample_frame.drop(columns=["id", "mean_radius", "worst_area"]))
    for name in ("id", "mean_radius", "worst_area"):
        assert name in caught.value.message
    assert caught.value.status == 422


def test_columns_are_checked_again_for_every_other_index(bundle, sample_frame):
    """A frame sharing a passing frame's Index passes; a frame lacking a column, or naming
    one twice, fails whatever passed before it."""
    first = sample_frame.head(2)
    predict(bundle, first)
    predict(bundle, sample_frame.iloc[2:4].set_axis(first.columns, axis=1))
    with pytest.raises(InvalidData, match="missing columns: mean_radius"):
        predict(bundle, first.drop(columns=["mean_radius"]))
    twice = pd.concat([first, first[["mean_radius"]]], axis=1)
    with pytest.raises(InvalidData, match="duplicate columns: mean_radius"):
        predict(bundle, twice)
    predict(bundle, first)


def test_strings_in_numeric_columns_are_named(bundle, sample_frame):
    rows = sample_frame.head(3).astype({"mean_area": object})
    rows.loc[1, "mean_area"] = "lots"
    with pytest.raises(InvalidData, match=r"'mean_area'.*'lots'"):
        predict(bundle, rows)


def test_numeric_strings_and_blanks_are_accepted(bundle, sample_frame):
    rows = sample_frame.head(3).astype({"mean_area": object})
    rows["mean_area"] = [str(v) for v in sample_frame["mean_area"].head(3)]
    rows.loc[2, "mean_area"] = " "
    out = predict(bundle, rows)
    assert out["activation"].notna().all()


def test_infinities_are_rejected(bundle, sample_frame):
    rows = sample_frame.head(3).copy()
    rows.loc[0, "worst_area"] = np.inf
    with pytest.raises(InvalidData, match=r"worst_area.*infinite"):
        predict(bundle, rows)


def test_no_rows_is_invalid(bundle, sample_frame):
    with pytest.raises(InvalidData, match="no rows"):
        predict(bundle, sample_frame.head(0))


def test_an_all_missing_column_uses_the_mean(bundle, sample_frame):
    rows = sample_frame.head(4).copy()
    rows["mean_texture"] = None
    out = predict(bundle, rows)
    assert out["activation"].between(0, 1).all()


def test_regressor_uses_predict(bundle, sample_frame):
    from dataclasses import replace

    from sklearn.linear_model import LinearRegression

    frame = sample_frame.fillna(0)
    model = LinearRegression().fit(
        bundle.scaler.transform(frame[list(bundle.columns)].to_numpy()), np.arange(len(frame))
    )
    out = predict(replace(bundle, model=model), frame)
    assert out["activation"].max() > 1  # a regression, not a probability
