"""The elastic app tier end to end: from zero instances to the maximum under a burst and back to
zero after it, with real moto, the real scaler, the real instance runner forking real workers,
and course photos over HTTP. Timings are reported by bench/scaling.py; here, only behaviour."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from ami.local.harness import FleetSampler, Stack, course_labels, upload, wait_until

pytestmark = pytest.mark.e2e

MAX_INSTANCES = 15


@pytest.fixture(scope="module")
def elastic(moto_server, tmp_path_factory, course_gallery_dir):
    stack = Stack(
        moto_server,
        tmp_path_factory.mktemp("elastic"),
        FACESITE_MAX_INSTANCES=str(MAX_INSTANCES),
    )
    stack.deploy(course_gallery_dir)
    stack.start_web(processes=2)
    stack.start_elastic_tier()
    yield stack
    stack.stop_all()


def upload_all(url, paths, threads=100):
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda path: upload(url, path), paths))


def test_burst_scales_out_to_the_maximum_and_back_to_zero(elastic, course_dir):
    labels = course_labels(course_dir, "100")
    images = sorted((course_dir / "face_images_100").glob("*.jpg"))
    sampler = FleetSampler(elastic)
    sampler.start()
    try:
        wait_until(lambda: sampler.samples, 10, "a first sample")
        assert sampler.samples[-1].running == 0
        replies = upload_all(elastic.web_url, images)
        wait_until(lambda: elastic.app_tier_states()["running"] == 0, 30, "scale-in to zero")
    finally:
        samples = sampler.stop()

    assert [reply.status_code for reply in replies] == [200] * len(images)
    assert {reply.text for reply in replies} == {f"{p.stem}:{labels[p.stem]}" for p in images}
    assert max(sample.running for sample in samples) == MAX_INSTANCES
    assert all(sample.running + sample.pending <= MAX_INSTANCES for sample in samples)
    assert sum(elastic.app_tier_states().values()) <= MAX_INSTANCES
    wait_until(lambda: elastic.queue_depth("req-queue") == (0, 0), 15, "request queue empty")
    wait_until(lambda: elastic.queue_depth("resp-queue") == (0, 0), 15, "response queue empty")


def test_terminating_busy_instances_loses_no_upload(elastic, course_dir):
    labels = course_labels(course_dir, "1000")
    images = sorted((course_dir / "face_images_1000").glob("*.jpg"))[:300]
    replies = []
    load = threading.Thread(target=lambda: replies.extend(upload_all(elastic.web_url, images)))
    load.start()
    ec2 = elastic.client("ec2")

    def busy_instances():
        # Instances running while the queue holds work in flight: they are processing tasks.
        if elastic.queue_depth("req-queue")[1] < 3:
            return []
        reservations = ec2.describe_instances(
            Filters=[
                {"Name": "tag:facesite:prefix", "Values": [elastic.prefix]},
                {"Name": "instance-state-name", "Values": ["running"]},
            ]
        )["Reservations"]
        running = [i["InstanceId"] for r in reservations for i in r["Instances"]]
        return running if len(running) >= 10 else []

    victims = wait_until(busy_instances, 60, "ten busy instances")[:3]
    ec2.terminate_instances(InstanceIds=victims)
    load.join(300)

    assert not load.is_alive()
    assert [reply.status_code for reply in replies] == [200] * len(images)
    assert sorted(reply.text for reply in replies) == sorted(
        f"{p.stem}:{labels[p.stem]}" for p in images
    )
    wait_until(lambda: elastic.app_tier_states()["running"] == 0, 30, "scale-in to zero")
