"""Single-request latency of `POST /api/v1/recognize` versus the course's `POST /`, same image.

    .venv/bin/python -m bench.api [--requests 60] [--image PATH]

Starts its own stack (moto, one worker, gunicorn with two processes; the course gallery's ten
photos enrolled), then sends one request at a time, alternating the two endpoints so both see
the same machine load, after a warm-up. Prints p50 and p95 of each and the JSON path's extra
cost; the target is at most 10% more.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import requests

from ami.local.harness import COURSE_DIR, make_course_gallery, scratch_stack

WARM_UP = 5


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60, help="per endpoint")
    parser.add_argument(
        "--image", type=Path, default=COURSE_DIR / "face_images_100" / "test_00.jpg"
    )
    args = parser.parse_args()
    data = args.image.read_bytes()

    with scratch_stack() as (stack, work), tempfile.TemporaryDirectory() as gallery:
        stack.deploy(make_course_gallery(COURSE_DIR, Path(gallery)))
        key = stack.manage("createapikey", "bench", "--scope", "recognize").stdout.split()[-1]
        stack.start_worker("worker")
        url = stack.start_web(processes=2)

        def course() -> requests.Response:
            return requests.post(
                f"{url}/", files={"inputFile": (args.image.name, data)}, timeout=60
            )

        def json_api() -> requests.Response:
            return requests.post(
                f"{url}/api/v1/recognize",
                files={"image": (args.image.name, data)},
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            )

        seconds: dict[str, list[float]] = {"POST /": [], "POST /api/v1/recognize": []}
        calls = {"POST /": course, "POST /api/v1/recognize": json_api}
        for index in range(WARM_UP + args.requests):
            for name, send in calls.items():
                started = time.perf_counter()
                reply = send()
                elapsed = time.perf_counter() - started
                if reply.status_code != 200:
                    raise SystemExit(f"{name}: {reply.status_code} {reply.text[:200]}")
                if index >= WARM_UP:
                    seconds[name].append(elapsed)

    print(f"{args.requests} requests per endpoint, one at a time, image {args.image.name}")
    figures = {}
    for name, values in seconds.items():
        p50, p95 = percentile(values, 0.5) * 1000, percentile(values, 0.95) * 1000
        figures[name] = (p50, p95)
        print(
            f"  {name:<24} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  "
            f"mean {statistics.mean(values) * 1000:6.1f} ms"
        )
    (course_p50, course_p95), (api_p50, api_p95) = figures.values()
    print(
        f"  JSON path extra: p50 {100 * (api_p50 / course_p50 - 1):+.1f}%, "
        f"p95 {100 * (api_p95 / course_p95 - 1):+.1f}% (target: at most +10%)"
    )


if __name__ == "__main__":
    main()
