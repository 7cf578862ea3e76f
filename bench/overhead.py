"""CPU per request by tier, against the engine's own CPU per image on the same images.

    .venv/bin/python -m bench.overhead [--requests 300] [--concurrency 20] [--instances 2]
        [--profile DIR]

`--profile DIR` also samples the web tier and the workers with py-spy (requirements/dev.txt)
during the load and writes their collapsed stacks there (web.txt, workers.txt); the CPU figures
of such a run include py-spy's interruptions and are not the ones to quote.

Starts its own emulator, web tier (gunicorn, 2 processes, behind nginx as `make run` serves it),
autoscaler and local instance runner, then sends the course's photos (face_images_1000's first
N) at a fixed concurrency, from zero instances until the fleet is back at zero. CPU time is
summed per tier over that window (psutil, every process of the tier, plus the children each
process reaped), so other jobs on the machine change the figures little, unlike wall time:

    web        gunicorn (master and workers) and nginx
    workers    the app-tier worker processes the runner forked (engine included)
    emulator   moto (AWS's share on AWS), shown apart
    scaler / runner  shown apart: the runner is the emulated EC2, not ours

The emulator also counts the AWS calls it serves over the same window (ami/local/call_counts.py),
and each call of a request's path is put down to the tier that makes it: unlike CPU figures,
these counts do not move from one run to the next.

Then the same images go through `recognition.engine.get_engine()` in this process, with one
torch thread as on an instance, and the engine's CPU per image is measured (the median of three
passes). The figure the issue asks for is (web + workers - engine) / engine: facesite's own CPU
per request beyond the engine's, as a share of the engine's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from ami.local.call_counts import COUNTS_PATH
from ami.local.harness import (
    COURSE_DIR,
    Stack,
    course_labels,
    make_course_gallery,
    scratch_stack,
    upload,
    wait_until,
)
from facesite.aws.names import Names

SET_NAME = "1000"
# Before the load, each tier's CPU is also measured at rest for this long: what it spends per
# second with nothing to do (polling), apart from what requests cost.
IDLE_SECONDS = 10.0
# The engine's figure is the denominator of the ratio: one pass over 300 images read anywhere
# from 19.4 to 23.3 ms an image in back-to-back runs of the same code, so it takes the median.
ENGINE_PASSES = 3


@dataclass(frozen=True)
class TierCpu:
    """CPU seconds of each tier at one moment, including what each process's reaped children
    used (so workers that exited during the window still count)."""

    seconds: dict[str, float]

    def minus(self, earlier: TierCpu) -> dict[str, float]:
        return {tier: self.seconds[tier] - earlier.seconds.get(tier, 0.0) for tier in self.seconds}


def _process_seconds(process: psutil.Process, with_reaped: bool = True) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    own = times.user + times.system
    return own + (times.children_user + times.children_system if with_reaped else 0.0)


def _system_seconds(root: psutil.Process) -> float:
    """Kernel CPU of the root and its live descendants (system calls, scheduling, sockets)."""
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.cpu_times().system
    return total


def _tree_seconds(root: psutil.Process) -> float:
    """The root, its live descendants, and every child any of them reaped."""
    try:
        descendants = root.children(recursive=True)
    except psutil.Error:
        descendants = []
    return _process_seconds(root) + sum(_process_seconds(child) for child in descendants)


def _children_seconds(root: psutil.Process) -> float:
    """The root's live descendants and the children it reaped, not the root's own CPU."""
    try:
        times = root.cpu_times()
        reaped = times.children_user + times.children_system
        descendants = root.children(recursive=True)
    except psutil.Error:
        return 0.0
    return reaped + sum(_process_seconds(child) for child in descendants)


def tier_processes(stack: Stack) -> dict[str, psutil.Process]:
    by_name = {service.name: service.process for service in stack.services if service.process}
    return {name: psutil.Process(process.pid) for name, process in by_name.items()} | {
        "moto": psutil.Process(stack.moto.process.pid)
    }


def snapshot(processes: dict[str, psutil.Process]) -> TierCpu:
    return TierCpu(
        {
            "web": _tree_seconds(processes["web"]) + _tree_seconds(processes["web-front"]),
            "nginx": _tree_seconds(processes["web-front"]),
            "web kernel": _system_seconds(processes["web"]),
            "workers": _children_seconds(processes["runner"]),
            "emulator": _tree_seconds(processes["moto"]),
            "scaler": _tree_seconds(processes["scaler"]),
            "runner": _process_seconds(processes["runner"], with_reaped=False),
        }
    )


def emulator_calls(stack: Stack) -> Counter[str]:
    """The calls the stack's emulator has served so far, by call name."""
    return Counter(requests.get(stack.moto.endpoint + COUNTS_PATH, timeout=10).json())


def request_path_tiers(names: Names) -> dict[str, str]:
    """The tier that makes each call of a request's path, by the name the emulator counts it
    under; other calls (the scaler's, the runner's, self-stop's, gallery snapshots) are none."""
    web = [
        f"s3 PUT {names.input_bucket}",
        f"sqs SendMessage {names.request_queue}",
        *(
            f"sqs {operation} {queue}"
            for operation in ("ReceiveMessage", "DeleteMessageBatch")
            for queue in (names.response_queue, names.request_dead_letter_queue)
        ),
    ]
    workers = [
        f"sqs ReceiveMessage {names.request_queue}",
        f"sqs DeleteMessage {names.request_queue}",
        f"sqs DeleteMessageBatch {names.request_queue}",
        f"s3 GET {names.input_bucket}",
        f"s3 PUT {names.output_bucket}",
        f"sqs SendMessage {names.response_queue}",
    ]
    return dict.fromkeys(web, "web") | dict.fromkeys(workers, "workers")


def course_images(count: int) -> list[Path]:
    return sorted((COURSE_DIR / f"face_images_{SET_NAME}").glob("*.jpg"))[:count]


def start_profilers(processes: dict[str, psutil.Process], out: Path) -> list[subprocess.Popen]:
    """py-spy on gunicorn's master and on the runner, following the processes they fork. The
    web tier's samples are those of the thread holding the GIL (its hundreds of threads spend
    their time waiting, which py-spy cannot always tell from work); the workers' are all, as
    torch computes without the GIL."""
    out.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    return [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(processes[name].pid),
                "--subprocesses",
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(out / f"{label}.txt"),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, label, extra in (("web", "web", ["--gil"]), ("runner", "workers", []))
    ]


def stop_profilers(profilers: list[subprocess.Popen]) -> None:
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    for profiler in profilers:
        profiler.wait(60)


def run_load(
    stack: Stack, images: list[Path], concurrency: int, profile_dir: Path | None = None
) -> tuple[dict[str, float], Counter[str]]:
    """The CPU figures of the load's window (and of rest before it), and the AWS calls the
    emulator served in that window."""
    labels = course_labels(COURSE_DIR, SET_NAME)
    processes = tier_processes(stack)
    wait_until(lambda: stack.app_tier_states()["running"] == 0, 60, "an idle fleet")
    idle_start = snapshot(processes)
    time.sleep(IDLE_SECONDS)
    idle = {
        f"idle {tier}": seconds / IDLE_SECONDS
        for tier, seconds in snapshot(processes).minus(idle_start).items()
    }
    profilers = start_profilers(processes, profile_dir) if profile_dir else []
    before = snapshot(processes)
    calls_before = emulator_calls(stack)
    window_started = time.monotonic()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        replies = list(pool.map(lambda path: upload(stack.web_url, path, timeout=600), images))
    load_seconds = time.monotonic() - started
    wait_until(lambda: stack.app_tier_states()["running"] == 0, 120, "scale-in to zero", 0.25)
    # Stopped workers finish their warm shutdown and are reaped by the runner.
    time.sleep(2.0)
    spent = snapshot(processes).minus(before)
    calls = emulator_calls(stack) - calls_before
    window_seconds = time.monotonic() - window_started
    stop_profilers(profilers)
    correct = sum(
        reply.status_code == 200 and reply.text == f"{path.stem}:{labels[path.stem]}"
        for reply, path in zip(replies, images, strict=True)
    )
    figures = {
        "correct": correct,
        "load seconds": load_seconds,
        "window seconds": window_seconds,
        **spent,
        **idle,
    }
    return figures, calls


def engine_cpu_per_image(images: list[Path], gallery_dir: Path) -> float:
    """CPU seconds per image of the engine alone, as a worker runs it (one torch thread): the
    median of ENGINE_PASSES passes over the images."""
    os.environ["FACESITE_ENGINE_THREADS"] = "1"
    import django

    django.setup()
    from recognition.engine import get_engine
    from recognition.gallery.enrollment import embed_images, labelled_images

    engine = get_engine()
    gallery = embed_images(engine, labelled_images(gallery_dir)[0], show_progress=False).gallery(
        engine.embedder_name
    )
    payloads = [path.read_bytes() for path in images]
    engine.recognize(payloads[0], gallery)  # first-call allocations are not per-image work
    passes = []
    for _ in range(ENGINE_PASSES):
        started = time.process_time()
        for data in payloads:
            engine.recognize(data, gallery)
        passes.append((time.process_time() - started) / len(payloads))
    return statistics.median(passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--profile", type=Path, help="write py-spy stacks of each tier here")
    options = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")

    images = course_images(options.requests)
    load_average = os.getloadavg()
    with scratch_stack(
        emulator_env={"FACESITE_EMULATOR_COUNT_CALLS": "1"},
        FACESITE_MAX_INSTANCES=str(options.instances),
    ) as (stack, work):
        gallery_dir = make_course_gallery(COURSE_DIR, work / "gallery")
        stack.deploy(gallery_dir)
        stack.start_web(processes=2, with_front=True)
        stack.start_elastic_tier()
        figures, calls = run_load(stack, images, options.concurrency, options.profile)
        tiers, prefix = request_path_tiers(stack.names), stack.prefix
        engine_seconds = engine_cpu_per_image(images, gallery_dir)

    count = len(images)
    per_request_ms = {
        tier: figures[tier] / count * 1000
        for tier in ("web", "nginx", "web kernel", "workers", "emulator", "scaler", "runner")
    }
    engine_ms = engine_seconds * 1000
    ratio = (per_request_ms["web"] + per_request_ms["workers"] - engine_ms) / engine_ms
    print(
        f"{count} uploads at concurrency {options.concurrency}, {options.instances} instances: "
        f"{figures['correct']}/{count} right in {figures['load seconds']:.1f} s; "
        f"load average before {load_average[0]:.1f}, after {os.getloadavg()[0]:.1f}"
    )
    print(f"{'tier':<28}{'CPU ms per request':>20}")
    for tier, label in (
        ("web", "web (gunicorn + nginx)"),
        ("nginx", "  of which nginx"),
        ("web kernel", "  of which gunicorn kernel"),
        ("workers", "workers (engine included)"),
        ("emulator", "emulator (moto)"),
        ("scaler", "scaler"),
        ("runner", "runner (emulated EC2)"),
    ):
        print(f"{label:<28}{per_request_ms[tier]:>20.1f}")
    print(f"{'engine alone, per image':<28}{engine_ms:>20.1f}")
    print(
        f"measured over {figures['window seconds']:.1f} s (load, scale-in, 2 s of rest); at rest "
        f"the web tier spends {figures['idle web'] * 1000:.0f} ms CPU per second, the "
        f"emulator {figures['idle emulator'] * 1000:.0f}, the scaler "
        f"{figures['idle scaler'] * 1000:.0f}"
    )
    print(f"ratio (web + workers - engine) / engine: {ratio:.2f}")
    print_calls(calls, tiers, count, prefix)


def print_calls(calls: Counter[str], tiers: dict[str, str], count: int, prefix: str) -> None:
    print("AWS calls per request, counted by the emulator over the same window")
    for tier in ("web", "workers", None):
        mine = {name: n for name, n in calls.items() if tiers.get(name) == tier}
        label = tier or "other (scaler, runner, self-stop, gallery)"
        print(f"{label:<44}{sum(mine.values()) / count:>8.2f}")
        if tier:
            for name, n in sorted(mine.items(), key=lambda item: -item[1]):
                print(f"  {name.replace(f' {prefix}-', ' '):<42}{n / count:>8.2f}")


if __name__ == "__main__":
    main()
