"""Soak: a steady stream of uploads for minutes; errors and the memory of every process.

    .venv/bin/python -m bench.soak [--minutes 10] [--rate 5] [--warmup 60]

The stack: the emulator, two workers, nginx in front of gunicorn (2 processes), the course's 100
photos enrolled with their labels; the uploads are those photos in turn (each has one right
answer), `--rate` a second, each in its own thread. The resident set (RSS) of every process of
the stack is read every 10 s from `--warmup` seconds after the first upload on, and once more
when the last upload has been answered. A process's growth is that last reading against its
baseline, the first reading: the warm-up (imports on first use, first connections, caches and
thread pools filling, under the same load) is part of the stack starting, not growth. Passes
with 0 errors (a reply that is not 200 with the right label, or no reply within 60 s) and
every process growing < 10%; each process's line says PASS or FAIL against that line.

The autoscaler and the instance runner are not part of it: with them, worker processes come and
go with the load, and a process that lives a minute has no growth to speak of.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")

import django  # noqa: E402

django.setup()

import psutil  # noqa: E402
import requests  # noqa: E402

from ami.local.harness import COURSE_DIR, Stack, course_labels, scratch_stack  # noqa: E402

REPLY_TIMEOUT = 60.0
GROWTH_LIMIT = 0.10
SAMPLE_SECONDS = 10.0


def processes(stack: Stack) -> dict[tuple[str, int], psutil.Process]:
    """Every process of the stack, keyed by (service, pid)."""
    found = {}
    services = [*stack.services, stack.moto.service]
    for service in services:
        if service.process is None or service.process.poll() is not None:
            continue
        root = psutil.Process(service.process.pid)
        for process in [root, *root.children(recursive=True)]:
            found[(service.name, process.pid)] = process
    return found


def rss(process: psutil.Process) -> int | None:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5.0, help="uploads a second")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline")
    args = parser.parse_args()

    labels = course_labels(COURSE_DIR, "100")
    photos = sorted((COURSE_DIR / "face_images_100").glob("*.jpg"))
    with scratch_stack() as (stack, _):
        stack.manage("migrate")
        stack.manage("provision")
        stack.manage(
            "enroll",
            str(COURSE_DIR / "face_images_100"),
            "--labels",
            str(COURSE_DIR / "labels_100.csv"),
        )
        stack.start_worker("worker-1")
        stack.start_worker("worker-2")
        url = stack.start_web(with_front=True)
        print(f"soak: {args.rate:g} uploads/s for {args.minutes:g} min against {url}")

        outcomes: Counter[str] = Counter()
        errors: list[str] = []
        latencies: list[float] = []
        lock = threading.Lock()

        def send(index: int) -> None:
            photo = photos[index % len(photos)]
            name = f"soak{index:05d}_{photo.name}"
            expected = f"{Path(name).stem}:{labels[photo.stem]}"
            started = time.monotonic()
            try:
                with open(photo, "rb") as image:
                    reply = requests.post(
                        url, files={"inputFile": (name, image)}, timeout=REPLY_TIMEOUT
                    )
                outcome = (
                    "right"
                    if (reply.status_code, reply.text) == (200, expected)
                    else (f"{reply.status_code} {reply.text[:80]}")
                )
            except requests.RequestException as error:
                outcome = type(error).__name__
            with lock:
                latencies.append(time.monotonic() - started)
                outcomes["right" if outcome == "right" else "error"] += 1
                if outcome != "right":
                    errors.append(f"{name}: {outcome}")

        baseline: dict[tuple[str, int], int] = {}
        latest: dict[tuple[str, int], int] = {}
        # The last reading in the first half of the measured time: growth that levels off
        # shows in the first half, growth per upload in both.
        halfway: dict[tuple[str, int], int] = {}
        started = time.monotonic()
        duration = args.minutes * 60
        warmup = min(args.warmup, duration / 2)
        next_sample = started + warmup
        sent = 0
        with ThreadPoolExecutor(max_workers=200) as pool:
            while (now := time.monotonic()) - started < duration:
                due = int((now - started) * args.rate)
                while sent < due:
                    pool.submit(send, sent)
                    sent += 1
                if now >= next_sample:
                    for key, process in processes(stack).items():
                        value = rss(process)
                        if value is None:
                            continue
                        baseline.setdefault(key, value)
                        latest[key] = value
                        if now - started < (warmup + duration) / 2:
                            halfway[key] = value
                    next_sample += SAMPLE_SECONDS
                    with lock:
                        print(
                            f"  {now - started:5.0f} s: sent {sent}, right {outcomes['right']}, "
                            f"errors {outcomes['error']}",
                            flush=True,
                        )
                time.sleep(0.01)
        # The pool has waited for every reply.
        ended = time.monotonic()
        for key, process in processes(stack).items():
            value = rss(process)
            if value is not None and key in baseline:
                latest[key] = value

        print(f"\nsent {sent} in {duration:.0f} s; right {outcomes['right']}, errors {len(errors)}")
        for line in errors[:10]:
            print(f"  {line}")
        latencies.sort()
        print(
            f"latency p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
            f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms"
        )
        print(
            f"\nRSS per process: baseline = the first reading, {warmup:.0f} s after the first "
            f"upload (after the warm-up); halfway = {(warmup + duration) / 2:.0f} s;\nend = "
            f"after the last reply, {ended - started:.0f} s after the first upload; growth = "
            f"end against baseline, limit {GROWTH_LIMIT * 100:.0f}%"
        )
        worst = 0.0
        for (service, pid), first in sorted(baseline.items()):
            middle, last = halfway.get((service, pid), first), latest[(service, pid)]
            growth = (last - first) / first
            worst = max(worst, growth)
            print(
                f"  {service:10} pid {pid:7}  {first / 2**20:6.1f} -> {middle / 2**20:6.1f} -> "
                f"{last / 2**20:6.1f} MiB ({growth * 100:+5.1f}%)  "
                f"{'PASS' if growth < GROWTH_LIMIT else 'FAIL'}"
            )
        passed = not errors and worst < GROWTH_LIMIT and sent == outcomes.total()
        print(f"\nlargest growth {worst * 100:+.1f}% (limit {GROWTH_LIMIT * 100:.0f}%)")
        print("PASS" if passed else "FAIL")


if __name__ == "__main__":
    main()
