"""The boot script: what the worker is configured with, and nothing it must not carry."""

import os
import subprocess
from pathlib import Path

import pytest

from ami.image.bootscript import (
    ENV_FILE,
    USER_DATA_LIMIT,
    parse_user_data,
    render_boot_script,
    worker_environment,
    worker_user_data,
)


def test_round_trip_of_the_settings_environment():
    script = worker_user_data()
    assert parse_user_data(script) == worker_environment()
    assert len(script.encode()) < USER_DATA_LIMIT


def test_round_trip_of_unusual_but_valid_values():
    environment = {
        "FACESITE_AWS_ENDPOINT": "http://127.0.0.1:5000/",
        "FACESITE_MATCH_THRESHOLD": "",
        "WITH_EQUALS": "a=b=c",
        "PATHISH": "/opt/x_y-z.1,2:3@4%5+6~7",
    }
    assert parse_user_data(render_boot_script(environment)) == environment


def test_worker_settings_are_carried(settings):
    settings.FACESITE_PREFIX = "bootprefix"
    settings.FACESITE_SQS_WAIT_SECONDS = 7
    settings.FACESITE_VISIBILITY_TIMEOUT = 42
    environment = parse_user_data(worker_user_data())
    assert environment["FACESITE_PREFIX"] == "bootprefix"
    assert environment["FACESITE_SQS_WAIT_SECONDS"] == "7"
    assert environment["FACESITE_VISIBILITY_TIMEOUT"] == "42"
    assert environment["FACESITE_ENGINE_THREADS"] == "1"
    assert environment["FACESITE_AWS_ENDPOINT"] == settings.AWS_ENDPOINT_URL


def test_real_aws_is_spelled_as_an_empty_endpoint(settings):
    # Unset would mean "the local emulator" to the worker's settings.
    settings.AWS_ENDPOINT_URL = None
    assert parse_user_data(worker_user_data())["FACESITE_AWS_ENDPOINT"] == ""


def test_no_credential_in_the_user_data(settings, monkeypatch):
    key, secret, token = "AKIAFACESITETEST0001", "s3cr3t-facesite-marker", "t0ken-facesite-marker"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    settings.CELERY_BROKER_URL = f"sqs://{key}:{secret}@127.0.0.1:5000"
    script = worker_user_data()
    for forbidden in (
        key,
        secret,
        token,
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "CELERY_BROKER_URL",
        "sqs://",
    ):
        assert forbidden not in script


@pytest.mark.parametrize("value", ["two words", "new\nline", 'quo"te', "it's", "$HOME", "a\\b"])
def test_values_the_env_file_cannot_carry_are_refused(value):
    with pytest.raises(ValueError, match="cannot carry"):
        render_boot_script({"FACESITE_PREFIX": value})


def test_parse_refuses_other_scripts():
    with pytest.raises(ValueError, match="not a facesite boot script"):
        parse_user_data("#!/bin/sh\necho hello\n")


def test_bash_writes_exactly_the_parsed_environment(tmp_path: Path):
    """Run the script for real, with /etc and systemctl redirected into tmp_path."""
    etc = tmp_path / "etc"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl.calls"
    fake_systemctl = bin_dir / "systemctl"
    fake_systemctl.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake_systemctl.chmod(0o755)
    script = worker_user_data().replace("/etc/facesite", str(etc / "facesite"))
    subprocess.run(
        ["bash", "-c", script],
        check=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    env_file = etc / "facesite" / Path(ENV_FILE).name
    sourced = subprocess.run(
        ["env", "-i", "bash", "-c", f"set -a; . {env_file}; env -0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    values = dict(item.split("=", 1) for item in sourced.split("\0") if item)
    assert {key: values[key] for key in worker_environment()} == worker_environment()
    assert calls.read_text() == "enable --now --no-block facesite-worker.service\n"
