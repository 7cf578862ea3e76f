"""``manage.py evaluate --gallery DIR --probes DIR``: accuracy of the engine on labelled probes.

The gallery folder is enrolled into a scratch in-memory Gallery (the database is not touched);
each probe is recognised with ``engine.recognize``, as a worker would. A probe's true label is
its folder name, or its row in ``--labels`` for the course's flat layout. A probe is correct
when the predicted name equals its label; a probe whose label is not enrolled at all is correct
when predicted Unknown (open-set: the right answer for a stranger is "Unknown").
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from recognition.engine import Engine, ImageError
from recognition.gallery.enrollment import (
    EnrolmentError,
    LabelledImage,
    embed_images,
    images_by_folder,
    labelled_images,
)
from recognition.gallery.matching import UNKNOWN, Gallery
from recognition.management.engine import engine_or_command_error

# Predictions that are not a gallery answer; parenthesised so they cannot clash with a label.
NO_FACE = "(no face)"
UNREADABLE = "(unreadable)"


@dataclass(frozen=True)
class ProbeResult:
    source: str
    label: str
    predicted: str
    distance: float | None
    faces: int
    seconds: float
    correct: bool


def recognise_probes(
    engine: Engine, gallery: Gallery, probes: list[LabelledImage], show_progress: bool
) -> tuple[list[ProbeResult], float]:
    """Every probe's result, and the wall time of the whole pass in seconds."""
    results = []
    started = time.perf_counter()
    for probe in tqdm(
        probes, desc="recognising", unit="img", file=sys.stderr, disable=not show_progress
    ):
        expected = probe.label if probe.label in gallery.identities else UNKNOWN
        began = time.perf_counter()
        try:
            recognition = engine.recognize(probe.path.read_bytes(), gallery)
        except (OSError, ImageError):
            predicted, distance, faces = UNREADABLE, None, 0
        else:
            faces = len(recognition.faces)
            if recognition.has_face:
                predicted, distance = recognition.name, recognition.distance
            else:
                predicted, distance = NO_FACE, None
        seconds = time.perf_counter() - began
        results.append(
            ProbeResult(
                probe.source,
                probe.label,
                predicted,
                distance,
                faces,
                seconds,
                predicted == expected,
            )
        )
    return results, time.perf_counter() - started


def summarise(results: list[ProbeResult], wall_seconds: float) -> dict:
    """Accuracy, per-identity counts, confusions and timing of a non-empty list of results."""
    per_identity: dict[str, dict[str, int]] = defaultdict(lambda: {"correct": 0, "total": 0})
    confusions: dict[str, Counter] = defaultdict(Counter)
    mistakes: Counter = Counter()
    for result in results:
        per_identity[result.label]["total"] += 1
        per_identity[result.label]["correct"] += result.correct
        confusions[result.label][result.predicted] += 1
        if not result.correct:
            mistakes[result.label, result.predicted] += 1
    latencies_ms = np.array([result.seconds for result in results]) * 1000
    correct = sum(result.correct for result in results)
    return {
        "probes": len(results),
        "correct": correct,
        "accuracy": correct / len(results),
        "per_identity": {
            label: {**counts, "accuracy": counts["correct"] / counts["total"]}
            for label, counts in sorted(per_identity.items())
        },
        # The full confusion matrix, true label -> predicted -> count (diagonal included).
        "confusions": {
            label: dict(sorted(predicted.items()))
            for label, predicted in sorted(confusions.items())
        },
        "mistakes": [
            {"true": label, "predicted": predicted, "count": count}
            for (label, predicted), count in mistakes.most_common()
        ],
        "no_face": sum(result.predicted == NO_FACE for result in results),
        "unreadable": sum(result.predicted == UNREADABLE for result in results),
        "throughput_images_per_s": len(results) / wall_seconds,
        "latency_ms": {
            "p50": float(np.percentile(latencies_ms, 50)),
            "p90": float(np.percentile(latencies_ms, 90)),
            "max": float(latencies_ms.max()),
        },
        "wall_seconds": wall_seconds,
    }


class Command(BaseCommand):
    help = (
        "Enrol --gallery DIR (one sub-folder per identity) into a scratch gallery, recognise "
        "every probe and report accuracy, per-identity results, confusions, throughput and "
        "latency. Probes are labelled by their sub-folder, or, for a flat folder, by --labels "
        "(CSV 'Image,Results', Image = file stem). Nothing is written to the database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--gallery", type=Path, required=True, metavar="DIR")
        parser.add_argument("--probes", type=Path, required=True, metavar="DIR")
        parser.add_argument(
            "--labels",
            type=Path,
            metavar="FILE",
            help="CSV 'Image,Results' for a flat probe folder",
        )
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="print one JSON document"
        )

    def handle(
        self, *args, gallery: Path, probes: Path, labels: Path | None, as_json: bool, **options
    ) -> None:
        show_progress = options["verbosity"] > 0
        try:
            gallery_images, gallery_strays = images_by_folder(gallery)
            probe_images, probe_skipped = labelled_images(probes, labels)
        except EnrolmentError as exc:
            raise CommandError(str(exc)) from exc
        engine = engine_or_command_error()

        run = embed_images(engine, gallery_images, show_progress=show_progress)
        if not run.samples:
            raise CommandError(
                f"no face enrolled: all {len(gallery_images)} images in {gallery} were skipped"
            )
        scratch = run.gallery(engine.embedder_name)
        results, wall_seconds = recognise_probes(engine, scratch, probe_images, show_progress)

        report = {
            "embedder": engine.embedder_name,
            "threshold": engine.threshold,
            "gallery": {
                "dir": str(gallery),
                "identities": len(scratch.identities),
                "samples": len(scratch),
                "version": scratch.version,
                "skipped": [asdict(item) for item in gallery_strays + run.skipped],
                "several_faces": run.several_faces,
            },
            "probes_dir": str(probes),
            "probes_skipped": [asdict(item) for item in probe_skipped],
            **summarise(results, wall_seconds),
            "results": [asdict(result) for result in results],
        }
        if as_json:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self._print_text(report)

    def _print_text(self, report: dict) -> None:
        out = self.stdout
        gallery = report["gallery"]
        out.write(
            f"embedder {report['embedder']}, threshold {report['threshold']}; gallery "
            f"{gallery['identities']} identities, {gallery['samples']} samples "
            f"({len(gallery['skipped'])} gallery images skipped)"
        )
        for item in gallery["skipped"]:
            out.write(f"  gallery skipped {item['source']}: {item['reason']}")
        for item in report["probes_skipped"]:
            out.write(f"  probe skipped {item['source']}: {item['reason']}")
        out.write(
            f"accuracy {report['accuracy']:.4f} ({report['correct']}/{report['probes']}); "
            f"no face {report['no_face']}, unreadable {report['unreadable']}"
        )
        out.write("per identity:")
        for label, counts in report["per_identity"].items():
            out.write(f"  {label}: {counts['correct']}/{counts['total']}")
        mistakes = report["mistakes"]
        out.write("confusions (true -> predicted: count):" if mistakes else "confusions: none")
        for mistake in mistakes:
            out.write(f"  {mistake['true']} -> {mistake['predicted']}: {mistake['count']}")
        latency = report["latency_ms"]
        out.write(
            f"throughput {report['throughput_images_per_s']:.1f} images/s; latency p50 "
            f"{latency['p50']:.1f} ms, p90 {latency['p90']:.1f} ms, max {latency['max']:.1f} ms"
        )
