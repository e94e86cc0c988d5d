"""Lambda's on-failure destination for asynchronous invocations, as AWS delivers it.

An event whose invocations all failed (``RetriesExhausted``) or that waited past the
function's maximum event age (``EventAgeExceeded``) is sent, as an invocation record, to the
``DestinationConfig.OnFailure`` of the function's event invoke configuration. The record's
shape is AWS's ("Capturing records of Lambda asynchronous invocations",
https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html). The
local cloud delivers to SQS queues (the only destination the project's template uses).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

from moto.awslambda.models import LambdaFunction
from moto.sqs.models import sqs_backends

RETRIES_EXHAUSTED = "RetriesExhausted"
EVENT_AGE_EXCEEDED = "EventAgeExceeded"


def invoke_config(fn: LambdaFunction) -> dict[str, Any]:
    """The function's current event invoke configuration (empty when none was put)."""
    configs = getattr(fn, "event_invoke_config", None) or []
    return dict(configs[-1].config) if configs else {}


def on_failure_arn(fn: LambdaFunction) -> str | None:
    destination = invoke_config(fn).get("DestinationConfig", {}).get("OnFailure", {})
    return destination.get("Destination") or None


def failure_record(
    fn: LambdaFunction,
    event: bytes,
    request_id: str,
    condition: str,
    attempts: int,
    error: Any = None,
) -> dict[str, Any]:
    """The invocation record AWS sends to an on-failure destination."""
    try:
        payload: Any = json.loads(event or b"{}")
    except ValueError:
        payload = event.decode("utf-8", errors="replace")
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "requestContext": {
            "requestId": request_id,
            "functionArn": f"{fn.function_arn}:$LATEST",
            "condition": condition,
            "approximateInvokeCount": attempts,
        },
        "requestPayload": payload,
    }
    if condition == RETRIES_EXHAUSTED:
        record["responseContext"] = {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        }
        record["responsePayload"] = error
    return record


def deliver(destination_arn: str, record: dict[str, Any]) -> None:
    """Send the record to an SQS queue given by ARN (``arn:aws:sqs:region:account:name``)."""
    parts = destination_arn.split(":")
    if len(parts) != 6 or parts[2] != "sqs":
        raise ValueError(f"unsupported on-failure destination {destination_arn}")
    region, account, name = parts[3], parts[4], parts[5]
    sqs_backends[account][region].send_message(name, json.dumps(record))


def dropped_by_fault(request_id: str, fraction: float) -> bool:
    """Whether the fault hook fails every attempt of this event (the same answer for each
    attempt of one event, so a chosen event fails its retries too)."""
    return fraction > 0 and random.Random(request_id).random() < fraction
