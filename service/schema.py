"""The input schema of a pipeline bundle: what each column must hold, checked before the model.

The manifest's `input_schema` is a list, in the estimator's input order, of
`{"name": ..., "type": ...}` with type one of `number`, `integer`, `boolean`,
`string`, `category` (both with `"categories"`: the values seen in training) and
`datetime` (with `"unit"`, the resolution it was trained with). `conform` turns
the request's columns into exactly those dtypes, so the pipeline sees what it was
fitted on; a value that cannot be read as its type is an `InvalidData` naming the
column and the value. Missing values stay missing: the pipeline's imputer decides.
A category never seen in training is passed on: the encoder's `handle_unknown`
decides, not us.
"""

import datetime
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from service.errors import InvalidData, ManifestError
from service.frames import column_index, frame_of

TYPES = ("number", "integer", "boolean", "string", "category", "datetime")
EXAMPLE_VALUES = 3
SMALL_ROWS = 64
_ISO_DATE = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"
)
_TRUE = frozenset({"true", "1", "yes", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "f", "n"})


@dataclass(frozen=True)
class Field:
    """One input column: its name, type and (string/category) training categories."""

    name: str
    type: str
    categories: tuple[Any, ...] = ()
    unit: str = "ns"

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.type in ("string", "category"):
            entry["categories"] = list(self.categories)
        if self.type == "datetime":
            entry["unit"] = self.unit
        return entry


def parse_schema(value: Any, uri: str) -> tuple[Field, ...]:
    """The manifest's `input_schema`, checked so a mistake names the exact entry."""
    if not isinstance(value, list) or not value:
        raise ManifestError(f"manifest at {uri}: input_schema must be a non-empty list")
    fields = []
    for position, entry in enumerate(value):
        where = f"manifest at {uri}: input_schema[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ManifestError(f"{where} needs a 'name' (string) and a 'type'")
        if entry.get("type") not in TYPES:
            raise ManifestError(f"{where} has type {entry.get('type')!r}; use one of {TYPES}")
        categories = entry.get("categories") or []
        if not isinstance(categories, list):
            raise ManifestError(f"{where}: 'categories' must be a list")
        unit = entry.get("unit", "ns")
        if unit not in ("s", "ms", "us", "ns"):
            raise ManifestError(f"{where}: 'unit' must be s, ms, us or ns")
        fields.append(Field(entry["name"], entry["type"], tuple(categories), unit))
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ManifestError(f"manifest at {uri}: input_schema names a column twice")
    return tuple(fields)


def conform(frame: pd.DataFrame, fields: Sequence[Field]) -> pd.DataFrame:
    """The schema's columns, in schema order, each as its type's dtype (a new frame)."""
    names = column_index(tuple(f.name for f in fields))
    arrays = [CONVERTERS[f.type](frame[f.name], f) for f in fields]
    built = frame_of(names, arrays, frame.index)
    if built is not None:
        return built
    return pd.DataFrame(dict(zip(names, arrays, strict=True)), index=frame.index, copy=False)


def _refuse(column: pd.Series, bad: Any, field: Field, wanted: str) -> None:
    if bad.any():
        examples = ", ".join(repr(v) for v in column[bad].head(EXAMPLE_VALUES).tolist())
        raise InvalidData(
            f"column {field.name!r} must be {wanted} but holds {examples}: send {wanted} values "
            "(or leave the value empty when it is missing)"
        )


def _numbers(column: pd.Series, field: Field) -> np.ndarray:
    """float64 values; text that is a number is read as one, other text is refused."""
    kind = column.dtype.kind if isinstance(column.dtype, np.dtype) else ""
    if kind in "biuf" and kind:
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        converted = pd.to_numeric(column.map(_blank_as_none), errors="coerce")
        _refuse(
            column, converted.isna() & column.notna() & column.map(_not_blank), field, "numeric"
        )
        values = converted.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(values)
    _refuse(column, infinite, field, "finite numeric")
    return values


def _number(column: pd.Series, field: Field) -> np.ndarray:
    return _numbers(column, field)


def _integer(column: pd.Series, field: Field) -> np.ndarray:
    """int64 when every value is there, else float64 with NaN for the missing ones."""
    if column.dtype == np.int64:
        return column.to_numpy()
    values = _numbers(column, field)
    _refuse(column, np.isfinite(values) & (values != np.round(values)), field, "whole-number")
    if np.isnan(values).any():
        return values
    return values.astype(np.int64)


def _boolean(column: pd.Series, field: Field) -> np.ndarray:
    """bool when every value is there, else float64 (1.0, 0.0, NaN) as scikit-learn reads it."""
    if column.dtype == np.bool_:
        return column.to_numpy()
    values = column.map(_truth)
    _refuse(column, values.isna() & column.notna() & column.map(_not_blank), field, "boolean")
    if values.isna().any():
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    return values.to_numpy(dtype=np.bool_)


def _truth(value: Any) -> Any:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        return True if text in _TRUE else False if text in _FALSE else None
    return None


def _string(column: pd.Series, field: Field) -> Any:
    """object values: str, or NaN where missing (an empty text is missing: CSV cannot tell
    them apart); numbers and booleans become their text."""
    if isinstance(column.dtype, pd.StringDtype):
        if len(column) <= SMALL_ROWS and "" not in list(column.array):
            return column.array
        blank = column.eq("").to_numpy(dtype=bool, na_value=False)
        return (column.mask(blank) if blank.any() else column).array
    values = column.to_numpy(dtype=object, na_value=np.nan)
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        missing = pd.isna(values) | (values == "")
        if missing.any():
            values = values.copy()
            values[missing] = np.nan
        return values
    _refuse(column, column.map(_is_container).to_numpy(), field, "text")
    missing = pd.isna(column).to_numpy() | (values == "")
    text = np.array([_text(v) for v in values], dtype=object)
    text[missing] = np.nan
    return text


def _text(value: Any) -> Any:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _category(column: pd.Series, field: Field) -> pd.Categorical:
    """pandas' category dtype with the training categories (an unseen value becomes missing,
    which is how HistGradientBoosting's `from_dtype` and LightGBM treat a new category)."""
    strings = all(isinstance(c, str) for c in field.categories)
    values = _string(column, field) if strings else column.to_numpy(dtype=object)
    known = pd.Index(list(field.categories))
    return pd.Categorical.from_codes(known.get_indexer(values), categories=known)


def _datetime(column: pd.Series, field: Field) -> np.ndarray:
    """datetime64 in the training unit; ISO 8601 text is parsed, anything else refused."""
    dtype = np.dtype(f"datetime64[{field.unit}]")
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    if column.dtype.kind == "M":
        return column.to_numpy().astype(dtype)
    if len(column) <= SMALL_ROWS:
        texts = isinstance(column.dtype, pd.StringDtype)
        parsed = _small_datetimes(list(column.array) if texts else column.tolist(), dtype)
        if parsed is not None:
            return parsed
    text = column.map(_blank_as_none)
    parsed = pd.to_datetime(
        text.where(text.map(_is_text), None), errors="coerce", utc=True, format="ISO8601"
    )
    _refuse(column, parsed.isna() & text.notna(), field, "a date/time (ISO 8601)")
    return parsed.dt.tz_localize(None).to_numpy().astype(dtype)


def _small_datetimes(values: list[Any], dtype: np.dtype) -> np.ndarray | None:
    """A few ISO 8601 texts parsed by the standard library (pandas' parser costs ~0.2 ms a
    call); None when any value is not plain ISO text, for pandas to parse or refuse."""
    parsed = []
    try:
        for value in values:
            moment = datetime.datetime.fromisoformat(value)
            if moment.tzinfo is not None:
                moment = moment.astimezone(datetime.UTC).replace(tzinfo=None)
            parsed.append(moment)
    except (TypeError, ValueError):
        return None
    return np.array(parsed, dtype="datetime64[us]").astype(dtype)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_container(value: Any) -> bool:
    return isinstance(value, list | dict | tuple | bytes)


def _not_blank(value: Any) -> bool:
    return not (isinstance(value, str) and not value.strip())


def _blank_as_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


CONVERTERS: Mapping[str, Callable[[pd.Series, Field], Any]] = {
    "number": _number,
    "integer": _integer,
    "boolean": _boolean,
    "string": _string,
    "category": _category,
    "datetime": _datetime,
}


def infer_schema(sample: pd.DataFrame, names: Sequence[str]) -> tuple[Field, ...]:
    """The schema of `names` from training rows: each column's type from its dtype."""
    missing = [name for name in names if name not in sample.columns]
    if missing:
        raise ValueError(f"the sample rows lack the model's input columns {', '.join(missing)}")
    return tuple(_infer(sample[name], name) for name in names)


def _infer(column: pd.Series, name: str) -> Field:
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return Field(name, "category", tuple(_plain(c) for c in dtype.categories))
    if pd.api.types.is_bool_dtype(dtype):
        return Field(name, "boolean")
    if pd.api.types.is_integer_dtype(dtype):
        return Field(name, "integer")
    if pd.api.types.is_float_dtype(dtype):
        return Field(name, "number")
    if isinstance(dtype, pd.DatetimeTZDtype) or dtype.kind == "M":
        unit = np.datetime_data(column.dt.tz_localize(None).to_numpy().dtype)[0]
        return Field(name, "datetime", unit=unit)
    values = column.dropna()
    if values.map(lambda v: isinstance(v, bool | np.bool_)).all() and len(values):
        return Field(name, "boolean")
    if len(values) and values.map(lambda v: isinstance(v, str) and bool(_ISO_DATE.match(v))).all():
        parsed = pd.to_datetime(values, format="ISO8601", utc=True)
        return Field(
            name, "datetime", unit=np.datetime_data(parsed.dt.tz_localize(None).to_numpy().dtype)[0]
        )
    return Field(name, "string", tuple(sorted({str(v) for v in values})))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
