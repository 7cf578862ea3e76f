"""``manage.py recognize IMAGE...``: name the face in each image, exactly as a worker would."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from recognition.engine import ImageError, Recognition
from recognition.gallery import store
from recognition.gallery.matching import GalleryFormatError
from recognition.management.engine import engine_or_command_error


class Command(BaseCommand):
    help = (
        "Print '<stem>:<name>' for each IMAGE (stem = file name without extension), using the "
        "face engine and the latest gallery snapshot of its embedder, like the workers. The "
        "largest face is named; 'Unknown' means its score is below the gallery's operating "
        "point (calibrated for FACESITE_TARGET_FPIR). An image "
        "with no face prints '<stem>:' (empty name) and a note on stderr. An image that cannot "
        "be read gets a one-line error on stderr and no output line; the exit status is then 1."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="after each line, every face's top-k candidates with distances, and timings",
        )

    def handle(self, *args, images: list[Path], verbose: bool, **options) -> None:
        engine = engine_or_command_error()
        try:
            gallery = store.current_gallery(engine.embedder_name)
        except GalleryFormatError as exc:
            raise CommandError(f"the latest {engine.embedder_name} snapshot: {exc}") from exc
        if not len(gallery):
            self.stderr.write(
                f"note: the {engine.embedder_name} gallery is empty (run enroll): every face "
                "will be Unknown"
            )
        if verbose:
            self.stdout.write(
                f"# gallery {gallery.embedder} {gallery.version[:12]}: "
                f"{len(gallery.identities)} identities, {len(gallery)} samples; "
                + (
                    f"operating point: {gallery.operating_point.explain()}"
                    if engine.threshold is None
                    else f"nearest example within {engine.threshold} (FACESITE_MATCH_THRESHOLD)"
                )
            )

        failed = 0
        for path in images:
            try:
                # Bytes, as a worker gets them from S3: the engine sees the same input.
                recognition = engine.recognize(path.read_bytes(), gallery)
            except OSError as exc:
                failed += 1
                self.stderr.write(f"{path}: cannot read: {exc.strerror or exc}")
                continue
            except ImageError as exc:
                failed += 1
                self.stderr.write(f"{path}: {exc.message}")
                continue
            if recognition.has_face:
                self.stdout.write(f"{path.stem}:{recognition.name}")
            else:
                self.stdout.write(f"{path.stem}:")
                self.stderr.write(f"{path.stem}: no face found")
            if verbose:
                self._details(recognition)
        if failed:
            raise CommandError(f"{failed} of {len(images)} images could not be read", returncode=1)

    def _details(self, recognition: Recognition) -> None:
        for index, found in enumerate(recognition.faces):
            x0, y0, x1, y1 = (round(float(v)) for v in found.face.box)
            candidates = ", ".join(
                f"{candidate.name} {candidate.distance:.3f}" for candidate in found.match.candidates
            )
            score = "" if found.match.score is None else f" score {found.match.score:.3f}"
            self.stdout.write(
                f"  face {index}: box ({x0},{y0})-({x1},{y1}) p={found.face.probability:.3f} "
                f"-> {found.match.name} [{candidates or 'empty gallery'}]{score}"
            )
        timings = ", ".join(
            f"{step} {seconds * 1000:.1f} ms" for step, seconds in recognition.timings.items()
        )
        self.stdout.write(f"  timings: {timings}")
