"""boto3 clients bound to the local cloud, whatever the user's own AWS configuration says."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from localcloud.procs import DUMMY_KEY
from localcloud.settings import LocalCloudSettings


class LocalSession:
    """A boto3 session whose clients all talk to the local endpoint with dummy keys."""

    def __init__(self, settings: LocalCloudSettings) -> None:
        self._settings = settings
        self._session = boto3.session.Session(
            aws_access_key_id=DUMMY_KEY,
            aws_secret_access_key=DUMMY_KEY,
            region_name=settings.region,
        )

    def client(self, service: str, config: Config | None = None) -> Any:
        return self._session.client(
            service, endpoint_url=self._settings.endpoint_url, config=config
        )
