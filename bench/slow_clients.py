"""Slow clients against the web tier: 1,500 connections that dribble their headers while
ordinary uploads go on.

    .venv/bin/python -m bench.slow_clients [--slow 1500] [--uploads 20] [--direct]

Each slow client connects, sends a request line and then one header byte every 2 s, never
finishing its header; when the server drops it, it connects again at once (as slowloris does),
so about `--slow` such connections are open throughout. Meanwhile `--uploads` course photos are
sent one a second, each in its own thread. Prints how many slow connections were open, and each
upload's status and time; passes when every upload is answered right within 10 s.

The web tier is nginx in front of gunicorn, as on `make run`. `--direct` runs the same attack
on gunicorn alone as well, to show what the front buys (there the uploads are given up after
15 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")

import django  # noqa: E402

django.setup()

import requests  # noqa: E402

from ami.local.harness import (  # noqa: E402
    COURSE_DIR,
    course_labels,
    make_course_gallery,
    scratch_stack,
)

DRIBBLE_SECONDS = 2.0
UPLOAD_LIMIT_SECONDS = 10.0
DIRECT_GIVE_UP_SECONDS = 15.0


@dataclass
class SlowStats:
    open_now: int = 0
    connects: int = 0
    refused: int = 0
    open_samples: list[int] = field(default_factory=list)


async def dribbler(host: str, port: int, stop: asyncio.Event, stats: SlowStats) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats.refused += 1
            await asyncio.sleep(1)
            continue
        stats.connects += 1
        stats.open_now += 1
        try:
            writer.write(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            await writer.drain()
            while not stop.is_set():
                try:
                    if await asyncio.wait_for(reader.read(1024), DRIBBLE_SECONDS) == b"":
                        break  # the server gave up on us: connect again
                except TimeoutError:
                    writer.write(b"x")
                    await writer.drain()
        except OSError:
            pass
        finally:
            stats.open_now -= 1
            writer.close()


async def attack(port: int, count: int, stop: asyncio.Event, stats: SlowStats) -> None:
    async def sample() -> None:
        while not stop.is_set():
            stats.open_samples.append(stats.open_now)
            await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(dribbler("127.0.0.1", port, stop, stats)) for _ in range(count)]
    tasks.append(asyncio.create_task(sample()))
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)


def upload(url: str, photo: Path, name: str, timeout: float) -> tuple[int | str, str, float]:
    started = time.monotonic()
    try:
        with open(photo, "rb") as image:
            reply = requests.post(url, files={"inputFile": (name, image)}, timeout=timeout)
        return reply.status_code, reply.text, time.monotonic() - started
    except requests.RequestException as error:
        return type(error).__name__, "", time.monotonic() - started


def run_attack(url: str, slow: int, uploads: int, timeout: float, label: str) -> bool:
    port = int(url.rsplit(":", 1)[1])
    labels = course_labels(COURSE_DIR, "100")
    photos = [COURSE_DIR / "face_images_100" / f"test_{i % 10:02d}.jpg" for i in range(uploads)]
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    stats = SlowStats()
    attacker = threading.Thread(
        target=loop.run_until_complete, args=(attack(port, slow, stop, stats),), daemon=True
    )
    attacker.start()
    # Let every slow connection get in first.
    deadline = time.monotonic() + 30
    while stats.open_now < slow * 0.95 and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"\n{label}: {stats.open_now} slow connections open; {uploads} uploads, one a second")

    results: list[tuple[int | str, str, float]] = [("not sent", "", 0.0)] * uploads
    stats.open_samples.clear()  # from here on: while the uploads are sent

    def send(index: int) -> None:
        name = f"slow{index:02d}_{photos[index].name}"
        results[index] = upload(url, photos[index], name, timeout)

    threads = []
    for index in range(uploads):
        thread = threading.Thread(target=send, args=(index,))
        thread.start()
        threads.append(thread)
        time.sleep(1)
    for thread in threads:
        thread.join()
    loop.call_soon_threadsafe(stop.set)
    attacker.join(30)

    right = 0
    for index, (status, text, seconds) in enumerate(results):
        stem = f"slow{index:02d}_{photos[index].stem}"
        ok = status == 200 and text == f"{stem}:{labels[photos[index].stem]}"
        right += ok and seconds < UPLOAD_LIMIT_SECONDS
    times = [seconds for _, _, seconds in results]
    print(
        f"  slow connections open while uploading: min {min(stats.open_samples)}, "
        f"median {statistics.median(stats.open_samples):.0f}; connects {stats.connects}, "
        f"refused {stats.refused}"
    )
    print(f"  upload statuses {[status for status, _, _ in results]}")
    print(
        f"  upload seconds: median {statistics.median(times):.2f}, max {max(times):.2f}; "
        f"right within {UPLOAD_LIMIT_SECONDS:.0f} s: {right}/{uploads}"
    )
    passed = right == uploads
    print(f"  {'PASS' if passed else 'FAIL'}")
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=1500)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--direct", action="store_true", help="also attack gunicorn alone")
    args = parser.parse_args()

    with scratch_stack() as (stack, work):
        stack.deploy(make_course_gallery(COURSE_DIR, work / "gallery"))
        stack.start_worker("worker-1")
        stack.start_worker("worker-2")
        url = stack.start_web(with_front=True)
        passed = run_attack(url, args.slow, args.uploads, 60, "nginx -> gunicorn")
        if args.direct:
            direct = stack.start_web("web-direct")
            run_attack(direct, args.slow, args.uploads, DIRECT_GIVE_UP_SECONDS, "gunicorn alone")
    print("\nPASS" if passed else "\nFAIL")


if __name__ == "__main__":
    main()
