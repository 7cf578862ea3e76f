"""Settings fail fast: a malformed value stops start-up naming its variable; names derive from
the prefix in one place."""

import subprocess
import sys

import pytest

from ami.local.harness import REPO_DIR
from facesite import aws
from facesite.config import ConfigError, FacesiteConfig, load


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FACESITE_MAX_INSTANCES", "many"),
        ("FACESITE_SETTLE_SECONDS", "soon"),
        ("DJANGO_DEBUG", "yes please"),
        ("FACESITE_PREFIX", "Not_A_Bucket_Name"),
        ("FACESITE_EMBEDDER", "resnet"),
    ],
)
def test_a_malformed_value_names_its_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load()


def test_manage_py_stops_with_one_line_naming_the_variable():
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO_DIR,
        env={"PATH": "/usr/bin:/bin", "FACESITE_MAX_INSTANCES": "many"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "FACESITE_MAX_INSTANCES" in result.stderr and "Traceback" not in result.stderr


def test_defaults_depend_on_where_it_runs(monkeypatch):
    monkeypatch.delenv("FACESITE_AWS_ENDPOINT", raising=False)
    local = FacesiteConfig()
    monkeypatch.setenv("FACESITE_AWS_ENDPOINT", "")
    real = FacesiteConfig()
    assert local.is_local and not real.is_local
    assert (local.visibility_timeout, real.visibility_timeout) == (10, 60)
    assert real.celery_broker_url == "sqs://" and real.emulator_credentials is None
    assert local.warm_pool == local.max_instances


def test_one_prefix_renames_every_bucket_queue_and_role(settings):
    settings.FACESITE_PREFIX = "other"
    names = aws.names()
    assert {
        names.input_bucket,
        names.output_bucket,
        names.gallery_bucket,
        names.request_queue,
        names.request_dead_letter_queue,
        names.response_queue,
        names.worker_profile,
    } == {
        "other-in-bucket",
        "other-out-bucket",
        "other-gallery-bucket",
        "other-req-queue",
        "other-req-dlq",
        "other-resp-queue",
        "other-worker",
    }
    assert names.request_queue_url.endswith("/other-req-queue")


def test_on_aws_the_web_tier_needs_a_secret_key_and_an_admin_password(monkeypatch):
    monkeypatch.setenv("FACESITE_AWS_ENDPOINT", "")
    monkeypatch.delenv("DJANGO_SECRET_KEY", raising=False)
    monkeypatch.delenv("FACESITE_ADMIN_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="DJANGO_SECRET_KEY.*FACESITE_ADMIN_PASSWORD"):
        FacesiteConfig().require_secure_web()
    monkeypatch.setenv("DJANGO_SECRET_KEY", "a-real-secret")
    with pytest.raises(ConfigError, match="FACESITE_ADMIN_PASSWORD"):
        FacesiteConfig().require_secure_web()
    monkeypatch.setenv("FACESITE_ADMIN_PASSWORD", "a-real-password")
    FacesiteConfig().require_secure_web()


def test_secure_by_default_on_aws_and_convenient_locally(monkeypatch):
    monkeypatch.delenv("FACESITE_AWS_ENDPOINT", raising=False)
    local = FacesiteConfig()
    local.require_secure_web()  # the development key and "admin" are fine on loopback
    assert (local.secure_cookies, local.admin_password, local.bucket_suffix) == (
        False,
        "admin",
        "",
    )
    assert local.aws_account_id == "123456789012"
    monkeypatch.setenv("FACESITE_AWS_ENDPOINT", "")
    real = FacesiteConfig()
    assert real.secure_cookies is True
    # Unknown until start-up asks STS (facesite/settings.py); never moto's account.
    assert real.aws_account_id is None and real.bucket_suffix is None
    assert (real.settle_seconds, real.self_stop_idle) == (5.0, 60.0)


def test_bucket_names_carry_the_suffix_queues_do_not():
    from facesite.aws.names import Names

    names = Names("pfx", "us-east-1", "111122223333", bucket_suffix="111122223333")
    assert names.input_bucket == "pfx-in-bucket-111122223333"
    assert names.gallery_bucket == "pfx-gallery-bucket-111122223333"
    assert names.request_queue == "pfx-req-queue"
