"""The emulator's speed-ups leave moto's answers as they were."""

import logging
from datetime import datetime

import moto.backends
import moto.sqs.models
from moto.core import utils as moto_utils

from ami.local import emulator


def test_the_cheap_clock_agrees_with_motos():
    before = moto_utils.unix_time()
    seconds, millis = emulator.unix_time(), emulator.unix_time_millis()
    after = moto_utils.unix_time()
    assert before - 0.01 <= seconds <= after + 0.01
    assert before * 1000 - 10 <= millis <= after * 1000 + 10


def test_a_given_moment_is_converted_by_moto_itself():
    moment = datetime(2026, 1, 2, 3, 4, 5, 600000)
    assert emulator.unix_time(moment) == moto_utils.unix_time(moment)
    assert emulator.unix_time_millis(moment) == moto_utils.unix_time_millis(moment)


def test_install_points_moto_at_the_cheap_clock_and_a_listing_made_once(monkeypatch):
    listed = list(moto.backends.list_of_moto_modules())
    for module, name in [
        (moto.sqs.models, "unix_time"),
        (moto.sqs.models, "unix_time_millis"),
        (moto.backends, "list_of_moto_modules"),
    ]:
        monkeypatch.setattr(module, name, getattr(module, name))  # undone after the test
    monkeypatch.setattr(logging.getLogger("werkzeug"), "level", logging.NOTSET)
    emulator.install_speedups()
    assert moto.sqs.models.unix_time is emulator.unix_time
    assert moto.sqs.models.unix_time_millis is emulator.unix_time_millis
    assert list(moto.backends.list_of_moto_modules()) == listed
    assert "sqs" in moto.backends.list_of_moto_modules()


def test_sqs_visibility_and_delay_hold_under_the_cheap_clock(monkeypatch):
    monkeypatch.setattr(moto.sqs.models, "unix_time_millis", emulator.unix_time_millis)
    message = moto.sqs.models.Message("id", "body")
    assert message.visible and not message.delayed
    message.change_visibility(1)
    message.delay(1)
    assert not message.visible and message.delayed
    message.visible_at = message.delayed_until = emulator.unix_time_millis() - 1
    assert message.visible and not message.delayed
