"""The pipeline end to end: real moto server, real Celery workers over SQS, real gunicorn with
two processes, course photos over HTTP."""

import io
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from ami.local.harness import Stack, course_labels, upload, wait_until

pytestmark = pytest.mark.e2e

MAX_UPLOAD_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def stack(moto_server, tmp_path_factory, course_gallery_dir):
    stack = Stack(
        moto_server,
        tmp_path_factory.mktemp("pipeline"),
        FACESITE_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
    )
    stack.deploy(course_gallery_dir)
    stack.start_worker("worker-1")
    stack.start_worker("worker-2")
    stack.start_web(processes=2)
    yield stack
    stack.stop_all()


def post_bytes(url: str, name: str, data: bytes) -> requests.Response:
    return requests.post(url, files={"inputFile": (name, data)}, timeout=60)


def test_course_uploads_concurrently(stack, course_dir):
    labels = course_labels(course_dir, "100")
    images = sorted((course_dir / "face_images_100").glob("*.jpg"))
    with ThreadPoolExecutor(max_workers=100) as pool:
        replies = list(pool.map(lambda path: upload(stack.web_url, path), images))

    assert [reply.status_code for reply in replies] == [200] * len(images)
    assert all(reply.headers["Content-Type"].startswith("text/plain") for reply in replies)
    assert {reply.text for reply in replies} == {f"{p.stem}:{labels[p.stem]}" for p in images}

    in_keys = set(stack.bucket_keys("in-bucket"))
    assert {path.name for path in images} <= in_keys
    out = stack.client("s3")
    for path in images[:10]:
        body = out.get_object(Bucket=stack.name("out-bucket"), Key=path.stem)["Body"].read()
        assert body.decode() == labels[path.stem]
    assert {path.stem for path in images} <= set(stack.bucket_keys("out-bucket"))

    wait_until(lambda: stack.queue_depth("req-queue") == (0, 0), 15, "request queue empty")
    wait_until(lambda: stack.queue_depth("resp-queue") == (0, 0), 15, "response queue empty")
    stems = ",".join(f"'{path.name}'" for path in images)
    rows = stack.query(
        "SELECT status, name, reply_status, stored_at, queued_at, started_at, finished_at,"
        f" replied_at FROM recognition_uploadrequest WHERE file_name IN ({stems})"
    )
    assert len(rows) == len(images)
    assert all(row[0] == "done" and row[2] == 200 and None not in row for row in rows)


def test_same_file_name_at_the_same_moment(stack, course_dir):
    labels = course_labels(course_dir, "100")
    # Pairs of different people sent under one name at once: each gets its own answer.
    pairs = [(f"test_{a:02d}", f"test_{b:02d}") for a, b in ((0, 1), (2, 3), (4, 5), (6, 7))]
    jobs = [
        (course_dir / "face_images_100" / f"{stem}.jpg", labels[stem])
        for pair in pairs
        for stem in pair
    ]
    assert all(labels[a] != labels[b] for a, b in pairs)
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        replies = list(pool.map(lambda job: upload(stack.web_url, job[0], "same.jpg"), jobs))
    assert [reply.text for reply in replies] == [f"same:{label}" for _, label in jobs]
    assert "same.jpg" in stack.bucket_keys("in-bucket")


def test_result_read_by_another_process_answers_the_request(stack, course_dir):
    # This web server reads no results itself: every reply must come through a result that
    # the other server's processes took off the response queue.
    url = stack.start_web("web-no-consumer", processes=1, FACESITE_RESPONSE_CONSUMERS="0")
    labels = course_labels(course_dir, "100")
    images = sorted((course_dir / "face_images_100").glob("test_1*.jpg"))
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        replies = list(pool.map(lambda path: upload(url, path), images))
    assert [reply.text for reply in replies] == [f"{p.stem}:{labels[p.stem]}" for p in images]


def test_slow_result_gets_504_and_is_still_recorded(stack, course_dir):
    url = stack.start_web("web-impatient", processes=1, FACESITE_REPLY_TIMEOUT="1")
    workers = [process for process in stack.processes if "runworker" in process.args]
    for worker in workers:
        stack.stop(worker)
        stack.processes.remove(worker)
    try:
        reply = upload(url, course_dir / "face_images_100" / "test_42.jpg", "impatient.jpg")
        assert reply.status_code == 504
        assert reply.headers["X-Request-Id"] in reply.text
    finally:
        for index in range(len(workers)):
            stack.start_worker(f"worker-{index + 1}")
    request_id = reply.headers["X-Request-Id"].replace("-", "")
    wait_until(
        lambda: (
            stack.query(
                "SELECT status, name, reply_status FROM recognition_uploadrequest WHERE id = ?",
                request_id,
            )
            == [("done", course_labels(course_dir, "100")["test_42"], 504)]
        ),
        30,
        "the late result to be recorded",
    )


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def bomb_png() -> bytes:
    """A small PNG whose header claims 30,000 x 30,000 pixels."""
    buffer = io.BytesIO()
    Image.new("L", (30000, 30000)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "make_body", "status"),
    [
        ("notes.txt", lambda: b"this is not an image at all", 415),
        ("cut.jpg", lambda: jpeg_bytes(Image.new("RGB", (400, 400), "teal"))[:600], 400),
        ("bomb.png", bomb_png, 400),
        ("wall.jpg", lambda: jpeg_bytes(Image.new("RGB", (320, 240), (180, 170, 160))), 422),
        ("empty.jpg", lambda: b"", 400),
        ("huge.jpg", lambda: b"\xff\xd8" + b"\0" * (MAX_UPLOAD_BYTES + 1024), 413),
    ],
)
def test_bad_input_gets_a_plain_4xx(stack, name, make_body, status):
    reply = post_bytes(stack.web_url, name, make_body())
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.text.strip() and "\n" not in reply.text.strip()


def test_missing_field_and_wrong_method(stack):
    missing = requests.post(stack.web_url, files={"other": ("a.jpg", b"x")}, timeout=10)
    assert missing.status_code == 400 and "inputFile" in missing.text
    assert requests.put(stack.web_url, data=b"x", timeout=10).status_code == 405
    page = requests.get(stack.web_url, timeout=10)
    assert page.status_code == 200 and 'name="inputFile"' in page.text


def test_enrolment_reaches_running_workers(stack, five_celebrity_dir, tmp_path):
    probe = next(iter(sorted((five_celebrity_dir / "val" / "madonna").glob("*.jpg"))))
    before = upload(stack.web_url, probe, "probe-before.jpg")
    assert before.status_code == 200 and before.text == "probe-before:Unknown"

    gallery = tmp_path / "gallery"
    shutil.copytree(five_celebrity_dir / "train" / "madonna", gallery / "madonna")
    stack.manage("enroll", str(gallery))
    time.sleep(0.1)
    after = upload(stack.web_url, probe, "probe-after.jpg")
    assert after.text == "probe-after:madonna"


def test_health(stack):
    assert requests.get(f"{stack.web_url}/healthz", timeout=10).text == "ok"
