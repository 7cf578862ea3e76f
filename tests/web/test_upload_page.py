"""The upload page at `/` renders in a real browser (the browser harness works end to end)."""

import pytest

from tests.browser import chromium

pytestmark = pytest.mark.browser


def test_the_upload_page_renders_its_form(live_server):
    with chromium() as browser:
        browser.get(f"{live_server.url}/")
        field = browser.find_element("css selector", "input[type=file][name=inputFile]")
        assert field.is_displayed()
