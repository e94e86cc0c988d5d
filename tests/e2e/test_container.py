"""The image and the compose file on a real Docker engine.

Runs only with CONTAINER_TESTS=1. Uses the engine DOCKER_HOST names when it answers;
otherwise starts a throwaway one with .ci/docker_engine.sh (root, Debian: installs
docker.io, docker-compose and debootstrap when missing, builds python:3.11-slim from Debian
bookworm) and stops it afterwards. With CONTAINER_TESTS=1 an engine that cannot start is a
failure, not a skip. That engine has no bridge network: containers run with --network none
or the host's network, bound to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / ".ci" / "docker_engine.sh"
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
IMAGE = "model-endpoint:container-test"
BUILD_BASE = "model-endpoint-build-base:latest"
REGION = "us-east-1"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(
        os.environ.get("CONTAINER_TESTS") != "1",
        reason="set CONTAINER_TESTS=1 to build and run the image (needs Docker, or root to "
        "start one with .ci/docker_engine.sh)",
    ),
]


def sh(cmd: list[str], env: dict[str, str], timeout: float = 600, **kwargs):
    return subprocess.run(
        cmd,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def must(cmd: list[str], env: dict[str, str], timeout: float = 600):
    result = sh(cmd, env, timeout)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    )
    return result


def wait_http(
    url: str, seconds: float, data: bytes | None = None, headers=None
) -> tuple[int, bytes]:
    last: list[object] = [None]

    def answer() -> tuple[int, bytes] | None:
        request = urllib.request.Request(url, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            last[0] = f"{error.code} {error.read()[:200]!r}"
        except OSError as error:
            last[0] = error
        return None

    return wait_for(answer, seconds, f"{url} to answer 200", 1, lambda: f"last: {last[0]}")


def timed(label: str, timings: dict[str, float], cmd: list[str], env: dict[str, str]) -> None:
    started = time.monotonic()
    must(cmd, env, timeout=3600)
    timings[label] = time.monotonic() - started
    print(f"\n{label}: {timings[label]:.0f} s", file=sys.stderr)


@pytest.fixture(scope="session")
def docker_env():
    """Environment whose DOCKER_HOST answers: the caller's engine, or a throwaway one."""
    env = dict(os.environ)
    if env.get("DOCKER_HOST") and sh(["docker", "version"], env, 60).returncode == 0:
        yield env
        return
    if not all(shutil.which(tool) for tool in ("dockerd", "docker-compose", "debootstrap")):
        install = sh(["bash", str(ENGINE), "install"], env, 900)
        if install.returncode != 0:
            pytest.fail(f"cannot install a Docker engine:\n{install.stderr[-3000:]}")
    workdir = tempfile.mkdtemp(prefix="docker-engine.", dir="/tmp")
    started = sh(["bash", str(ENGINE), "start", workdir], env, 120)
    if started.returncode != 0:
        pytest.fail(f"cannot start a Docker engine:\n{started.stderr[-3000:]}")
    print(f"\n{started.stderr.strip()}", file=sys.stderr)
    env["DOCKER_HOST"] = started.stdout.strip().split("=", 1)[1]
    try:
        yield env
    finally:
        sh(["bash", str(ENGINE), "stop", workdir], env, 1800)


@pytest.fixture(scope="session")
def build_env(docker_env):
    """docker_env plus a BASE_IMAGE that pip can install from (see docker_engine.sh)."""
    env = dict(docker_env)
    if "BASE_IMAGE" not in env:
        for step in ("base-image", "build-base"):
            result = sh(["bash", str(ENGINE), step], env, 900)
            if result.returncode != 0:
                pytest.fail(f"docker_engine.sh {step} failed:\n{result.stderr[-3000:]}")
            print(f"\n{result.stderr.strip()}", file=sys.stderr)
        env["BASE_IMAGE"] = BUILD_BASE
    return env


def buildkit_client(env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A docker client that builds with BuildKit: with vfs, the legacy builder copies the
    whole file system for every instruction (22 min against 1 min on our machine kind)."""
    for client in dict.fromkeys([shutil.which("docker") or "docker", "/usr/bin/docker"]):
        if not Path(client).exists():
            continue
        if sh([client, "buildx", "version"], env, 60).returncode == 0:
            return client, env
        version = sh([client, "version", "--format", "{{.Client.Version}}"], env, 60).stdout
        if version[:2].isdigit() and int(version.split(".")[0]) < 23:
            return client, {**env, "DOCKER_BUILDKIT": "1"}
    print("\nno BuildKit client: the legacy builder is much slower", file=sys.stderr)
    return "docker", env


def build(env: dict[str, str], target: str, tag: str, timings: dict[str, float]) -> None:
    client, build_env = buildkit_client(env)
    cmd = [client, "build", "--network", "host", "--build-arg", f"BASE_IMAGE={env['BASE_IMAGE']}"]
    timed(
        f"docker build --target {target}",
        timings,
        [*cmd, "--target", target, "-t", tag, "."],
        build_env,
    )


@pytest.fixture(scope="session")
def timings():
    measured: dict[str, float] = {}
    yield measured
    print("\ncontainer test timings: " + json.dumps({k: round(v) for k, v in measured.items()}))


@pytest.fixture(scope="session")
def image(build_env, timings):
    build(build_env, "runtime", IMAGE, timings)
    return IMAGE


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """The example model bundle and sample rows, readable by the image's non-root user."""
    folder = tmp_path_factory.mktemp("model")
    os.chmod(folder, 0o755)
    result = subprocess.run(
        [sys.executable, "scripts/train_example.py", "--out", str(folder / "bundle"),
         "--sample", str(folder / "sample.csv"), "--sample-rows", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def inspect(env, name: str) -> dict:
    return json.loads(must(["docker", "image", "inspect", name], env).stdout)[0]


def test_image_runs_the_service_as_a_non_root_user(image, build_env):
    config = inspect(build_env, image)["Config"]
    assert config["Entrypoint"] == ["python", "-m", "service"]
    assert config["Cmd"] == ["serve"]
    assert config["User"] == "app"
    assert {"HOST=0.0.0.0", "PORT=8080"} <= set(config["Env"])
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "8080/tcp" in config["ExposedPorts"]


def test_image_holds_the_service_and_nothing_else(image, build_env):
    probe = "import os, sklearn, pandas, pyarrow, waitress; print(sorted(os.listdir('/app')))"
    result = must(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "python",
            image,
            "-c",
            probe,
        ],
        build_env,
    )
    assert result.stdout.strip() == "['service']"


def test_worker_argument_reaches_the_worker(image, build_env):
    result = sh(
        ["docker", "run", "--rm", "--network", "none", "-e", "MODEL_URI=/m", image, "worker"],
        build_env,
        120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "JOB_QUEUE_URL" in result.stderr


def test_serve_answers_ping_and_predictions(image, build_env, bundle):
    port = free_port()
    name = f"model-endpoint-serve-{port}"
    must(
        ["docker", "run", "-d", "--name", name, "--network", "host",
         "-e", "HOST=127.0.0.1", "-e", f"PORT={port}", "-e", "WORKERS=1",
         "-e", "MODEL_URI=/model", "-v", f"{bundle / 'bundle'}:/model:ro", image, "serve"],
        build_env,
    )  # fmt: skip
    try:
        status, _ = wait_http(f"http://127.0.0.1:{port}/ping", 120)
        assert status == 200
        rows = (bundle / "sample.csv").read_bytes()
        status, body = wait_http(
            f"http://127.0.0.1:{port}/invocations", 30, rows, {"Content-Type": "text/csv"}
        )
        predictions = json.loads(body)["predictions"]
        assert len(predictions) == 5 and {"id", "activation"} <= set(predictions[0])
        check = inspect(build_env, image)["Config"]["Healthcheck"]["Test"][1:]
        assert (
            sh(["docker", "exec", "-e", f"PORT={port}", name, *check], build_env, 60).returncode
            == 0
        )
        stopped = time.monotonic()
        must(["docker", "stop", "-t", "30", name], build_env, 60)
        assert time.monotonic() - stopped < 25, "SIGTERM did not stop the server promptly"
    finally:
        logs = sh(["docker", "logs", name], build_env, 60)
        sh(["docker", "rm", "-f", name], build_env, 60)
        print(logs.stdout[-2000:], logs.stderr[-2000:])


def host_network_compose(env: dict[str, str], folder: Path, port: int, endpoint_port: int) -> Path:
    """The project's compose file as compose resolves it, moved to the host's network (the
    test engine has no bridge, and compose refuses published ports there), listening on
    loopback and on free ports."""
    resolved = must(["docker-compose", "-f", str(COMPOSE_FILE), "config"], env, 120).stdout
    document = yaml.safe_load(resolved)
    service = document["services"]["localcloud"]
    service.pop("ports")
    service["network_mode"] = "host"
    service["environment"]["LOCALCLOUD_BIND"] = "127.0.0.1"
    service["command"] = ["up", "--port", str(port), "--endpoint-port", str(endpoint_port)]
    document["services"] = {"localcloud": service}
    path = folder / "docker-compose.yml"
    path.write_text(yaml.safe_dump(document))
    return path


def wait_report(s3, bucket: str, key: str, seconds: float) -> dict:
    def report() -> dict | None:
        try:
            return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except (ClientError, BotoCoreError):
            return None

    return wait_for(report, seconds, f"the report s3://{bucket}/{key}", 2)


def stack_outputs(cloudformation, name: str) -> dict[str, str] | None:
    """The stack's outputs once it is created; None while the cloud starts or deploys."""
    try:
        stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    except (ClientError, BotoCoreError, ResponseParserError):
        return None
    if stack["StackStatus"] != "CREATE_COMPLETE" or not stack.get("Outputs"):
        return None
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def test_compose_runs_the_local_cloud(build_env, image, bundle, timings, tmp_path):
    build(build_env, "localcloud", "model-endpoint-localcloud:latest", timings)
    port = free_port()
    compose_file = host_network_compose(build_env, tmp_path, port, free_port())
    compose = ["docker-compose", "-f", str(compose_file), "-p", f"metest{port}"]
    must([*compose, "up", "-d", "--no-build", "localcloud"], build_env, 300)
    try:
        session = boto3.Session(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name=REGION,
        )
        endpoint = f"http://127.0.0.1:{port}"
        cloudformation = session.client("cloudformation", endpoint_url=endpoint)
        outputs = wait_for(
            lambda: stack_outputs(cloudformation, "model-endpoint-local"),
            300,
            "the local cloud to deploy its stack",
            2,
        )
        status, _ = wait_http(outputs["EndpointUrl"].rstrip("/") + "/ping", 180)
        assert status == 200
        s3 = session.client("s3", endpoint_url=endpoint)
        s3.put_object(Bucket=outputs["InputBucketName"], Key="container/sample.csv",
                      Body=(bundle / "sample.csv").read_bytes())  # fmt: skip
        report = wait_report(
            s3, outputs["OutputBucketName"], "predictions/_reports/container/sample.csv.json", 300
        )
        assert report["status"] == "succeeded", report
        assert report["rows"] == 5
    finally:
        logs = sh([*compose, "logs", "--tail", "200"], build_env, 120)
        print(logs.stdout[-6000:])
        sh([*compose, "down", "-t", "30"], build_env, 300)
