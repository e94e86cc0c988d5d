"""Fixtures for the end-to-end suite: the whole local cloud, started as a user starts it.

``local_cloud`` is shared by the tests of a module (starting it takes about 15 s); a test
that must own its cloud (stopping it, for one) uses ``start_local_cloud``. Both stop the
cloud at the end and fail when any process it started is still running.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.artifacts import Bundle
from tests.e2e.batch_helpers import load_served_bundle
from tests.e2e.cloud_process import LocalCloudProcess


def _start(
    work_dir: Path, parameters: dict[str, str] | None = None, **options: Any
) -> LocalCloudProcess:
    cloud = LocalCloudProcess(work_dir, parameters, **options)
    try:
        cloud.start()
        cloud.wait_ready()
    except BaseException:
        cloud.kill_everything()
        raise
    return cloud


def _stop(cloud: LocalCloudProcess) -> None:
    """SIGTERM unless a test stopped it already; then no process of it may remain."""
    try:
        if not cloud.exited():
            cloud.terminate()
        code = cloud.wait_exit()
        cloud.assert_nothing_left()
        assert code == 0, f"localcloud up exited with {code}:\n{cloud.log_tail()}"
    finally:
        cloud.kill_everything()


@pytest.fixture(scope="module")
def local_cloud(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCloudProcess]:
    """``python -m localcloud up`` on a free AWS port, ready, for every test of a module.

    A module may set ``LOCAL_PARAMETERS`` (name -> value) to change a few values of
    infra/params/local.json for its cloud.
    """
    parameters = getattr(request.module, "LOCAL_PARAMETERS", None)
    cloud = _start(tmp_path_factory.mktemp("localcloud"), parameters)
    try:
        yield cloud
    finally:
        _stop(cloud)


@pytest.fixture
def start_local_cloud(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., LocalCloudProcess]]:
    """Start a cloud of the test's own; whatever the test leaves running is stopped."""
    clouds: list[LocalCloudProcess] = []

    def start(
        parameters: dict[str, str] | None = None,
        work_dir: Path | None = None,
        **options: Any,
    ) -> LocalCloudProcess:
        """``options``: LocalCloudProcess's ``extra_args`` and ``repo_root``; the same
        ``work_dir`` as an earlier cloud starts again from its kept state."""
        folder = work_dir or tmp_path_factory.mktemp("localcloud")
        cloud = _start(folder, parameters, **options)
        clouds.append(cloud)
        return cloud

    try:
        yield start
    finally:
        for cloud in clouds:
            _stop(cloud)


@pytest.fixture(scope="module")
def served_bundle(local_cloud: LocalCloudProcess) -> Bundle:
    """The bundle the stack serves at start-up, loaded in this process for comparison."""
    return load_served_bundle(local_cloud)
