"""Fixtures every suite shares: the example model bundle and sample rows."""

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    """Import scripts/<name>.py as a module (scripts/ is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def train_example():
    return load_script("train_example")


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory, train_example) -> Path:
    """The example model's bundle (version 1) in a folder."""
    out = tmp_path_factory.mktemp("bundle") / "example" / "1"
    train_example.main(["--out", str(out), "--version", "1"])
    return out


@pytest.fixture(scope="session")
def bundle(bundle_dir):
    from service.artifacts import load_bundle

    return load_bundle(str(bundle_dir))


@pytest.fixture(scope="session")
def sample_frame(train_example) -> pd.DataFrame:
    """200 rows with ids, a few missing values and shuffled column order."""
    return train_example.sample_rows(200)
