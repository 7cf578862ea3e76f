"""The page at `/` and the API docs page in a real browser, against the real stack."""

import pytest

from ami.local.harness import REPO_DIR
from tests.api.conftest import ENROLLED, side_by_side
from tests.browser import chromium

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

SCREENSHOT = REPO_DIR / "var" / "screenshots" / "api-page.png"


def test_the_page_boxes_and_names_every_face_of_a_dropped_photo(api, five_celebrity_dir, tmp_path):
    from selenium.webdriver.support.wait import WebDriverWait

    photo = tmp_path / "two-people.jpg"
    photo.write_bytes(
        side_by_side(
            sorted((five_celebrity_dir / "val" / ENROLLED[0]).iterdir())[1],
            sorted((five_celebrity_dir / "val" / ENROLLED[1]).iterdir())[1],
        )
    )
    with chromium() as browser:
        browser.get(f"{api.url}/")
        browser.find_element("css selector", "input[type=file]").send_keys(str(photo))
        WebDriverWait(browser, 60).until(
            lambda b: (
                b.find_elements("css selector", "td.face-name")
                or "error" in b.find_element("id", "status").get_attribute("class")
            )
        )
        names = [cell.text for cell in browser.find_elements("css selector", "td.face-name")]
        labels = [box.text for box in browser.find_elements("css selector", ".box .face-label")]
        timings = browser.find_element("id", "timings").text
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))

    assert sorted(names) == sorted(ENROLLED), f"names on the page: {names}"
    assert sorted(label.split(". ", 1)[1] for label in labels) == sorted(ENROLLED)
    assert "detect" in timings and "ms" in timings
    assert SCREENSHOT.stat().st_size > 10_000


def test_the_docs_page_renders_the_schema_without_the_network(api):
    from selenium.webdriver.support.wait import WebDriverWait

    with chromium() as browser:
        browser.get(f"{api.url}/api/docs")
        WebDriverWait(browser, 30).until(lambda b: b.find_elements("css selector", ".opblock"))
        paths = {
            element.text
            for element in browser.find_elements("css selector", ".opblock-summary-path")
        }
    assert {"/api/v1/recognize", "/api/v1/subjects/{name}/examples"} <= paths
