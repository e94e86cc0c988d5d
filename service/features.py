"""The prediction core's speed paths: four-artifact features and column checks.

Everything here gives the result the plain pandas/scikit-learn code would, bit for
bit, only faster on the small frames a single request brings (pandas' label
selection and scikit-learn's input checks cost more than a linear model's
arithmetic on one row). `service/data.py` calls these; change that file, not this
one, to prepare data differently.
"""

import functools
import warnings
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.preprocessing import StandardScaler

from service.artifacts import Bundle
from service.errors import InvalidData
from service.frames import is_number_dtype, labels_of

EXAMPLE_VALUES = 3
SMALL_FRAME_ROWS = 4096
FEW_ROWS = 64  # up to here, a frame with text costs little to turn into objects
MASKED_VALUES = 4096  # up to here, a finite check's mask costs less than setting up a sum


def numeric_features(frame: pd.DataFrame, bundle: Bundle) -> np.ndarray:
    """The four-artifact preparation: the bundle's columns in model order as float64,
    missing values filled with the bundle's means, then its scaler. The caller has
    checked that the columns are there (`require_columns`). The matrix is this call's
    own, so filling and scaling work in place: a batch of 65,536 rows is 15 MB, and
    each pass or new array over it costs more than the model."""
    features = _feature_matrix(frame, bundle.columns)
    missing = np.isnan(features)
    if missing.any():
        means = np.array([bundle.mean[column] for column in bundle.columns], dtype=np.float64)
        np.copyto(features, means, where=missing)
    if not _all_finite(features):
        _reject_infinities(features, bundle.columns, filled=missing)
    if bundle.scaler is None:
        return features
    scaled = _scale(bundle.scaler, features, in_place=True)
    if not _all_finite(scaled):
        _reject_overflow(scaled, bundle.columns)
    return scaled


def _all_finite(matrix: Any) -> bool:
    """True only when every value is finite. Past MASKED_VALUES, from the sum (an infinity
    or NaN makes it one too): one pass and no mask; a sum that overflows says False, and
    the exact check decides."""
    values = np.asarray(matrix)
    if values.size <= MASKED_VALUES:
        return bool(np.isfinite(values).all())
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.add.reduce(values, axis=None)))


def _scale(scaler: Any, features: np.ndarray, in_place: bool = False) -> np.ndarray:
    """The scaler's transform. A plain StandardScaler's is two array operations, done
    here as sklearn does them (same result, bit for bit): its input checks cost
    ~70 us, more than the arithmetic, on every single-row request. `in_place`: into
    `features`, which the caller owns."""
    with np.errstate(over="ignore", invalid="ignore"):
        if _is_plain_standard_scaler(scaler, features.shape[1]):
            scaled = features if in_place else features.copy()
            if scaler.with_mean:
                np.subtract(scaled, scaler.mean_, out=scaled)
            if scaler.with_std:
                np.divide(scaled, scaler.scale_, out=scaled)
            return scaled
        with warnings.catch_warnings(), sklearn.config_context(assume_finite=True):
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            return scaler.transform(features)


def _is_plain_standard_scaler(scaler: Any, width: int) -> bool:
    """Exactly StandardScaler, fitted on this many features, returning arrays."""
    return (
        type(scaler) is StandardScaler
        and getattr(scaler, "n_features_in_", None) == width
        and getattr(scaler, "_sklearn_output_config", {}).get("transform", "default") == "default"
    )


def _feature_matrix(frame: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """The columns as one float64 matrix, always a new array (the caller writes to it);
    small all-numeric frames take a fast path (pandas' label selection costs more than
    the model on a single row)."""
    rows = len(frame)
    if rows <= FEW_ROWS:  # numbers only give a numeric matrix: cheaper than .dtypes
        common = frame.to_numpy()
        if common.dtype.kind in "biuf":
            positions = _positions(labels_of(frame.columns), columns)
            return common.astype(np.float64, copy=False)[:, positions]
    elif rows <= SMALL_FRAME_ROWS and all(is_number_dtype(t) for t in frame.dtypes):
        positions = _positions(labels_of(frame.columns), columns)
        return frame.to_numpy(dtype=np.float64, na_value=np.nan)[:, positions]
    selected = frame[list(columns)]
    if all(is_number_dtype(dtype) for dtype in selected.dtypes):
        return np.array(selected.to_numpy(dtype=np.float64, na_value=np.nan), order="C")
    return np.column_stack([_numeric(selected[column], column) for column in columns])


@functools.lru_cache(maxsize=256)
def _positions(present: tuple[str, ...], wanted: tuple[str, ...]) -> np.ndarray:
    index = {name: position for position, name in enumerate(present)}
    return np.array([index[name] for name in wanted], dtype=np.intp)


def _numeric(column: pd.Series, name: str) -> np.ndarray:
    """The column as float64; non-numeric values are an error naming the column."""
    if pd.api.types.is_bool_dtype(column.dtype) or pd.api.types.is_numeric_dtype(column.dtype):
        try:
            return column.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            pass
    try:
        converted = pd.to_numeric(column, errors="coerce")
    except (TypeError, ValueError):
        converted = pd.Series(np.nan, index=column.index)
    bad = converted.isna() & column.notna() & ~column.map(_is_blank)
    if bad.any():
        examples = ", ".join(repr(v) for v in column[bad].head(EXAMPLE_VALUES).tolist())
        raise InvalidData(
            f"column {name!r} must be numeric but holds {examples}: send numbers "
            "(or leave the value empty to use the training mean)"
        )
    return converted.to_numpy(dtype=np.float64, na_value=np.nan)


def _is_blank(value: object) -> bool:
    return isinstance(value, str) and not value.strip()


def _reject_infinities(features: np.ndarray, columns: tuple[str, ...], filled: np.ndarray) -> None:
    """Infinities the request sent (not those of a filled-in mean: see _reject_overflow)."""
    infinite = np.isinf(features) & ~filled
    if infinite.any():
        names = [columns[i] for i in np.flatnonzero(infinite.any(axis=0))]
        raise InvalidData(
            f"columns {', '.join(names)} hold infinite values: send finite numbers "
            "(or leave the value empty to use the training mean)"
        )


def _reject_overflow(scaled: np.ndarray, columns: tuple[str, ...]) -> None:
    """A finite value can still overflow float64 once the scaler divides it by a small spread."""
    overflowing = ~np.isfinite(np.asarray(scaled, dtype=np.float64))
    if overflowing.any():
        names = [columns[i] for i in np.flatnonzero(overflowing.any(axis=0))]
        raise InvalidData(
            f"columns {', '.join(names)} hold values too large for the model (they overflow "
            "once scaled): send values of the size the model was trained on"
        )


_passed: tuple[Any, Any] = (None, None)


def require_columns(frame: pd.DataFrame, columns: tuple[str, ...] | list[str]) -> None:
    """Raise InvalidData listing every required column the input lacks. An Index cannot
    change, and the decoders share one per column list: the last one that passed is
    not checked again (15 us of a one-row request)."""
    global _passed
    if _passed[0] is frame.columns and _passed[1] is columns:
        return
    _check_columns(frame, columns)
    _passed = (frame.columns, columns)


def _check_columns(frame: pd.DataFrame, columns: tuple[str, ...] | list[str]) -> None:
    present = set(frame.columns.tolist())
    missing = [column for column in columns if column not in present]
    if missing:
        shown = ", ".join(missing[:20]) + (
            f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        )
        raise InvalidData(f"missing columns: {shown}. Every row needs these columns.")
    if not frame.columns.is_unique:
        wanted = set(columns)
        repeated = sorted(
            {str(c) for c in frame.columns[frame.columns.duplicated()] if c in wanted}
        )
        if repeated:
            raise InvalidData(
                f"duplicate columns: {', '.join(repeated)}. Send each column once, so it is "
                "clear which values the model should use."
            )
