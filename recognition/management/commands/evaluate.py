"""``manage.py evaluate --gallery DIR --probes DIR``: accuracy of the engine on labelled probes.

The gallery folder is enrolled into a scratch in-memory Gallery (the database is not touched)
and calibrated for the target FPIR exactly as ``enroll`` would; each probe is recognised with
``engine.recognize``, as a worker would. A probe's true label is its folder name, or its row in
``--labels`` for the course's flat layout. A probe is correct when the predicted name equals its
label; a probe whose label is not enrolled at all is correct when predicted Unknown (open-set:
the right answer for a stranger is "Unknown").

``--enroll-first N`` enrols only the first N photos (by name) of each identity of --gallery and
probes with the rest of them (plus --probes, if given): lfw_dev's protocol is

    manage.py evaluate --gallery lfw_dev/known --enroll-first 3 --probes lfw_dev/strangers \
        --curve tpir_fpir.png

When some probes are strangers (labels not enrolled), the report adds the open-set figures:
TPIR (enrolled people's probes given their own name), FPIR (strangers given any name) at the
operating point used, and the TPIR-vs-FPIR curve over every threshold (numbers, and a PNG with
--curve). A probe without a face counts as not identified, and a stranger without one as not
named.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from recognition.engine import Engine, ImageError
from recognition.gallery import store
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


# FPIRs at which the curve's TPIR is reported as numbers.
CURVE_FPIRS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class ProbeResult:
    source: str
    label: str
    predicted: str
    distance: float | None
    faces: int
    seconds: float
    correct: bool
    # The identity that came closest, and how far its score cleared the operating point it was
    # held against (negative: it did not; None without a face). A margin, not the score: the
    # engine's first and second looks answer on different scales (recognition.engine.core).
    nearest: str | None = None
    margin: float | None = None


def open_set_curve(results: list[ProbeResult], enrolled: set[str]) -> dict | None:
    """TPIR/FPIR at the operating point (margin 0) and the TPIR-vs-FPIR curve over every shift
    of it, from the probes' margins; None when the probes hold no stranger or no enrolled
    person. Pure."""
    known = [r for r in results if r.label in enrolled]
    strangers = [r for r in results if r.label not in enrolled]
    if not known or not strangers:
        return None
    floor = -math.inf
    known_margins = np.array(
        [r.margin if r.margin is not None and r.nearest == r.label else floor for r in known]
    )
    stranger_margins = np.array([r.margin if r.margin is not None else floor for r in strangers])

    def rates(cut: float) -> tuple[float, float]:
        return float((known_margins > cut).mean()), float((stranger_margins > cut).mean())

    tpir, fpir = rates(0.0)
    # Every distinct stranger margin is a shift where FPIR steps; sweeping them (and -inf)
    # traces the whole curve.
    cuts = np.unique(np.concatenate([stranger_margins[np.isfinite(stranger_margins)], [floor]]))
    curve = [rates(float(cut)) for cut in cuts[::-1]]
    at_fpir = []
    for target in CURVE_FPIRS:
        allowed = math.floor(target * len(strangers))
        ranked = np.sort(stranger_margins)[::-1]
        cut = float(ranked[allowed]) if allowed < len(ranked) else floor
        reached_tpir, reached_fpir = rates(cut)
        at_fpir.append(
            {"fpir": target, "margin": cut, "tpir": reached_tpir, "fpir_reached": reached_fpir}
        )
    return {
        "known_probes": len(known),
        "stranger_probes": len(strangers),
        "tpir": tpir,
        "fpir": fpir,
        "rank1_accuracy": float(np.mean([r.nearest == r.label for r in known])),
        "tpir_at_fpir": at_fpir,
        "curve": [{"tpir": t, "fpir": f} for t, f in curve],
    }


def plot_curve(open_set: dict, path: Path, title: str) -> None:
    """The TPIR-vs-FPIR curve as a PNG, the operating point marked (matplotlib: dev tools)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    fpir = [max(point["fpir"], 1e-4) for point in open_set["curve"]]
    tpir = [point["tpir"] for point in open_set["curve"]]
    figure, axes = pyplot.subplots(figsize=(6, 4.5))
    axes.step(fpir, tpir, where="post", label="TPIR vs FPIR")
    axes.plot(
        [max(open_set["fpir"], 1e-4)],
        [open_set["tpir"]],
        "o",
        label=f"operating point: TPIR {open_set['tpir']:.3f} at FPIR {open_set['fpir']:.4f}",
    )
    axes.set_xscale("log")
    axes.set_xlim(1e-3 / 2, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("FPIR (strangers given a name)")
    axes.set_ylabel("TPIR (enrolled people named right)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


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
            nearest = margin = None
            if recognition.has_face:
                predicted, distance = recognition.name, recognition.distance
                match = recognition.faces[0].match
                if match.candidates:
                    nearest = match.candidates[0].name
                    if match.score is not None and match.threshold is not None:
                        margin = match.score - match.threshold
                    elif engine.threshold is not None:
                        # The older distance rule has no score: nearer than it is a margin.
                        margin = engine.threshold - match.distance
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
                nearest,
                margin,
            )
        )
    return results, time.perf_counter() - started


def split_first(
    images: list[LabelledImage], count: int
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """The first ``count`` images of each identity (in name order) and the rest."""
    seen: Counter = Counter()
    first, rest = [], []
    for image in sorted(images, key=lambda image: (image.label, image.source)):
        seen[image.label] += 1
        (first if seen[image.label] <= count else rest).append(image)
    return first, rest


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
        parser.add_argument("--probes", type=Path, metavar="DIR")
        parser.add_argument(
            "--enroll-first",
            type=int,
            metavar="N",
            help="enrol the first N photos (by name) of each --gallery identity, probe the rest",
        )
        parser.add_argument(
            "--target-fpir",
            type=float,
            help="calibrate the scratch gallery for this FPIR (default FACESITE_TARGET_FPIR)",
        )
        parser.add_argument(
            "--curve", type=Path, metavar="PNG", help="plot the TPIR-vs-FPIR curve to this file"
        )
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
        self,
        *args,
        gallery: Path,
        probes: Path | None,
        labels: Path | None,
        as_json: bool,
        enroll_first: int | None,
        target_fpir: float | None,
        curve: Path | None,
        **options,
    ) -> None:
        show_progress = options["verbosity"] > 0
        if probes is None and enroll_first is None:
            raise CommandError("give --probes DIR, or --enroll-first N to probe with the rest")
        if enroll_first is not None and enroll_first < 1:
            raise CommandError(f"--enroll-first must be at least 1, got {enroll_first}")
        try:
            target = store.target_fpir() if target_fpir is None else target_fpir
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        if not 0.0 < target < 1.0:
            raise CommandError(f"--target-fpir must be between 0 and 1, got {target}")
        try:
            gallery_images, gallery_strays = images_by_folder(gallery)
            probe_images, probe_skipped = [], []
            if enroll_first is not None:
                gallery_images, probe_images = split_first(gallery_images, enroll_first)
            if probes is not None:
                more_images, probe_skipped = labelled_images(probes, labels)
                probe_images += more_images
        except EnrolmentError as exc:
            raise CommandError(str(exc)) from exc
        engine = engine_or_command_error()

        run = embed_images(engine, gallery_images, show_progress=show_progress)
        if not run.samples:
            raise CommandError(
                f"no face enrolled: all {len(gallery_images)} images in {gallery} were skipped"
            )
        scratch = run.gallery(engine.embedder_name).calibrated(target)
        results, wall_seconds = recognise_probes(engine, scratch, probe_images, show_progress)
        point = scratch.operating_point
        open_set = open_set_curve(results, set(scratch.identities))
        if curve is not None and open_set is not None:
            try:
                plot_curve(
                    open_set, curve, f"{scratch.embedder}, {len(scratch.identities)} enrolled"
                )
            except ImportError as exc:
                message = f"--curve needs matplotlib (requirements/dev.txt): {exc}"
                raise CommandError(message) from exc

        report = {
            "embedder": engine.embedder_name,
            "threshold": engine.threshold,
            "operating_point": {
                "rule": "open-set score" if engine.threshold is None else "nearest example",
                "threshold": point.threshold if engine.threshold is None else engine.threshold,
                "target_fpir": target,
                "method": point.method if engine.threshold is None else "FACESITE_MATCH_THRESHOLD",
                "explanation": point.explain() if engine.threshold is None else "set by hand",
            },
            "open_set": open_set,
            "gallery": {
                "dir": str(gallery),
                "identities": len(scratch.identities),
                "samples": len(scratch),
                "version": scratch.version,
                "skipped": [asdict(item) for item in gallery_strays + run.skipped],
                "several_faces": run.several_faces,
                "face_choices": run.face_choices,
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
        point = report["operating_point"]
        out.write(
            f"embedder {report['embedder']}, {point['rule']} rule, {point['explanation']}; "
            f"gallery "
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
        open_set = report["open_set"]
        if open_set is not None:
            out.write(
                f"open set ({open_set['known_probes']} probes of enrolled people, "
                f"{open_set['stranger_probes']} of strangers): TPIR {open_set['tpir']:.4f} at "
                f"FPIR {open_set['fpir']:.4f} at the operating point; rank-1 "
                f"accuracy of enrolled people {open_set['rank1_accuracy']:.4f}"
            )
            out.write("TPIR at FPIR (the operating point shifted as the strangers' scores say):")
            for point in open_set["tpir_at_fpir"]:
                out.write(
                    f"  FPIR {point['fpir']:<6g} TPIR {point['tpir']:.4f} "
                    f"(FPIR reached {point['fpir_reached']:.4f}, "
                    f"shift {point['margin']:+.4f})"
                )
        latency = report["latency_ms"]
        out.write(
            f"throughput {report['throughput_images_per_s']:.1f} images/s; latency p50 "
            f"{latency['p50']:.1f} ms, p90 {latency['p90']:.1f} ms, max {latency['max']:.1f} ms"
        )
