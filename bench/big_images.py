"""Concurrent 40-megapixel PNG uploads: reply times and the web tier's memory.

    .venv/bin/python -m bench.big_images [--counts 10 50] [--workers 2]

Each upload is an 8000x5000 PNG (40 MP, the most FACESITE_MAX_PIXELS allows, ~150 KB): a
flat background with one of the course's 64x64 photos pasted in, enlarged 8x by repeating
pixels, at a position that is a multiple of 8. A worker decodes it reduced 4x (its longer side
to at most 2560), which gives back the photo enlarged 2x the same way (at 1x the face would be
too small to detect once the detector shrinks the image to 1280 px), so the right answer is
the photo's label.

The web tier runs as on `make run`: nginx in front of gunicorn (2 processes). Its memory is
sampled every 0.1 s: the total resident set of gunicorn's master and workers, and of nginx's.
Prints, per batch: replies by status, right answers, the slowest reply, the peak totals.
"""

from __future__ import annotations

import argparse
import contextlib
import io
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
from PIL import Image  # noqa: E402

from ami.local.harness import (  # noqa: E402
    COURSE_DIR,
    Stack,
    course_labels,
    make_course_gallery,
    scratch_stack,
)

SIZE = (8000, 5000)
ENLARGE = 8
GIB = 1024**3
REPLY_LIMIT_SECONDS = 60.0
MEMORY_LIMIT_BYTES = GIB


def forty_megapixel_png(photo: Path) -> bytes:
    canvas = Image.new("RGB", SIZE, (40, 120, 130))
    face = Image.open(photo).convert("RGB")
    face = face.resize((face.width * ENLARGE, face.height * ENLARGE), Image.Resampling.NEAREST)
    canvas.paste(face, (ENLARGE * 450, ENLARGE * 250))
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG")
    return buffer.getvalue()


class MemorySampler(threading.Thread):
    """Peak total RSS of each group of processes (a service's process and its descendants)."""

    def __init__(self, roots: dict[str, int], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.interval = interval
        self.peaks: Counter[str] = Counter()
        self.peak_sum = 0
        self._stop_event = threading.Event()

    def totals(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for name, pid in self.roots.items():
            root = psutil.Process(pid)
            total = 0
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
            totals[name] = total
        return totals

    def run(self) -> None:
        while not self._stop_event.is_set():
            totals = self.totals()
            for name, total in totals.items():
                self.peaks[name] = max(self.peaks[name], total)
            self.peak_sum = max(self.peak_sum, sum(totals.values()))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def post(url: str, name: str, data: bytes) -> tuple[int, str, float]:
    started = time.monotonic()
    reply = requests.post(url, files={"inputFile": (name, data, "image/png")}, timeout=600)
    return reply.status_code, reply.text, time.monotonic() - started


def web_roots(stack: Stack) -> dict[str, int]:
    return {
        service.name: service.process.pid
        for service in stack.services
        if service.name in ("web", "web-front") and service.process is not None
    }


def batch(stack: Stack, url: str, images: list[tuple[str, bytes]], count: int) -> bool:
    labels = course_labels(COURSE_DIR, "100")
    jobs = []
    for index in range(count):
        stem, data = images[index % len(images)]
        jobs.append((f"big{index:03d}_{stem}.png", stem, data))
    sampler = MemorySampler(web_roots(stack))
    before = sampler.totals()
    sampler.start()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=count) as pool:
        replies = list(pool.map(lambda job: post(url, job[0], job[2]), jobs))
    wall = time.monotonic() - started
    sampler.stop()
    statuses = Counter(status for status, _, _ in replies)
    right = sum(
        1
        for (name, stem, _), (status, text, _) in zip(jobs, replies, strict=True)
        if status == 200 and text == f"{Path(name).stem}:{labels[stem]}"
    )
    slowest = max(seconds for _, _, seconds in replies)
    gunicorn, nginx = sampler.peaks["web"], sampler.peaks["web-front"]
    print(f"\n{count} concurrent 40 MP PNGs ({len(jobs[0][2]) // 1024} KB each):")
    print(f"  replies by status    {dict(statuses)}; right {right}/{count}")
    print(f"  slowest reply        {slowest:.1f} s (all done in {wall:.1f} s)")
    print(
        f"  web tier RSS before  gunicorn {before['web'] / 2**20:.0f} MiB, "
        f"nginx {before['web-front'] / 2**20:.0f} MiB"
    )
    print(
        f"  web tier RSS peak    gunicorn {gunicorn / 2**20:.0f} MiB, nginx {nginx / 2**20:.0f} "
        f"MiB, together {sampler.peak_sum / 2**20:.0f} MiB (limit {MEMORY_LIMIT_BYTES / 2**20:.0f})"
    )
    ok = right == count and sampler.peak_sum < MEMORY_LIMIT_BYTES
    if count <= 10:
        ok = ok and slowest < REPLY_LIMIT_SECONDS
    print(f"  {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    photos = [COURSE_DIR / "face_images_100" / f"test_{index:02d}.jpg" for index in range(10)]
    images = [(photo.stem, forty_megapixel_png(photo)) for photo in photos]
    with scratch_stack() as (stack, work):
        stack.deploy(make_course_gallery(COURSE_DIR, work / "gallery"))
        for index in range(args.workers):
            stack.start_worker(f"worker-{index + 1}")
        url = stack.start_web(with_front=True)
        print(f"stack up: {args.workers} workers, nginx -> gunicorn (2 processes) at {url}")
        results = [batch(stack, url, images, count) for count in args.counts]
    print("\nall PASS" if all(results) else "\nsome FAIL")


if __name__ == "__main__":
    main()
