"""``python -m localcloud up``: parse options, run the local cloud until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

from localcloud.cloud import LocalCloud
from localcloud.console import Console
from localcloud.deploy import DeployedStack, DeployError
from localcloud.procs import DUMMY_KEY
from localcloud.server import ServerStartError
from localcloud.settings import LOOPBACK, LocalCloudSettings
from localcloud.waiting import wait_until

NAME = "localcloud"
READY = "ready"
ENDPOINT_WAIT_SECONDS = 90.0


def build_parser() -> argparse.ArgumentParser:
    defaults = LocalCloudSettings()
    parser = argparse.ArgumentParser(
        prog="python -m localcloud",
        description="AWS on this machine: moto, the project's stack, a Lambda runtime and an "
        "ECS agent, on 127.0.0.1 only.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="deploy the stack and run until Ctrl-C or SIGTERM")
    demo = commands.add_parser(
        "demo", help="up, send sample rows through the batch transform and the endpoint, stop"
    )
    for command in (up, demo):
        _add_options(command, defaults)
        command.add_argument(
            "--model", help="a bundle folder or s3:// prefix to serve from the start"
        )
        command.add_argument(
            "--fresh", action="store_true", help="start with empty state (no kept objects)"
        )
    up.add_argument(
        "--watch",
        action="store_true",
        help="reload the endpoint and Lambda environments when service/, lambda/ or infra/ change",
    )
    redeploy = commands.add_parser(
        "deploy", help="re-apply the template to the running local cloud (a stack update)"
    )
    redeploy.add_argument("--port", type=int, default=defaults.port, help="AWS API port (4566)")
    redeploy.add_argument("--stack-name", default=defaults.stack_name)
    redeploy.add_argument("--template", type=Path, default=defaults.template)
    redeploy.add_argument("--params", type=Path, default=None, help="parameter file")
    return parser


def _add_options(command: argparse.ArgumentParser, defaults: LocalCloudSettings) -> None:
    command.add_argument("--port", type=int, default=defaults.port, help="AWS API port (4566)")
    command.add_argument(
        "--bind",
        default=os.environ.get("LOCALCLOUD_BIND", defaults.bind),
        help="listen address (127.0.0.1; env LOCALCLOUD_BIND; 0.0.0.0 only inside a container)",
    )
    command.add_argument(
        "--endpoint-port", type=int, default=None, help="host port of the endpoint (8080)"
    )
    command.add_argument("--stack-name", default=defaults.stack_name)
    command.add_argument("--template", type=Path, default=defaults.template)
    command.add_argument(
        "--params",
        type=Path,
        default=None,
        help="parameter file (default infra/params/local.json, or the values kept from the "
        "last run)",
    )
    command.add_argument(
        "--schedule-scale",
        type=float,
        default=defaults.schedule_scale,
        help="multiply rate(...) schedules (0.1: every minute becomes every 6 s)",
    )
    command.add_argument(
        "--retry-scale",
        type=float,
        default=1.0,
        help="multiply the Lambda retry delays of asynchronous invocations (60 s, 120 s)",
    )
    command.add_argument(
        "--fault-drop-events",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fault injection: fail every attempt of this fraction of asynchronous Lambda "
        "events, so they reach the on-failure destination (reliability tests)",
    )
    command.add_argument("--state-dir", type=Path, default=defaults.state_dir)
    command.add_argument("--verbose", action="store_true", help="also log every AWS API request")


def settings_from(args: argparse.Namespace) -> LocalCloudSettings:
    defaults = LocalCloudSettings()
    if args.command == "deploy":
        return replace(
            defaults,
            port=args.port,
            stack_name=args.stack_name,
            template=args.template.resolve(),
        )
    model = args.model
    if model and not model.startswith("s3://"):
        model = str(Path(model).resolve())
    return replace(
        defaults,
        port=args.port,
        endpoint_port=args.endpoint_port,
        bind=args.bind,
        stack_name=args.stack_name,
        template=args.template.resolve(),
        params=(args.params or defaults.params).resolve(),
        params_explicit=args.params is not None,
        model=model,
        watch=getattr(args, "watch", False),
        schedule_scale=args.schedule_scale,
        retry_delays=tuple(d * args.retry_scale for d in defaults.retry_delays),
        fault_drop_events=args.fault_drop_events,
        state_dir=args.state_dir.resolve(),
        verbose=args.verbose,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    # moto also logs these (to the console, once); its warnings would repeat them on stderr.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"moto\.")
    if settings.bind != LOOPBACK:
        print(
            f"warning: listening on {settings.bind}, not only this machine: anyone who can "
            "reach it can use the local cloud (meant for a container with published ports)",
            file=sys.stderr,
        )
    if args.command == "deploy":
        return deploy_command(settings, args.params)
    if args.command == "demo":
        from localcloud.demo import run_demo

        return run_demo(settings, fresh=args.fresh)
    return up(settings, fresh=args.fresh)


def deploy_command(settings: LocalCloudSettings, params: Path | None) -> int:
    """0 when the stack is updated (or had nothing to change), 1 otherwise."""
    from localcloud.clients import LocalSession
    from localcloud.redeploy import redeploy

    console = Console()
    try:
        status = redeploy(settings, LocalSession(settings), params, lambda t: console.line(NAME, t))
    except (DeployError, TimeoutError) as exc:
        console.line(NAME, f"error: {exc}")
        return 1
    return 0 if status in ("UPDATE_COMPLETE", "UNCHANGED") else 1


class StopRequest:
    """Set by SIGINT or SIGTERM, polled by the main thread.

    The handler runs between two bytecodes of the main thread, which may hold any lock
    (``Event.set`` there can deadlock), and a signal delivered to another thread does not wake
    a main thread blocked without a timeout. So the handler only counts, and waiting polls.
    """

    POLL_SECONDS = 0.25

    def __init__(self) -> None:
        self.count = 0

    def is_set(self) -> bool:
        return self.count > 0

    def wait(self) -> None:
        while not self.is_set():
            time.sleep(self.POLL_SECONDS)


def up(settings: LocalCloudSettings, console: Console | None = None, fresh: bool = False) -> int:
    """Run until Ctrl-C or SIGTERM; exit 0 after a clean stop, 1 if the stack failed."""
    console = console or Console()
    stop = StopRequest()
    cloud = LocalCloud(settings, console, fresh=fresh)

    def on_signal(_number: int, _frame: object) -> None:
        stop.count += 1
        if stop.count == 2:
            console.line(NAME, "second signal: killing every task now")
            threading.Thread(target=cloud.agent.kill_all, name="kill-all", daemon=True).start()

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, on_signal)
    try:
        stack = cloud.start()
    except (ServerStartError, DeployError) as exc:
        console.line(NAME, f"error: {exc}")
        return 1
    try:
        if not stop.is_set():
            _announce(cloud, stack, console, stop)
        stop.wait()
        console.line(NAME, "stopping")
    finally:
        cloud.stop()
    console.line(NAME, "stopped")
    return 0


def _announce(cloud: LocalCloud, stack: DeployedStack, console: Console, stop: StopRequest) -> None:
    for key, value in sorted(stack.outputs.items()):
        console.line(NAME, f"{key:<24} {value}")
    settings = cloud.settings
    console.line(NAME, "point the AWS CLI or boto3 at it:")
    console.line(
        NAME,
        f"  export AWS_ENDPOINT_URL={settings.endpoint_url} AWS_DEFAULT_REGION={settings.region}"
        f" AWS_ACCESS_KEY_ID={DUMMY_KEY} AWS_SECRET_ACCESS_KEY={DUMMY_KEY}",
    )
    console.line(
        NAME, f"  AWS CLI v1 ignores it for sqs: aws sqs ... --endpoint-url {settings.endpoint_url}"
    )
    if "InputBucketName" in stack.outputs:
        console.line(NAME, "make sample rows for the example model, then upload them:")
        console.line(
            NAME,
            f"  python scripts/train_example.py --out {settings.state_dir / 'sample-model'} --sample rows.parquet",
        )
        console.line(NAME, f"  aws s3 cp rows.parquet s3://{stack.outputs['InputBucketName']}/")
    console.line(NAME, f"state kept in {settings.kept_state_dir} (--fresh starts empty)")
    endpoint = stack.outputs.get("EndpointUrl", "")
    if endpoint.startswith("http://127.0.0.1"):
        healthy = _wait_endpoint(cloud, stop)
        state = "healthy" if healthy else "not healthy yet (see its log lines above)"
        console.line(NAME, f"endpoint {endpoint} {state}")
    console.line(NAME, f"{READY} (Ctrl-C stops everything)")


def _wait_endpoint(cloud: LocalCloud, stop: StopRequest) -> bool:
    """Wait for /ping, giving up early when asked to stop."""
    try:
        wait_until(
            lambda: stop.is_set() or cloud.endpoint_healthy(),
            ENDPOINT_WAIT_SECONDS,
            "the endpoint",
            interval=0.5,
        )
    except TimeoutError:
        return False
    return not stop.is_set()
