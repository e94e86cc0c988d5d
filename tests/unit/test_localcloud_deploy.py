"""The local cloud's deploy step reports every failure of CreateStack as a DeployError
(`up` prints it and exits 1), never as a traceback."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.parsers import ResponseParserError

from localcloud.deploy import DeployError, deploy_stack


class FailingCloudFormation:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def create_stack(self, **_: Any) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        ClientError({"Error": {"Code": "AlreadyExistsException", "Message": "exists"}}, "Create"),
        ResponseParserError("Unable to parse response, invalid XML received"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ],
    ids=["refused", "unparseable answer", "no server"],
)
def test_a_failed_create_stack_is_a_deploy_error_naming_the_stack(error: Exception) -> None:
    with pytest.raises(DeployError, match=r"stack model-endpoint-local: .+") as raised:
        deploy_stack(FailingCloudFormation(error), "model-endpoint-local", "{}", {}, 1.0)
    assert raised.value.__cause__ is error
