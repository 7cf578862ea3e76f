"""``manage.py enroll DIR``: add the photos under DIR/<label>/ to the gallery and publish it."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from recognition.gallery import store
from recognition.gallery.enrollment import (
    EnrolmentError,
    Skipped,
    embed_images,
    labelled_images,
)
from recognition.management.engine import engine_or_command_error


class Command(BaseCommand):
    help = (
        "Enrol DIR into the gallery: one sub-folder per identity (its name is the label), images "
        "directly in it or below. Of a photo with several faces, the one that agrees with the "
        "person's other examples is used (the largest when nothing else decides); images "
        "without a face or that cannot be read are skipped and reported; examples far from "
        "the rest of their person are reported and flagged in the admin. The snapshot carries "
        "the operating point calibrated for FACESITE_TARGET_FPIR (see calibrate). "
        "Re-running updates samples in place (keyed by '<label>/<file>' and embedder). "
        "Publishes a new gallery snapshot. "
        "With --labels, DIR is a flat folder labelled by a CSV (the course's layout)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dir", type=Path, help="folder with one sub-folder per identity")
        parser.add_argument(
            "--labels",
            type=Path,
            help="CSV with an 'Image,Results' header (Image = file stem) labelling a flat DIR",
        )
        parser.add_argument(
            "--replace",
            action="store_true",
            help="first delete this embedder's existing samples of the identities in DIR",
        )

    def handle(
        self, *args, dir: Path, labels: Path | None, replace: bool, verbosity: int, **options
    ) -> None:
        try:
            images, strays = labelled_images(dir, labels)
        except EnrolmentError as exc:
            raise CommandError(str(exc)) from exc
        engine = engine_or_command_error()

        identities = sorted({image.label for image in images})
        # What is already enrolled helps pick the right face of a group photo; not what
        # --replace is about to delete.
        known = {} if replace else store.known_embeddings(engine.embedder_name, identities)
        run = embed_images(engine, images, show_progress=verbosity > 0, known=known)
        skipped = strays + run.skipped
        if not run.samples:
            # Nothing to store: leave the gallery (and, with --replace, its old samples) as is.
            self._report_skipped(skipped)
            raise CommandError(f"no face enrolled: all {len(images)} images in {dir} were skipped")
        saved = store.save_samples(
            engine.embedder_name, run.samples, replace_labels=identities if replace else ()
        )
        flagged = store.flag_disagreeing(engine.embedder_name)
        snapshot, gallery = store.publish_snapshot(engine.embedder_name)

        enrolled = sorted({sample.label for sample in run.samples})
        out = self.stdout
        out.write(
            f"embedder {engine.embedder_name}: {len(images)} images of {len(identities)} "
            f"identities, {len(run.samples)} faces enrolled for {len(enrolled)} identities"
        )
        out.write(
            f"samples: {saved.added} added, {saved.updated} updated, {saved.unchanged} unchanged"
            + (f", {saved.removed} removed (--replace)" if replace else "")
        )
        for label in sorted(set(identities) - set(enrolled)):
            out.write(self.style.WARNING(f"identity {label}: no usable face, not enrolled"))
        for source, why in run.face_choices.items():
            out.write(f"  {source}: {why}")
        self._report_skipped(skipped)
        if flagged:
            out.write(
                self.style.WARNING(
                    f"{len(flagged)} examples disagree with the rest of their person "
                    "(likely someone else; flagged in the admin):"
                )
            )
            for row in flagged:
                out.write(f"  {row.source_image} ({row.identity.name})")
        out.write(
            f"gallery {gallery.embedder}: {len(gallery.identities)} identities, "
            f"{len(gallery)} samples"
        )
        out.write(f"operating point: {gallery.operating_point.explain()}")
        if first_look := store.first_look_explained(gallery):
            out.write(first_look)
        out.write(self.style.SUCCESS(f"snapshot version {snapshot.version}"))

    def _report_skipped(self, skipped: list[Skipped]) -> None:
        if skipped:
            self.stdout.write(self.style.WARNING(f"skipped {len(skipped)}:"))
            for item in skipped:
                self.stdout.write(f"  {item.source}: {item.reason}")
