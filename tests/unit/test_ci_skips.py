"""tests/conftest.py's rule: with CI set, a skip fails unless CI_ALLOWED_SKIPS names it;
an expected failure (xfail) is not a skip."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
SUITE = """
import pytest

pytestmark = pytest.mark.filterwarnings("ignore")


def test_passes():
    pass


def test_skips():
    pytest.skip("port 8080 is in use")


@pytest.mark.skipif(True, reason="tool missing")
def test_skipif():
    pass


@pytest.mark.xfail(strict=True, reason="known")
def test_xfails():
    assert False
"""
MODULE_SKIP = """
import pytest

pytest.skip("not written yet", allow_module_level=True)
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_suite=SUITE, test_module_skip=MODULE_SKIP)
    return pytester


def test_on_ci_every_skip_fails_and_xfail_stays_expected(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-p", "no:cacheprovider", "--continue-on-collection-errors")
    # a skip in setup (skipif) fails as an error, one in the call as a failure
    result.assert_outcomes(passed=1, failed=1, xfailed=1, errors=2)
    result.stdout.fnmatch_lines(["*skipped on CI (port 8080 is in use)*CI_ALLOWED_SKIPS*"])
    result.stdout.fnmatch_lines(["*skipped on CI (tool missing)*"])
    result.stdout.fnmatch_lines(["*skipped on CI (not written yet)*"])


def test_off_ci_a_skip_stays_a_skip(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest("-p", "no:cacheprovider", "--continue-on-collection-errors")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_an_allowed_skip_stays_a_skip_on_ci(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    allowed = CONFTEST.read_text().replace(
        "CI_ALLOWED_SKIPS: dict[str, str] = {}",
        'CI_ALLOWED_SKIPS: dict[str, str] = {"test_suite.py::test_skipif": "why"}',
    )
    suite.makeconftest(allowed)
    result = suite.runpytest("-p", "no:cacheprovider", "--continue-on-collection-errors")
    result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1, errors=1)
