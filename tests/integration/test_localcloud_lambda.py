"""The Lambda runtime runs a function's real code package in a subprocess when moto invokes it."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto.awslambda.utils import get_backend
from moto.core import DEFAULT_ACCOUNT_ID

from localcloud.console import Console
from localcloud.lambda_runtime import LambdaRuntime
from localcloud.waiting import wait_until

ECHO = """
import os

def handler(event, context):
    print("echo", event)
    return {
        "event": event,
        "function_name": context.function_name,
        "memory": context.memory_limit_in_mb,
        "arn": context.invoked_function_arn,
        "remaining": context.get_remaining_time_in_millis(),
        "request_id": context.aws_request_id,
        "greeting": os.environ["GREETING"],
        "endpoint": os.environ["AWS_ENDPOINT_URL"],
        "region": os.environ["AWS_REGION"],
        "name_env": os.environ["AWS_LAMBDA_FUNCTION_NAME"],
    }
"""

FAILING = """
def handler(event, context):
    raise ValueError("bad input: " + str(event.get("n")))
"""

SLEEPY = """
import time

def handler(event, context):
    print("going to sleep", flush=True)
    time.sleep(30)
"""

# Each attempt leaves a file named <request id>.<n>; the event says whether to fail.
RECORDING = """
import json, os, time, uuid

def handler(event, context):
    out = os.environ["OUT_DIR"]
    started = time.time()
    time.sleep(event.get("sleep", float(os.environ.get("SLEEP", "0"))))
    path = os.path.join(out, context.aws_request_id + "." + uuid.uuid4().hex)
    with open(path, "w") as handle:
        json.dump({"event": event, "start": started, "end": time.time()}, handle)
    if event.get("fail"):
        raise RuntimeError("attempt failed")
    return "ok"
"""


def records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(folder.iterdir())]


def test_request_response_returns_the_handlers_result(
    lambda_runtime: LambdaRuntime, make_function: Callable[..., str], aws: Callable[[str], Any]
) -> None:
    name = make_function("echo", ECHO, Timeout=5, Environment={"Variables": {"GREETING": "hi"}})

    response = aws("lambda").invoke(FunctionName=name, Payload=json.dumps({"a": 1}), LogType="Tail")

    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    result = json.loads(response["Payload"].read())
    assert result["event"] == {"a": 1}
    assert result["function_name"] == name
    assert result["memory"] == 128
    assert result["arn"].endswith(f":function:{name}")
    assert 0 < result["remaining"] <= 5000
    assert result["greeting"] == "hi"
    assert result["endpoint"] == lambda_runtime.settings.endpoint_url
    assert result["region"] == "us-east-1"
    assert result["name_env"] == name
    assert "echo {'a': 1}" in base64.b64decode(response["LogResult"]).decode()
    logs = aws("logs")
    streams = logs.describe_log_streams(logGroupName=f"/aws/lambda/{name}")["logStreams"]
    events = logs.get_log_events(
        logGroupName=f"/aws/lambda/{name}", logStreamName=streams[0]["logStreamName"]
    )["events"]
    messages = [e["message"] for e in events]
    assert messages[0].startswith(f"START RequestId: {result['request_id']}")
    assert "echo {'a': 1}" in messages
    assert messages[-1].startswith("REPORT RequestId:")


def test_an_exception_is_a_function_error(
    lambda_runtime: LambdaRuntime, make_function: Callable[..., str], aws: Callable[[str], Any]
) -> None:
    name = make_function("failing", FAILING)

    response = aws("lambda").invoke(FunctionName=name, Payload=json.dumps({"n": 7}))

    assert response["FunctionError"] == "Unhandled"
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "bad input: 7"
    assert any("handler.py" in frame for frame in error["stackTrace"])
    assert not any("bootstrap.py" in frame for frame in error["stackTrace"])


def test_the_function_is_killed_at_its_timeout(
    lambda_runtime: LambdaRuntime, make_function: Callable[..., str], aws: Callable[[str], Any]
) -> None:
    name = make_function("sleepy", SLEEPY, Timeout=1)

    started = time.monotonic()
    response = aws("lambda").invoke(FunctionName=name, Payload=b"{}")
    elapsed = time.monotonic() - started

    assert 1.0 <= elapsed < 10
    assert response["FunctionError"] == "Unhandled"
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in error["errorMessage"]


def test_an_s3_notification_invokes_the_function_asynchronously(
    lambda_runtime: LambdaRuntime,
    make_function: Callable[..., str],
    aws: Callable[[str], Any],
    out_dir: Path,
) -> None:
    variables = {"OUT_DIR": str(out_dir), "SLEEP": "2"}
    name = make_function("on-upload", RECORDING, Timeout=10, Environment={"Variables": variables})
    arn = aws("lambda").get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    s3 = aws("s3")
    s3.create_bucket(Bucket="uploads")
    s3.put_bucket_notification_configuration(
        Bucket="uploads",
        NotificationConfiguration={
            "LambdaFunctionConfigurations": [
                {
                    "LambdaFunctionArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".csv"}]}},
                }
            ]
        },
    )

    s3.put_object(Bucket="uploads", Key="skipped.txt", Body=b"x")
    started = time.monotonic()
    s3.put_object(Bucket="uploads", Key="dir/my file.csv", Body=b"a,b\n1,2\n")
    put_seconds = time.monotonic() - started

    assert put_seconds < 1.5, "the upload must not wait for the 2 s function"
    wait_until(lambda: list(out_dir.iterdir()), 20, "the function to run")
    assert lambda_runtime.wait_idle(20)
    (seen,) = records(out_dir)
    (record,) = seen["event"]["Records"]
    assert record["eventSource"] == "aws:s3"
    assert record["s3"]["bucket"]["name"] == "uploads"
    assert unquote_plus(record["s3"]["object"]["key"]) == "dir/my file.csv"


def test_a_failed_async_invocation_is_retried_twice(
    lambda_runtime: LambdaRuntime,
    make_function: Callable[..., str],
    aws: Callable[[str], Any],
    out_dir: Path,
) -> None:
    name = make_function("retried", RECORDING, Environment={"Variables": {"OUT_DIR": str(out_dir)}})

    response = aws("lambda").invoke(
        FunctionName=name, InvocationType="Event", Payload=json.dumps({"fail": True})
    )

    assert response["StatusCode"] == 202
    wait_until(lambda: len(list(out_dir.iterdir())) >= 3, 20, "three attempts")
    assert lambda_runtime.wait_idle(10)
    attempts = list(out_dir.iterdir())
    assert len(attempts) == 3
    assert len({path.name.split(".")[0] for path in attempts}) == 1, "one request id"
    starts = sorted(record["start"] for record in records(out_dir))
    assert all(later - earlier >= 0.25 for earlier, later in itertools.pairwise(starts))


def failure_queue(aws: Callable[[str], Any], name: str, function: str, **config: Any) -> str:
    """A queue set as the function's on-failure destination (with ``config``); its URL."""
    sqs = aws("sqs")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    aws("lambda").put_function_event_invoke_config(
        FunctionName=function,
        DestinationConfig={"OnFailure": {"Destination": arn["QueueArn"]}},
        **config,
    )
    return url


def destination_records(aws: Callable[[str], Any], url: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def received() -> bool:
        messages = aws("sqs").receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        found.extend(json.loads(m["Body"]) for m in messages.get("Messages", []))
        return len(found) >= count

    wait_until(received, 20, f"{count} record(s) on the on-failure destination")
    return found


def test_an_event_that_fails_every_retry_goes_to_the_on_failure_destination(
    lambda_runtime: LambdaRuntime,
    make_function: Callable[..., str],
    aws: Callable[[str], Any],
    out_dir: Path,
) -> None:
    """The record has the shape AWS documents for an on-failure destination:
    https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html"""
    name = make_function("to-dest", RECORDING, Environment={"Variables": {"OUT_DIR": str(out_dir)}})
    url = failure_queue(aws, "to-dest-failures", name, MaximumRetryAttempts=1)

    aws("lambda").invoke(
        FunctionName=name, InvocationType="Event", Payload=json.dumps({"fail": True, "n": 7})
    )

    [record] = destination_records(aws, url, 1)
    assert len(list(out_dir.iterdir())) == 2, "the first attempt and one retry"
    assert record["version"] == "1.0"
    assert record["requestPayload"] == {"fail": True, "n": 7}
    context = record["requestContext"]
    assert (context["condition"], context["approximateInvokeCount"]) == ("RetriesExhausted", 2)
    assert context["functionArn"].endswith(f":function:{name}:$LATEST")
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorMessage"] == "attempt failed"


def test_an_event_older_than_its_maximum_age_goes_to_the_destination_unrun(
    lambda_runtime: LambdaRuntime,
    make_function: Callable[..., str],
    aws: Callable[[str], Any],
    out_dir: Path,
) -> None:
    variables = {"OUT_DIR": str(out_dir), "SLEEP": "2"}
    name = make_function("aged", RECORDING, Timeout=10, Environment={"Variables": variables})
    aws("lambda").put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=1)
    url = failure_queue(aws, "aged-failures", name, MaximumEventAgeInSeconds=60)
    fn = lambda_runtime_function(name)
    fn.event_invoke_config[-1].config["MaximumEventAgeInSeconds"] = 1  # the API's minimum is 60

    for n in range(2):
        aws("lambda").invoke(
            FunctionName=name, InvocationType="Event", Payload=json.dumps({"n": n})
        )

    [record] = destination_records(aws, url, 1)
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert "responseContext" not in record
    assert lambda_runtime.wait_idle(20)
    assert [r["event"]["n"] for r in records(out_dir)] == [record["requestPayload"]["n"] ^ 1]


def lambda_runtime_function(name: str) -> Any:
    """moto's model of a function, to shorten a limit the API does not let a test shorten."""
    return get_backend(DEFAULT_ACCOUNT_ID, "us-east-1").get_function(name)


def test_the_fault_hook_fails_every_attempt_of_a_chosen_event(
    moto: Any, make_function: Callable[..., str], aws: Callable[[str], Any], out_dir: Path
) -> None:
    runtime = LambdaRuntime(replace(moto.settings, fault_drop_events=1.0), Console())
    runtime.start()
    try:
        name = make_function(
            "faulty", RECORDING, Environment={"Variables": {"OUT_DIR": str(out_dir)}}
        )
        url = failure_queue(aws, "faulty-failures", name)

        aws("lambda").invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps({}))

        [record] = destination_records(aws, url, 1)
        assert record["requestContext"]["approximateInvokeCount"] == 3
        assert list(out_dir.iterdir()) == [], "the handler never ran"
    finally:
        runtime.stop()


def test_reserved_concurrency_of_one_runs_async_events_one_at_a_time(
    lambda_runtime: LambdaRuntime,
    make_function: Callable[..., str],
    aws: Callable[[str], Any],
    out_dir: Path,
) -> None:
    name = make_function("serial", RECORDING, Environment={"Variables": {"OUT_DIR": str(out_dir)}})
    client = aws("lambda")
    client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=1)

    for n in range(3):
        client.invoke(
            FunctionName=name, InvocationType="Event", Payload=json.dumps({"n": n, "sleep": 0.5})
        )

    assert lambda_runtime.wait_idle(30)
    runs = sorted(records(out_dir), key=lambda record: record["start"])
    assert [run["event"]["n"] for run in runs] == [0, 1, 2]
    for earlier, later in itertools.pairwise(runs):
        assert later["start"] >= earlier["end"], "runs overlapped"


def test_a_synchronous_invoke_beyond_reserved_concurrency_is_throttled(
    lambda_runtime: LambdaRuntime,
    make_function: Callable[..., str],
    aws: Callable[[str], Any],
    out_dir: Path,
) -> None:
    name = make_function(
        "busy", RECORDING, Timeout=10, Environment={"Variables": {"OUT_DIR": str(out_dir)}}
    )
    client = aws("lambda")
    client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=1)
    client.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps({"sleep": 1.5}))
    wait_until(lambda: lambda_runtime.running(name), 10, "the first event to run")
    strict = aws("lambda", config=Config(retries={"total_max_attempts": 1}))

    with pytest.raises(ClientError) as raised:
        strict.invoke(FunctionName=name, Payload=b"{}")

    assert raised.value.response["Error"]["Code"] == "TooManyRequestsException"
    assert lambda_runtime.wait_idle(20)


# Counts its invocations in a module global, which a warm environment keeps.
COUNTING = """
import os

calls = 0

def handler(event, context):
    global calls
    calls += 1
    if event.get("crash"):
        os._exit(9)
    if event.get("sleep"):
        import time
        time.sleep(event["sleep"])
    return {"pid": os.getpid(), "calls": calls, "stream": context.log_stream_name}
"""


def invoke_json(client: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
    response = client.invoke(FunctionName=name, Payload=json.dumps(event))
    return json.loads(response["Payload"].read())


def test_invocations_reuse_a_warm_environment_and_its_globals(
    lambda_runtime: LambdaRuntime, make_function: Callable[..., str], aws: Callable[[str], Any]
) -> None:
    name = make_function("counting", COUNTING, Timeout=5)
    client = aws("lambda")

    first = invoke_json(client, name, {})
    second = invoke_json(client, name, {})

    assert second["pid"] == first["pid"]
    assert (first["calls"], second["calls"]) == (1, 2)
    assert second["stream"] == first["stream"], "one log stream per environment, as on AWS"
    assert lambda_runtime.environments(name) == [first["pid"]]


def test_a_crashed_environment_is_replaced(
    lambda_runtime: LambdaRuntime, make_function: Callable[..., str], aws: Callable[[str], Any]
) -> None:
    name = make_function("crashing", COUNTING, Timeout=5)
    client = aws("lambda")
    before = invoke_json(client, name, {})

    response = client.invoke(FunctionName=name, Payload=json.dumps({"crash": True}))
    after = invoke_json(client, name, {})

    assert response["FunctionError"] == "Unhandled"
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "Runtime.ExitError"
    assert "exit status 9" in error["errorMessage"]
    assert after["pid"] != before["pid"]
    assert after["calls"] == 1, "a fresh environment starts with fresh globals"


def test_a_timed_out_environment_is_replaced(
    lambda_runtime: LambdaRuntime, make_function: Callable[..., str], aws: Callable[[str], Any]
) -> None:
    name = make_function("slow", COUNTING, Timeout=1)
    client = aws("lambda")
    before = invoke_json(client, name, {})

    timed_out = invoke_json(client, name, {"sleep": 5})
    after = invoke_json(client, name, {})

    assert timed_out["errorType"] == "Sandbox.Timedout"
    assert after["pid"] != before["pid"]
    assert after["calls"] == 1


def test_the_pool_grows_with_concurrent_invocations_within_reserved_concurrency(
    lambda_runtime: LambdaRuntime,
    make_function: Callable[..., str],
    aws: Callable[[str], Any],
) -> None:
    name = make_function("parallel", COUNTING, Timeout=10)
    client = aws("lambda")
    for _ in range(2):
        client.invoke(FunctionName=name, InvocationType="Event", Payload=b'{"sleep": 1.5}')
    wait_until(lambda: len(lambda_runtime.environments(name)) == 2, 10, "two environments")
    assert lambda_runtime.running(name) == 2
    assert lambda_runtime.wait_idle(20)

    client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=1)
    for _ in range(3):
        client.invoke(FunctionName=name, InvocationType="Event", Payload=b'{"sleep": 0.3}')
    assert lambda_runtime.wait_idle(20)

    assert len(lambda_runtime.environments(name)) == 2, "warm ones were reused, none added"
