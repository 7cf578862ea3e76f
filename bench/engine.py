"""Face engine benchmark: model load time, single-process throughput and latency, peak memory.

    .venv/bin/python -m bench.engine [--threads N] [--course-limit N]

Load time is measured in fresh subprocesses, from interpreter start to a loaded engine
(imports, Django setup and weights included). Throughput runs the full pipeline a worker runs
(decode + detect + align + embed + match) on one process, one image at a time, over the 1000
64x64 course images, every five_celebrity photo and the first --lfw-limit 250x250 photos of
lfw_dev/strangers (LFW-size photos), matching against a gallery enrolled from
five_celebrity/train. That gallery is too small to calibrate (92 examples: fewer impostor
trials than 1/0.01), so its operating point is the prior and the engine's second opinion never
runs; the last row matches the same LFW photos against a gallery that calibrates (lfw_dev's 80
known people, three photos each, enrolled as `enroll` does, with the mirror image), where
doubtful faces get the second opinion. A few warm-up images run first and are not counted.
The machine's load average is printed too: on 2 shared cores it moves these figures a lot, and
CPU time per image (which contention inflates far less than wall time) is printed beside the
wall-clock ones.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATASETS = REPO.parent / "shared" / "datasets"
WARM_UP = 5

LOAD_SCRIPT = """
import os, sys, time
started = time.perf_counter()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")
import django
django.setup()
import torch, recognition.engine.core  # the imports: torch, torchvision, facenet-pytorch
imported = time.perf_counter()
from recognition.engine import get_engine
get_engine()
loaded = time.perf_counter()
print(time.time(), imported - started, loaded - imported)
"""


def measure_load(runs: int) -> list[tuple[float, float, float]]:
    """(seconds from spawn to a loaded engine, of which imports incl. Django setup, of which
    model loading). The child reports the wall-clock time it was ready, so the interpreter's
    shutdown afterwards is not counted."""
    results = []
    for _ in range(runs):
        spawned = time.time()
        out = subprocess.run(
            [sys.executable, "-c", LOAD_SCRIPT],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        results.append((float(out[0]) - spawned, float(out[1]), float(out[2])))
    return results


def run(engine, gallery, paths: list[Path]) -> dict[str, object]:
    """Recognise every image (bytes in, as a worker gets them) and collect timings."""
    blobs = [path.read_bytes() for path in paths]
    for blob in blobs[:WARM_UP]:
        engine.recognize(blob, gallery)
    latencies, steps, faces = [], {}, 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for blob in blobs:
        began = time.perf_counter()
        result = engine.recognize(blob, gallery)
        latencies.append(time.perf_counter() - began)
        faces += result.has_face
        for step, seconds in result.timings.items():
            steps[step] = steps.get(step, 0.0) + seconds
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    quantiles = statistics.quantiles(latencies, n=10)
    return {
        "images": len(blobs),
        "with_face": faces,
        "per_second": len(blobs) / elapsed,
        "cpu_ms": cpu / len(blobs) * 1000,
        "p50_ms": statistics.median(latencies) * 1000,
        "p90_ms": quantiles[8] * 1000,
        "steps_ms": {step: seconds / len(blobs) * 1000 for step, seconds in steps.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--course-limit", type=int, default=1000, help="course images to run")
    parser.add_argument("--load-runs", type=int, default=3, help="fresh processes to time")
    parser.add_argument("--lfw-limit", type=int, default=300, help="LFW-size photos to run")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")
    if args.threads:
        os.environ["FACESITE_ENGINE_THREADS"] = str(args.threads)
    import django

    django.setup()

    loads = measure_load(args.load_runs)

    import numpy as np
    import torch

    from recognition.engine import get_engine
    from recognition.gallery.matching import Gallery

    engine = get_engine()
    labels, embeddings = [], []
    for path in sorted((DATASETS / "five_celebrity" / "train").glob("*/*")):
        faces = engine.embed_image(path)
        if faces:
            labels.append(path.parent.name)
            embeddings.append(faces[0].embedding)
    gallery = Gallery(engine.embedder_name, labels, np.stack(embeddings))
    known = sorted((DATASETS / "lfw_dev" / "known").iterdir())
    enrolled = [(person.name, path) for person in known for path in sorted(person.iterdir())[:3]]
    lfw_labels, lfw_embeddings = [], []
    for label, path in enrolled:
        faces = engine.embed_image(path, mirror=True)
        if faces:
            lfw_labels.append(label)
            lfw_embeddings.append(faces[0].embedding)
    lfw_gallery = Gallery(engine.embedder_name, lfw_labels, np.stack(lfw_embeddings))

    course = sorted((DATASETS / "course" / "face_images_1000").glob("*.jpg"))[: args.course_limit]
    celebrity = sorted((DATASETS / "five_celebrity").glob("*/*/*"))
    lfw = sorted((DATASETS / "lfw_dev" / "strangers").glob("*/*"))[: args.lfw_limit]
    results = {
        "course 64x64": run(engine, gallery, course),
        "five_celebrity": run(engine, gallery, celebrity),
        "lfw 250x250": run(engine, gallery, lfw),
        "lfw, 80 known": run(engine, lfw_gallery, lfw),
    }
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    walls = sorted(load[0] for load in loads)
    median_load = min(loads, key=lambda load: abs(load[0] - statistics.median(walls)))
    print(
        f"engine {engine.embedder_name}, threshold {engine.threshold}, "
        f"torch threads {torch.get_num_threads()}, gallery {len(gallery)} samples "
        f"of {len(gallery.identities)} people, load average "
        + " ".join(f"{value:.2f}" for value in os.getloadavg())
    )
    print(
        f"model load (fresh process, median of {len(loads)}): {median_load[0]:.2f} s "
        f"= imports {median_load[1]:.2f} s + weights {median_load[2]:.2f} s + start-up "
        f"{median_load[0] - median_load[1] - median_load[2]:.2f} s "
        f"(all runs: {', '.join(f'{wall:.2f}' for wall in walls)} s)"
    )
    print()
    steps = ["decode", "detect", "align", "embed", "match", "second_look"]
    header = (
        f"{'set':<15}{'images':>7}{'faces':>7}{'img/s':>8}{'p50 ms':>8}{'p90 ms':>8}{'cpu ms':>8}"
    )
    print(header + "".join(f"{step.replace('second_look', '2nd'):>8}" for step in steps))
    for name, result in results.items():
        row = (
            f"{name:<15}{result['images']:>7}{result['with_face']:>7}"
            f"{result['per_second']:>8.1f}{result['p50_ms']:>8.1f}{result['p90_ms']:>8.1f}"
            f"{result['cpu_ms']:>8.1f}"
        )
        print(row + "".join(f"{result['steps_ms'].get(step, 0.0):>8.1f}" for step in steps))
    print(
        "(cpu ms: process CPU time per image, all threads; step columns: mean wall ms per image; "
        "2nd: the second look at faces near the operating point)"
    )
    print(f"peak RSS: {peak_rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
