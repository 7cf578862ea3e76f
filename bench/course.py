"""The course's protocol against a running stack (`make run`): N uploads from 100 threads.

    .venv/bin/python -m bench.course [--url http://127.0.0.1:8000] [--set 100|1000]

Like the course's grader, it counts a reply only on HTTP 200 with the right label, samples the
running app-tier instances every 0.25 s through the emulator's EC2 API, and prints the wall
time, the average latency (wall / N), the peak of running instances, and how long after the
last reply the fleet was back at zero running.
"""

import argparse
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")

import django  # noqa: E402

django.setup()

import requests  # noqa: E402

from ami.local.harness import COURSE_DIR, course_labels  # noqa: E402
from facesite import aws  # noqa: E402
from facesite.aws import readers  # noqa: E402
from facesite.aws.names import Role, State  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/")
    parser.add_argument("--set", choices=["100", "1000"], default="100")
    parser.add_argument("--threads", type=int, default=100)
    args = parser.parse_args()

    labels = course_labels(COURSE_DIR, args.set)
    images = sorted((COURSE_DIR / f"face_images_{args.set}").glob("*.jpg"))
    samples: list[tuple[float, int]] = []
    sampling = threading.Event()

    # The light read: at 4 samples a second, DescribeInstances itself would take a noticeable
    # share of the emulator's CPU from the run being measured.
    reader = readers.ListedInstances(aws.names().prefix, Role.APP_TIER, states=[State.RUNNING])

    def sample() -> None:
        while not sampling.is_set():
            samples.append((time.monotonic(), len(reader.read(aws.client("ec2")))))
            sampling.wait(0.25)

    def send(path) -> bool:
        with open(path, "rb") as image:
            reply = requests.post(args.url, files={"inputFile": (path.name, image)}, timeout=300)
        label = reply.text.split(":", 1)[1] if ":" in reply.text else ""
        return reply.status_code == 200 and label == labels[path.stem]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    with ThreadPoolExecutor(args.threads) as pool:
        right = sum(pool.map(send, images))
    ended = time.monotonic()
    deadline = ended + 30
    while time.monotonic() < deadline and (not samples or samples[-1][1] or samples[-1][0] < ended):
        time.sleep(0.05)
    sampling.set()
    sampler.join()
    back_to_zero = next(
        (at - ended for at, running in samples if at >= ended and running == 0), None
    )
    wall = ended - started
    print(
        f"{right}/{len(images)} right in {wall:.1f} s (average {wall / len(images):.2f} s/request)"
    )
    print(f"peak running app-tier instances: {max(running for _, running in samples)}")
    zero = "not within 30 s" if back_to_zero is None else f"{back_to_zero:.1f} s"
    print(f"0 running after the last reply: {zero}")


if __name__ == "__main__":
    main()
