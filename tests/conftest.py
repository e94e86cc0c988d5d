"""Fixtures every suite shares (the example model bundle and sample rows), and the rule
that a test skipped on CI is a failure there."""

# ruff: noqa: E402 - the imports below load numpy, after the kernels are chosen
from service.blas import pin_kernels

pin_kernels()  # the kernels the service runs (service.blas)

import importlib.util
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Skips that are legitimate on CI: test id prefix -> why. Everything else that skips when
# CI is set (.ci/run sets CI=true) fails, so a missing tool, a busy port or a deleted file
# cannot turn into a green run. Empty: CI installs every tool the suites need, and
# tests/e2e/test_container.py (CONTAINER_TESTS=1 only) runs in `tox -e container` alone.
CI_ALLOWED_SKIPS: dict[str, str] = {}


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def fail_unexpected_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """On CI, turn the skip this report records into a failure, unless allowed above."""
    if not report.skipped or hasattr(report, "wasxfail") or not on_ci():
        return
    if any(report.nodeid.startswith(prefix) for prefix in CI_ALLOWED_SKIPS):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = (
        f"skipped on CI ({reason}): make it run there, or add it with the reason to "
        "CI_ALLOWED_SKIPS in tests/conftest.py"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    fail_unexpected_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield
    fail_unexpected_skip(report)
    return report


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
