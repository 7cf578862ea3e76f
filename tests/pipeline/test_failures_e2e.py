"""Every upload gets an answer, on the real stack (moto server, a Celery worker, gunicorn): an
unusable name is refused at once, a result that cannot be delivered ends in the dead-letter
queue and is answered from there, and garbage on the request queue neither stays nor stops a
worker. Deliveries and the visibility timeout are small here, so a dead letter takes seconds."""

import json
import time

import pytest

from ami.local.harness import Stack, course_labels, upload, wait_until

pytestmark = pytest.mark.e2e

MAX_RECEIVES = 2
VISIBILITY_TIMEOUT = 4


@pytest.fixture(scope="module")
def stack(moto_server, tmp_path_factory, course_gallery_dir):
    stack = Stack(
        moto_server,
        tmp_path_factory.mktemp("failures"),
        FACESITE_MAX_RECEIVES=str(MAX_RECEIVES),
        FACESITE_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
    )
    stack.deploy(course_gallery_dir)
    stack.start_worker("worker")
    stack.start_web(processes=1)
    yield stack
    stack.stop_all()


@pytest.fixture
def photo(course_dir):
    return course_dir / "face_images_100" / "test_03.jpg"


@pytest.mark.timeout(180)  # includes starting the module's stack
@pytest.mark.parametrize("name", [".jpg", "..jpg", "folder/.png"])
def test_a_name_with_an_empty_stem_gets_a_400_sentence(stack, photo, name):
    started = time.monotonic()
    reply = upload(stack.web_url, photo, name, timeout=20)
    elapsed = time.monotonic() - started
    print(f"{name} answered in {elapsed:.2f} s")
    assert (reply.status_code, reply.text) == (
        400,
        "The file name needs a name before its extension.",
    )
    assert elapsed < 20
    assert stack.query("SELECT COUNT(*) FROM recognition_uploadrequest") == [(0,)]


@pytest.mark.timeout(120)
def test_garbage_on_the_request_queue_leaves_it_and_the_next_upload_is_answered(
    stack, photo, course_dir
):
    sqs = stack.client("sqs")
    garbage = [
        "hello, not json",
        json.dumps({"a": 1}),
        "aGVsbG8gd29ybGQ=",  # base64 of text
        # Looks like a Celery task this worker lacks, without an id, with an undecodable body:
        # Celery itself stopped the worker on this one ("Unrecoverable error").
        json.dumps(
            {
                "body": "x",
                "headers": {"task": "no.such.task"},
                "properties": {},
                "content-type": "application/json",
                "content-encoding": "utf-8",
            }
        ),
    ]
    started = time.monotonic()
    for body in garbage:
        sqs.send_message(QueueUrl=stack.queue_url("req-queue"), MessageBody=body)
    wait_until(lambda: stack.queue_depth("req-queue") == (0, 0), 60, "the garbage to leave")
    cleared = time.monotonic() - started
    print(f"garbage cleared in {cleared:.1f} s")
    worker_log = (stack.log_dir / "worker.log").read_text()
    assert worker_log.count("dropping a request-queue message") == len(garbage)
    assert "Unrecoverable error" not in worker_log

    reply = upload(stack.web_url, photo, "after-garbage.jpg", timeout=30)
    label = course_labels(course_dir, "100")["test_03"]
    assert (reply.status_code, reply.text) == (200, f"after-garbage:{label}")


@pytest.fixture
def output_bucket_missing(stack):
    """The worker's output bucket is gone (as if deleted or denied); provisioned again after."""
    s3 = stack.client("s3")
    bucket = stack.name("out-bucket")
    for key in stack.bucket_keys("out-bucket"):
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)
    yield
    stack.manage("provision")


@pytest.mark.timeout(120)
def test_an_output_failure_is_answered_with_a_5xx_and_recorded(stack, photo, output_bucket_missing):
    started = time.monotonic()
    reply = upload(stack.web_url, photo, "no-output.jpg", timeout=60)
    elapsed = time.monotonic() - started
    print(f"output failure answered in {elapsed:.1f} s")
    request_id = reply.headers["X-Request-Id"]
    assert reply.status_code == 500
    assert reply.text == (
        "no-output.jpg could not be recognised because of a fault on our side; "
        f"it is recorded as request {request_id}."
    )
    # Each delivery's tries plus a visibility timeout, MAX_RECEIVES times, and a poll of the DLQ.
    assert elapsed < 45

    rows = stack.query(
        "SELECT status, result_status, reply_status, error, replied_at"
        " FROM recognition_uploadrequest WHERE id = ?",
        request_id.replace("-", ""),
    )
    assert len(rows) == 1
    status, result_status, reply_status, error, replied_at = rows[0]
    assert (status, result_status, reply_status) == ("failed", 500, 500)
    assert "dead-letter queue" in error and replied_at is not None
    wait_until(lambda: stack.queue_depth("req-dlq") == (0, 0), 15, "the dead letter deleted")
    worker_log = (stack.log_dir / "worker.log").read_text()
    assert worker_log.count(f"storing the output of request {request_id} failed") == 2 * (
        MAX_RECEIVES
    )
