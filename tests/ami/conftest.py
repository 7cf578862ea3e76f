"""Fixtures for the ami tests: an in-process moto (mock_aws) that facesite.aws clients reach."""

import flask.debughelpers
import moto.s3.models

# Imported before any test installs the emulator's CompactKey: moto's S3 responses bind
# `FakeKey` by name when first imported, and a first import under the patch would keep it.
import moto.s3.responses  # noqa: F401
import moto.sqs.models
import pytest
from moto import mock_aws
from moto.core.common_models import BaseModel

from ami.local import emulator
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


@pytest.fixture
def moto_restored(monkeypatch):
    """moto as it was, after the test, whatever the emulator's changes the test installs."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(BaseModel, "__new__", BaseModel.__dict__["__new__"])
    monkeypatch.setattr(moto.s3.models, "tempfile", moto.s3.models.tempfile)
    monkeypatch.setattr(moto.s3.models, "FakeKey", moto.s3.models.FakeKey)
    monkeypatch.setattr(
        moto.s3.models.S3Backend,
        "put_object_tagging",
        moto.s3.models.S3Backend.put_object_tagging,
    )
    monkeypatch.setattr(
        moto.sqs.models.Queue, "delete_message", moto.sqs.models.Queue.delete_message
    )
    monkeypatch.setattr(
        flask.debughelpers,
        "attach_enctype_error_multidict",
        flask.debughelpers.attach_enctype_error_multidict,
    )


@pytest.fixture
def memory_bounds(moto_restored, tmp_path):
    """install_memory_bounds with the bodies in tmp_path, undone after the test."""
    emulator.install_memory_bounds(tmp_path)
    return tmp_path
