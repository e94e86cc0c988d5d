"""compose/docker-compose.yml: the local cloud from the project's Dockerfile, loopback ports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def published(service: dict) -> list[str]:
    return [str(port) for port in service.get("ports", [])]


def test_services(compose):
    assert set(compose["services"]) == {"localcloud", "localstack"}


def test_the_local_cloud_builds_from_the_projects_dockerfile(compose):
    build = compose["services"]["localcloud"]["build"]
    assert build["target"] == "localcloud"
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert context == ROOT
    dockerfile = (context / build.get("dockerfile", "Dockerfile")).read_text()
    assert re.search(r"^FROM \S+ AS localcloud$", dockerfile, re.MULTILINE)


def test_the_local_cloud_is_published_on_loopback(compose):
    service = compose["services"]["localcloud"]
    assert published(service) == ["127.0.0.1:4566:4566", "127.0.0.1:8080:8080"]
    assert service["environment"]["LOCALCLOUD_BIND"] == "0.0.0.0"
    assert "profiles" not in service


def test_every_port_is_bound_to_loopback(compose):
    for name, service in compose["services"].items():
        for port in published(service):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_localstack_is_opt_in_and_takes_the_token_from_the_environment(compose):
    service = compose["services"]["localstack"]
    assert service["profiles"] == ["localstack"]
    assert service["image"].startswith("${LOCALSTACK_IMAGE:-localstack/localstack")
    assert service["environment"]["LOCALSTACK_AUTH_TOKEN"] == "${LOCALSTACK_AUTH_TOKEN:-}"
    assert "volumes" not in service, "sharing the Docker socket must stay the user's choice"


def test_no_python_package_is_named_compose():
    assert not (ROOT / "compose" / "__init__.py").exists()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_accepts_the_file():
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    with_profile = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "--profile", "localstack", "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert with_profile.returncode == 0, with_profile.stderr
