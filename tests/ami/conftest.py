"""Fixtures for the ami tests: an in-process moto (mock_aws) that facesite.aws clients reach."""

import pytest
from moto import mock_aws

from facesite import aws


def use_prefix(settings, prefix: str) -> None:
    """Name every resource after `prefix`, as a fresh process with FACESITE_PREFIX would."""
    settings.FACESITE_PREFIX = prefix
    settings.FACESITE_AMI_ID = ""


@pytest.fixture
def mocked_aws(settings, monkeypatch):
    """facesite.aws clients talking to moto's in-process mock, under a prefix of their own.

    mock_aws only intercepts AWS's own endpoints, so the endpoint setting is cleared (as on
    real AWS) while it runs."""
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    settings.AWS_ENDPOINT_URL = None
    use_prefix(settings, "amitest")
    aws.reset_clients()
    with mock_aws():
        yield
    aws.reset_clients()
