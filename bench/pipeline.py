"""Pipeline overhead and throughput against real processes (moto, Celery workers, gunicorn).

    .venv/bin/python -m bench.pipeline [--requests 300] [--clients 16]

Prints:
- engine-only latency p50 on the course images (in this process, same engine as the workers),
- single-request HTTP latency p50 with one warm worker, and the difference (the pipeline's cost),
- sustained throughput with one and with two worker processes, as a fraction of engine-only
  throughput on the same images.
"""

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")

import django  # noqa: E402
import numpy as np  # noqa: E402

django.setup()

from ami.local.harness import (  # noqa: E402
    COURSE_DIR,
    course_labels,
    make_course_gallery,
    scratch_stack,
    upload,
    wait_until,
)
from recognition.engine import get_engine  # noqa: E402
from recognition.gallery.matching import Gallery  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def course_images() -> list[Path]:
    return sorted((COURSE_DIR / "face_images_1000").glob("*.jpg"))


def engine_only(images: list[Path]) -> tuple[float, float]:
    """(p50 seconds per image, images per second) for the engine alone, warm."""
    engine = get_engine()
    labels = course_labels(COURSE_DIR, "100")
    gallery_rows = [
        (
            labels[f"test_{i:02d}"],
            engine.embed_image(COURSE_DIR / "face_images_100" / f"test_{i:02d}.jpg")[0],
        )
        for i in range(10)
    ]
    gallery = Gallery(
        engine.embedder_name,
        [label for label, _ in gallery_rows],
        np.stack([face.embedding for _, face in gallery_rows]),
    )
    blobs = [path.read_bytes() for path in images]
    for blob in blobs[:20]:
        engine.recognize(blob, gallery)
    latencies = []
    started = time.perf_counter()
    for blob in blobs:
        begin = time.perf_counter()
        engine.recognize(blob, gallery)
        latencies.append(time.perf_counter() - begin)
    elapsed = time.perf_counter() - started
    return statistics.median(latencies), len(blobs) / elapsed


def http_latencies(url: str, images: list[Path]) -> list[float]:
    latencies = []
    for path in images:
        begin = time.perf_counter()
        reply = upload(url, path)
        latencies.append(time.perf_counter() - begin)
        assert reply.status_code == 200, reply.text
    return latencies


def http_throughput(url: str, images: list[Path], clients: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        replies = list(pool.map(lambda path: upload(url, path), images))
    elapsed = time.perf_counter() - started
    assert all(reply.status_code == 200 for reply in replies)
    return len(images) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=16)
    options = parser.parse_args()
    images = course_images()[: options.requests]

    engine_p50, engine_rate = engine_only(images)

    with scratch_stack() as (stack, work):
        stack.deploy(make_course_gallery(COURSE_DIR, work / "gallery"))
        stack.start_worker("worker-1")
        url = stack.start_web(processes=2)
        http_latencies(url, images[:20])  # warm up: connections, gallery fetch

        single = http_latencies(url, images[:100])
        one_worker = http_throughput(url, images, options.clients)
        stack.start_worker("worker-2")
        two_workers = http_throughput(url, images, options.clients)
        wait_until(lambda: stack.queue_depth("req-queue") == (0, 0), 30, "queue drained")

    http_p50 = statistics.median(single)
    print(f"{'measure':<44}{'value':>12}")
    print(f"{'engine-only latency p50 (ms)':<44}{engine_p50 * 1000:>12.1f}")
    print(f"{'engine-only throughput (images/s)':<44}{engine_rate:>12.1f}")
    print(f"{'HTTP single-request latency p50 (ms)':<44}{http_p50 * 1000:>12.1f}")
    print(f"{'HTTP single-request latency p90 (ms)':<44}{percentile(single, 0.9) * 1000:>12.1f}")
    overhead = (http_p50 - engine_p50) * 1000
    print(f"{'pipeline overhead p50 (ms, target <= 40)':<44}{overhead:>12.1f}")
    for label, rate in (("1 worker", one_worker), ("2 workers", two_workers)):
        print(f"{f'throughput, {label} (requests/s)':<44}{rate:>12.1f}")
        fraction = rate / engine_rate
        print(f"{'  as fraction of engine-only (target >= 0.6)':<44}{fraction:>12.2f}")


if __name__ == "__main__":
    main()
