"""Two web tiers on one PostgreSQL, as two web machines would be: a throwaway PostgreSQL server
(Debian's, installed when missing), two gunicorn masters on two ports sharing it, the scaler and
the instance runner; 50 uploads to each tier at once, every reply and every row checked."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from ami.local.harness import Stack, course_labels, upload, wait_until
from ami.local.postgres import PostgresCluster

# About 80 s on 2 cores (half of it starting the stack): it runs with the rest in make test.
pytestmark = pytest.mark.e2e

PER_TIER = 50


@pytest.fixture(scope="module")
def postgres():
    cluster = PostgresCluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def two_tiers(moto_server, tmp_path_factory, course_gallery_dir, postgres):
    stack = Stack(
        moto_server,
        tmp_path_factory.mktemp("postgres"),
        FACESITE_DATABASE_URL=postgres.url,
        FACESITE_MAX_INSTANCES="8",
    )
    stack.deploy(course_gallery_dir)
    first = stack.start_web("web-a", processes=2)
    second = stack.start_web("web-b", processes=2)
    stack.start_elastic_tier()
    yield stack, first, second
    stack.stop_all()


def test_fifty_uploads_to_each_of_two_web_tiers_at_once(two_tiers, course_dir):
    stack, first, second = two_tiers
    labels = course_labels(course_dir, "100")
    images = sorted((course_dir / "face_images_100").glob("*.jpg"))[: 2 * PER_TIER]
    # Interleaved, so both tiers are busy for the whole burst.
    jobs = [(first if index % 2 == 0 else second, path) for index, path in enumerate(images)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        replies = list(pool.map(lambda job: upload(job[0], job[1]), jobs))

    assert [reply.status_code for reply in replies] == [200] * len(jobs)
    assert [reply.text for reply in replies] == [f"{p.stem}:{labels[p.stem]}" for _, p in jobs]

    ids = [reply.headers["X-Request-Id"] for reply in replies]
    rows = stack.query(
        "SELECT id::text, file_name, status, name, reply_status, reply_to, stored_at, queued_at,"
        " started_at, finished_at, replied_at FROM recognition_uploadrequest"
        " WHERE id = ANY(%s::uuid[])",
        ids,
    )
    assert len(rows) == 2 * PER_TIER
    by_id = {row[0]: row for row in rows}
    for request_id, (_, path) in zip(ids, jobs, strict=True):
        _, file_name, status, name, reply_status, *_ = by_id[request_id]
        assert (file_name, status, name, reply_status) == (
            path.name,
            "done",
            labels[path.stem],
            200,
        )
        assert None not in by_id[request_id]
    # Each tier's processes waited for their own uploads: the wake sockets named in the rows
    # are disjoint between the tiers, so results read by one tier reached the other's waiters.
    sockets = {
        tier: {
            by_id[request_id][5] for request_id, (t, _) in zip(ids, jobs, strict=True) if t == tier
        }
        for tier in (first, second)
    }
    assert sockets[first] and sockets[second]
    assert not sockets[first] & sockets[second]
    # Nothing went to SQLite.
    assert not stack.db_path.exists()

    # Each tier's /metrics counts its own uploads; together, all of them.
    counted = 0.0
    for tier in (first, second):
        text = requests.get(f"{tier}/metrics", timeout=10).text
        line = next(
            line
            for line in text.splitlines()
            if line.startswith('facesite_requests_total{endpoint="upload",status="200"}')
        )
        counted += float(line.split()[-1])
    assert counted == 2 * PER_TIER
    wait_until(lambda: stack.queue_depth("req-queue") == (0, 0), 15, "request queue empty")
    wait_until(lambda: stack.queue_depth("resp-queue") == (0, 0), 15, "response queue empty")
    wait_until(lambda: stack.app_tier_states()["running"] == 0, 60, "scale-in to zero")
