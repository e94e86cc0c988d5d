"""At start, queue again the inputs that have no report for their current version.

Queue messages are not kept across a restart (see ``localcloud.state``): a file uploaded
just before a stop, or in work when it came, would be forgotten. ``service.accounting``
finds them as ``scripts/jobs.py --requeue-missing`` does.
"""

from __future__ import annotations

from typing import Any

from localcloud.console import Console
from localcloud.deploy import DeployedStack

DEFAULT_OUTPUT_PREFIX = "predictions"


def requeue_unreported(session: Any, stack: DeployedStack, console: Console) -> int:
    """Queue the stack's unreported inputs; how many."""
    try:
        from service.accounting import queue_jobs, unreported_inputs
    except ImportError:
        console.line("localcloud", "note: service.accounting is missing; nothing queued again")
        return 0
    outputs = stack.outputs
    names = ("InputBucketName", "OutputBucketName", "JobQueueUrl")
    if not all(outputs.get(name) for name in names):
        return 0
    prefix = stack.parameters.get("OutputPrefix") or DEFAULT_OUTPUT_PREFIX
    s3 = session.client("s3")
    jobs = list(
        unreported_inputs(s3, outputs["InputBucketName"], outputs["OutputBucketName"], prefix)
    )
    if jobs:
        queue_jobs(session.client("sqs"), outputs["JobQueueUrl"], jobs)
        shown = ", ".join(job["key"] for job in jobs[:5]) + (" ..." if len(jobs) > 5 else "")
        console.line("localcloud", f"queued again {len(jobs)} input(s) with no report: {shown}")
    return len(jobs)
