"""The conformance suite: the endpoint and the local cloud driven by the clients people
already have, with the exact bytes those clients send (each shape cites the file of the
client it was taken from).

One endpoint (`python -m service serve`, 2 processes, MAX_REQUEST_MB=1) serves the
example bundle for the whole suite; `expected` is what `predict` says in-process for
the same rows, which every answer is compared with.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.artifacts import Bundle
from service.model import predict
from tests.endpoint_fixtures import EndpointServer

LIMIT_MB = 1


@pytest.fixture(scope="session")
def endpoint(
    tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path
) -> Iterator[EndpointServer]:
    log = tmp_path_factory.mktemp("conformance") / "server.log"
    server = EndpointServer(log, model_uri=bundle_dir, max_request_mb=LIMIT_MB)
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture(scope="session")
def rows(sample_frame: pd.DataFrame) -> pd.DataFrame:
    """40 rows with ids, a few missing values, columns in a shuffled order."""
    return sample_frame.head(40).reset_index(drop=True)


@pytest.fixture(scope="session")
def features(rows: pd.DataFrame, bundle: Bundle) -> pd.DataFrame:
    """The same rows as positional clients hold them: the features in input order."""
    return rows[list(bundle.input_columns)]


@pytest.fixture(scope="session")
def expected(bundle: Bundle, rows: pd.DataFrame) -> np.ndarray:
    return predict(bundle, rows)[bundle.output_column].to_numpy()
