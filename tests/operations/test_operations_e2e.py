"""Operations end to end on the elastic tier (real moto, gunicorn with two processes, the
scaler, the instance runner): /metrics after uploads, request ids in every tier's log, and the
dashboard in Debian's chromium following a burst up and back down."""

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from ami.local.harness import REPO_DIR, Stack, course_labels, upload, wait_until
from tests.browser import chromium
from tests.operations.test_metrics import sample

pytestmark = pytest.mark.e2e

MAX_INSTANCES = 6
STAFF = ("ops", "ops-password")
SCREENSHOTS = REPO_DIR / "var" / "screenshots"
DESIGN_SERIES = (
    "facesite_requests_total",
    "facesite_request_seconds_bucket",
    "facesite_queue_messages",
    "facesite_instances",
    "facesite_scaling_actions_total",
)


@pytest.fixture(scope="module")
def elastic(moto_server, tmp_path_factory, course_gallery_dir):
    stack = Stack(
        moto_server,
        tmp_path_factory.mktemp("operations"),
        FACESITE_MAX_INSTANCES=str(MAX_INSTANCES),
    )
    stack.deploy(course_gallery_dir)
    stack.create_staff_user(*STAFF)
    stack.start_web(processes=2)
    stack.start_elastic_tier()
    yield stack
    stack.stop_all()


def upload_all(url, paths, threads):
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda path: upload(url, path), paths))


def test_metrics_after_twenty_uploads(elastic, course_dir):
    labels = course_labels(course_dir, "100")
    images = sorted((course_dir / "face_images_100").glob("*.jpg"))[:20]
    replies = upload_all(elastic.web_url, images, threads=20)
    assert [reply.text for reply in replies] == [f"{p.stem}:{labels[p.stem]}" for p in images]

    # Both gunicorn processes answered uploads (each waits on its own wake socket): a scrape
    # of either one shows at least 20 only if the processes' counts are added up.
    ids = [reply.headers["X-Request-Id"] for reply in replies]
    placeholders = ",".join("?" for _ in ids)
    served_by = elastic.query(
        f"SELECT DISTINCT reply_to FROM recognition_uploadrequest WHERE id IN ({placeholders})",
        *[request_id.replace("-", "") for request_id in ids],
    )
    assert len(served_by) == 2
    # The scaler has acted on the burst and recorded what it saw.
    wait_until(
        lambda: (
            (sample(scrape(elastic), "facesite_scaling_actions_total", action="launch") or 0)
            + (sample(scrape(elastic), "facesite_scaling_actions_total", action="start") or 0)
            > 0
        ),
        30,
        "a scaling action in /metrics",
    )
    for _ in range(6):  # several scrapes, reaching both processes
        text = scrape(elastic)
        uploads = [
            float(value)
            for value in re.findall(
                r'^facesite_requests_total\{endpoint="upload",status="200"\} (\S+)$', text, re.M
            )
        ]
        assert sum(uploads) >= 20
        total = sum(
            float(value)
            for value in re.findall(r"^facesite_requests_total\{.*\} (\S+)$", text, re.M)
        )
        assert total >= 20
        for series in DESIGN_SERIES:
            assert re.search(rf"^{series}(\{{.*\}})? ", text, re.M), f"{series} missing"
        assert sample(text, "facesite_queue_messages", queue="request", state="visible") is not None
        assert sample(text, "facesite_instances", state="running") is not None
        assert sample(text, "facesite_upload_stage_seconds_count", stage="recognise") >= 1
        # Never a file name, a subject's name or a key.
        for path in images:
            assert path.stem not in text
            assert labels[path.stem] not in text
        assert "facesite-test" not in text  # the emulator's access key id and secret
        assert elastic.prefix not in text


def scrape(stack: Stack) -> str:
    response = requests.get(f"{stack.web_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.text


def test_one_request_id_through_every_tier(elastic, course_dir):
    reply = upload(elastic.web_url, course_dir / "face_images_100" / "test_00.jpg")
    request_id = reply.headers["X-Request-Id"]

    def lines(name: str) -> list[str]:
        path = elastic.log_dir / name
        return [line for line in path.read_text().splitlines() if request_id in line]

    web_line = f"request {request_id} POST upload 200"  # the middleware's, as it answers
    consumer_line = f"request {request_id} result recognised"  # the response consumer's
    # The worker's (the runner's children write to its log), written just after its result
    # is sent: it may come after the reply.
    worker_line = f"request {request_id} test_00.jpg -> recognised"
    wait_until(
        lambda: any(worker_line in line for line in lines("runner.log")), 10, "the worker's line"
    )
    web_lines = lines("web.log")
    assert sum(web_line in line for line in web_lines) == 1, web_lines
    assert sum(consumer_line in line for line in web_lines) == 1, web_lines


def test_dashboard_requires_a_staff_login(elastic):
    response = requests.get(f"{elastic.web_url}/dashboard/", allow_redirects=False, timeout=10)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login/?next=/dashboard/")


@pytest.mark.browser
def test_dashboard_follows_a_burst_up_and_down(elastic, course_dir):
    from selenium.webdriver.common.by import By

    # Long enough (200 uploads, 100 at a time) for the fleet's growth to reach the dashboard,
    # which shows the scaler's latest observation (every 2 s) and polls it every 2 s.
    images = sorted((course_dir / "face_images_1000").glob("*.jpg"))[:200]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    wait_until(lambda: elastic.app_tier_states()["running"] == 0, 60, "an idle fleet")
    with chromium() as browser:
        browser.get(f"{elastic.web_url}/dashboard/")
        assert "/admin/login/" in browser.current_url
        browser.find_element(By.NAME, "username").send_keys(STAFF[0])
        browser.find_element(By.NAME, "password").send_keys(STAFF[1])
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        wait_until(lambda: browser.current_url.endswith("/dashboard/"), 20, "the dashboard")

        def running() -> int | None:
            value = browser.find_element(By.ID, "fleet-running").text
            return int(value) if value.isdigit() else None

        wait_until(lambda: running() == 0, 30, "the dashboard showing an idle fleet")
        page_loads = browser.execute_script("return performance.getEntriesByType('navigation')")

        replies = []
        burst = threading.Thread(
            target=lambda: replies.extend(upload_all(elastic.web_url, images, threads=100))
        )
        burst.start()
        seen = [0]
        peak_deadline = time.monotonic() + 180
        while burst.is_alive() and time.monotonic() < peak_deadline:
            count = running() or 0
            if count > max(seen):
                browser.save_screenshot(str(SCREENSHOTS / "dashboard-burst.png"))
            seen.append(count)
            time.sleep(0.5)
        burst.join(120)
        assert not burst.is_alive()
        assert [reply.status_code for reply in replies] == [200] * len(images)

        wait_until(lambda: running() == 0, 90, "the dashboard showing the fleet back at zero")
        time.sleep(2.5)  # one more poll, so the charts and tables include the scale-in
        browser.set_window_size(1280, 1700)  # the tables below the charts too
        browser.save_screenshot(str(SCREENSHOTS / "dashboard-after.png"))
        # Nothing reloaded the page: the same navigation, updated by polling.
        assert browser.execute_script("return performance.getEntriesByType('navigation')") == (
            page_loads
        )
        decisions = browser.find_element(By.ID, "scaling").text
        latency = browser.find_element(By.ID, "latency").text

    assert max(seen) >= 2, f"the dashboard never showed the fleet growing: {seen}"
    # Scale-out is the scaler's decision; scale-in is mostly the idle workers stopping their
    # own instances, which the scaler records no decision for.
    assert f"want {MAX_INSTANCES} active" in decisions
    assert re.match(r"^\d+\.\d\d s / \d+\.\d\d s$", latency), latency
    assert (SCREENSHOTS / "dashboard-burst.png").stat().st_size > 10_000
