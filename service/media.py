"""The media types the service speaks, defined once and imported wherever they are used.

MEDIA_TYPES is the order in which `/invocations` offers them: the first answers
`Accept: */*`.
"""

JSON = "application/json"
PARQUET = "application/vnd.apache.parquet"
X_PARQUET = "application/x-parquet"
CSV = "text/csv"
JSONLINES = "application/jsonlines"
NDJSON = "application/x-ndjson"
MEDIA_TYPES = (JSON, PARQUET, X_PARQUET, CSV, JSONLINES, NDJSON)

PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
TEXT = "text/plain; charset=utf-8"


def media_type(content_type: str | None) -> str:
    """`text/csv; charset=utf-8` -> `text/csv`."""
    return (content_type or "").split(";", 1)[0].strip().lower()
