"""CloudFormation calls one at a time, as if each were atomic.

moto registers a new stack before it creates the stack's resources, and reading the stack
(DescribeStacks evaluates its Outputs) creates every resource an output refers to that the
create has not reached yet. A DescribeStacks that arrived during a CreateStack, as any
deploy script's polling does, created some resources from two threads at once; the create
then failed ("The specified log group already exists", in JSON where CloudFormation answers
XML). On AWS a stack's reads never create anything; here each CloudFormation call waits for
the one before it to finish, so a read sees the stack before or after a create, never in
the middle.
"""

from __future__ import annotations

import threading
from typing import Any

from moto.cloudformation.responses import CloudFormationResponse

_original_call_action = CloudFormationResponse.call_action
_lock = threading.RLock()


def _one_at_a_time(self: CloudFormationResponse) -> Any:
    with _lock:
        return _original_call_action(self)


def patch() -> None:
    """Serialise the CloudFormation API of the in-process moto."""
    CloudFormationResponse.call_action = _one_at_a_time  # type: ignore[method-assign]


def unpatch() -> None:
    CloudFormationResponse.call_action = _original_call_action  # type: ignore[method-assign]
