"""``manage.py calibrate``: choose (and explain) the operating point of the current gallery."""

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from recognition.engine import configured_embedder_name
from recognition.gallery import store


class Command(BaseCommand):
    help = (
        "Calibrate the open-set operating point of the enrolled gallery for a target "
        "false-positive identification rate (--target-fpir, default FACESITE_TARGET_FPIR, "
        "0.01): every enrolled example is scored as a stranger against the gallery without "
        "its own person, and the threshold is the k-th highest of those n scores, k = floor(target "
        "x (n + 1)), which a new stranger exceeds with probability at most the target. Prints "
        "what it chose and why, and publishes the snapshot (enroll does the same)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--target-fpir",
            type=float,
            help="share of strangers that may be named (default FACESITE_TARGET_FPIR)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="explain the choice without publishing"
        )

    def handle(self, *args, target_fpir: float | None, dry_run: bool, **options) -> None:
        try:
            target = store.target_fpir() if target_fpir is None else target_fpir
            embedder = configured_embedder_name()
        except (ImproperlyConfigured, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if not 0.0 < target < 1.0:
            raise CommandError(f"--target-fpir must be between 0 and 1, got {target}")
        gallery = store.gallery_from_samples(embedder)
        if not len(gallery):
            raise CommandError(f"the {embedder} gallery is empty: run enroll first")
        calibrated = gallery.calibrated(target)
        point = calibrated.operating_point
        out = self.stdout
        out.write(
            f"gallery {embedder}: {len(gallery.identities)} identities, {len(gallery)} samples"
        )
        out.write(f"target FPIR {target:g}: {point.explain()}")
        if first_look := store.first_look_explained(calibrated):
            out.write(first_look)
        if dry_run:
            return
        snapshot, _ = store.publish_snapshot(embedder, target)
        out.write(self.style.SUCCESS(f"snapshot version {snapshot.version}"))
