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
        "directly in it or below. The largest face of each image is used; images without a "
        "face or that cannot be read are skipped and reported. Re-running updates samples in "
        "place (keyed by '<label>/<file>' and embedder). Publishes a new gallery snapshot. "
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
        run = embed_images(engine, images, show_progress=verbosity > 0)
        skipped = strays + run.skipped
        if not run.samples:
            # Nothing to store: leave the gallery (and, with --replace, its old samples) as is.
            self._report_skipped(skipped)
            raise CommandError(f"no face enrolled: all {len(images)} images in {dir} were skipped")
        saved = store.save_samples(
            engine.embedder_name, run.samples, replace_labels=identities if replace else ()
        )
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
        for source, count in run.several_faces.items():
            out.write(f"  {source}: {count} faces, used the largest")
        self._report_skipped(skipped)
        out.write(
            f"gallery {gallery.embedder}: {len(gallery.identities)} identities, "
            f"{len(gallery)} samples"
        )
        out.write(self.style.SUCCESS(f"snapshot version {snapshot.version}"))

    def _report_skipped(self, skipped: list[Skipped]) -> None:
        if skipped:
            self.stdout.write(self.style.WARNING(f"skipped {len(skipped)}:"))
            for item in skipped:
                self.stdout.write(f"  {item.source}: {item.reason}")
