"""Elasticity: 100 and 1,000 concurrent uploads (every one at once) from zero instances.

    .venv/bin/python -m bench.scaling [--workloads 100 1000]

Starts its own moto server, web tier (gunicorn, 2 processes), autoscaler and local instance
runner (the same processes `make run` starts), samples queue depths and app-tier instances every
0.25 s, and prints per workload: wall time, time to the first running instance, to the peak,
back to zero after the last reply, and instance-seconds per request. Each timeline is saved as a
PNG under bench/out/.
"""

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ami.local.harness import (  # noqa: E402
    COURSE_DIR,
    FleetSampler,
    Sample,
    Stack,
    course_labels,
    make_course_gallery,
    scratch_stack,
    upload,
    wait_until,
)

OUT_DIR = Path(__file__).resolve().parent / "out"
WORKLOADS = {"100": "face_images_100", "1000": "face_images_1000"}


def run_workload(stack: Stack, name: str) -> dict[str, float]:
    images = sorted((COURSE_DIR / WORKLOADS[name]).glob("*.jpg"))
    labels = course_labels(COURSE_DIR, name)
    wait_until(lambda: stack.app_tier_states()["running"] == 0, 60, "an idle fleet")
    sampler = FleetSampler(stack)
    sampler.start()
    wait_until(lambda: sampler.samples, 10, "a first sample")
    load_started = sampler.now()
    # 100 uploads come from the course's load generator (100 threads); 1,000 all at once.
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        replies = list(pool.map(lambda path: upload(stack.web_url, path, timeout=600), images))
    last_reply = sampler.now()
    wait_until(lambda: stack.app_tier_states()["running"] == 0, 60, "scale-in to zero")
    time.sleep(1.0)
    samples = sampler.stop()

    correct = sum(
        reply.status_code == 200 and reply.text == f"{path.stem}:{labels[path.stem]}"
        for reply, path in zip(replies, images, strict=True)
    )
    running = [s for s in samples if s.at >= load_started]
    peak = max(s.running for s in running)
    first_running = next(s.at for s in running if s.running > 0)
    at_peak = next(s.at for s in running if s.running == peak)
    back_to_zero = next(s.at for s in running if s.at >= last_reply and s.running == 0)
    instance_seconds = sum(s.running for s in running) * sampler.interval
    plot(name, samples, load_started, last_reply)
    return {
        "requests": len(images),
        "correct": correct,
        "wall time (s)": last_reply - load_started,
        "average latency (s)": (last_reply - load_started) / len(images),
        "peak running": peak,
        "max running+pending": max(s.running + s.pending for s in running),
        "to first running (s)": first_running - load_started,
        "to peak (s)": at_peak - load_started,
        "last reply -> 0 running (s)": back_to_zero - last_reply,
        "instance-seconds per request": instance_seconds / len(images),
    }


def plot(name: str, samples: list[Sample], load_started: float, last_reply: float) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    times = [s.at - load_started for s in samples]
    figure, queue_axis = plt.subplots(figsize=(10, 4.5))
    queue_axis.plot(times, [s.visible for s in samples], label="visible", color="tab:blue")
    queue_axis.plot(times, [s.in_flight for s in samples], label="in flight", color="tab:cyan")
    queue_axis.set_xlabel("seconds since the first upload")
    queue_axis.set_ylabel("request-queue messages")
    fleet_axis = queue_axis.twinx()
    fleet_axis.step(times, [s.running for s in samples], where="post", color="tab:red")
    fleet_axis.set_ylabel("running app-tier instances", color="tab:red")
    queue_axis.axvline(last_reply - load_started, color="grey", linestyle="--")
    queue_axis.legend(loc="upper right")
    queue_axis.set_title(f"{name} concurrent uploads (dashed: last reply)")
    figure.tight_layout()
    figure.savefig(OUT_DIR / f"scaling-{name}.png", dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads", nargs="+", choices=sorted(WORKLOADS), default=["100", "1000"]
    )
    options = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")

    results = {}
    with scratch_stack() as (stack, work):
        stack.deploy(make_course_gallery(COURSE_DIR, work / "gallery"))
        stack.start_web(processes=2)
        stack.start_elastic_tier()
        for name in options.workloads:
            results[name] = run_workload(stack, name)

    print(f"{'measure':<34}" + "".join(f"{name + ' uploads':>16}" for name in results))
    for measure in next(iter(results.values())):
        cells = "".join(f"{results[name][measure]:>16.2f}" for name in results)
        print(f"{measure:<34}{cells}")
    print(f"timelines: {', '.join(str(OUT_DIR / f'scaling-{n}.png') for n in results)}")


if __name__ == "__main__":
    main()
