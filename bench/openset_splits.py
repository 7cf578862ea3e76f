"""How steady lfw_dev's open-set figures are: the same protocol over many random galleries.

    .venv/bin/python -m bench.openset_splits [--splits 20] [--seed 0] [--target-fpir 0.01]

`manage.py evaluate --enroll-first 3` measures one gallery, the first three photos (by name) of
each known person. This embeds every photo of lfw_dev once (as a probe is embedded, and as
enrolment embeds an example: with its mirror image) and then, for that gallery and for --splits
galleries of three photos per person drawn at random, does what the default configuration does:
calibrates the operating point from the gallery alone for --target-fpir, answers every other
photo of the known and every stranger (with the engine's second look at doubtful faces), and
prints TPIR and FPIR there, and TPIR at FPIR 0.01 read off the strangers (what a threshold
chosen with hindsight would give). One split says little about a method; the spread over many
says how much of a difference between two methods is the photos drawn.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LFW_DEV = REPO.parent / "shared" / "datasets" / "lfw_dev"


def embed_all(engine, paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(found, plain, mirrored): whether a face was found, and the largest face's embedding
    as a probe gets it and averaged with its mirror image's, per photo."""
    found = np.zeros(len(paths), dtype=bool)
    dims = engine.embedder.dim + (engine.second_opinion.dim if engine.second_opinion else 0)
    plain = np.zeros((len(paths), dims), dtype=np.float32)
    mirrored = np.zeros_like(plain)
    for index, path in enumerate(paths):
        faces = engine.embed_image(path)
        if faces:
            found[index] = True
            plain[index] = faces[0].embedding
            mirrored[index] = engine.embed_image(path, mirror=True)[0].embedding
    return found, plain, mirrored


def answer(
    engine, gallery, plain: np.ndarray, mirrored: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(names, nearest, margins) as the engine answers these faces: the name given (or
    Unknown), the nearest enrolled person whatever the threshold, and how far the open-set score
    cleared the operating point it was held against. The first look is the first network's;
    doubtful faces (Engine.doubtful decides) are answered again with the first network's
    embedding averaged with the mirror image and the second opinion's beside it, if any."""
    first = engine.embedder.dim
    matches = gallery.first_look(first).identify(plain[:, :first], 1)
    doubtful = engine.doubtful(matches, engine.fuses(gallery))
    if doubtful:
        again = np.concatenate([mirrored[doubtful, :first], plain[doubtful, first:]], axis=1)
        for index, match in zip(doubtful, gallery.identify(again, 1), strict=True):
            matches[index] = match
    return (
        np.array([match.name for match in matches]),
        np.array([match.candidates[0].name for match in matches]),
        np.array([match.score - match.threshold for match in matches]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=20, help="random galleries to draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-fpir", type=float, default=0.01)
    parser.add_argument("--enrol", type=int, default=3, help="photos enrolled per person")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")
    import django

    django.setup()
    from recognition.engine import get_engine
    from recognition.gallery.matching import Gallery

    engine = get_engine()
    known = {
        person.name: sorted(p for p in person.iterdir() if p.is_file())
        for person in sorted((LFW_DEV / "known").iterdir())
    }
    strangers = sorted(p for p in (LFW_DEV / "strangers").glob("*/*") if p.is_file())
    paths = [photo for photos in known.values() for photo in photos] + strangers
    found, plain, mirrored = embed_all(engine, paths)
    index_of = {path: index for index, path in enumerate(paths)}
    stranger_rows = np.array([index_of[path] for path in strangers])

    rng = np.random.default_rng(args.seed)
    draws = [("first", None)] + [(f"random {n + 1}", rng) for n in range(args.splits)]
    rows = []
    for name, draw in draws:
        gallery_rows, labels, probe_rows, probe_labels = [], [], [], []
        for person, photos in known.items():
            order = [index_of[p] for p in photos]
            if draw is not None:
                order = list(draw.permutation(order))
            enrolled = [row for row in order if found[row]][: args.enrol]
            gallery_rows += enrolled
            labels += [person] * len(enrolled)
            rest = [row for row in order if row not in enrolled]
            probe_rows += rest
            probe_labels += [person] * len(rest)
        gallery = Gallery(engine.embedder_name, labels, mirrored[gallery_rows])
        gallery = gallery.calibrated(args.target_fpir)
        probe_rows = np.array(probe_rows)
        every = np.concatenate([probe_rows, stranger_rows])
        names, nearest, margins = answer(engine, gallery, plain[every], mirrored[every])
        # A photo without a face is answered no name: a miss for the known, right for a stranger.
        named = found[every]
        known_count = len(probe_rows)
        labels_known = np.array(probe_labels)
        right = named[:known_count] & (names[:known_count] == labels_known)
        stranger_named = named[known_count:] & (names[known_count:] != "Unknown")
        # Hindsight: the shift of the operating points that names at most 1% of the strangers.
        # A known probe counts when its nearest person is right and its margin clears that
        # shift, which may be negative.
        stranger_margins = np.sort(np.where(named[known_count:], margins[known_count:], -np.inf))
        hindsight = stranger_margins[::-1][int(0.01 * len(stranger_margins))]
        nearest_right = named[:known_count] & (nearest[:known_count] == labels_known)
        rows.append(
            (
                name,
                gallery.operating_point.threshold,
                right.mean(),
                stranger_named.mean(),
                (nearest_right & (margins[:known_count] > hindsight)).mean(),
            )
        )

    band = engine.second_opinion_band if engine.second_opinion else engine.second_look_band
    print(
        f"lfw_dev: {len(known)} known people, {args.enrol} enrolled each, "
        f"{len(strangers)} strangers; target FPIR {args.target_fpir}; engine "
        f"{engine.embedder_name}, second-look band {band}"
    )
    print(f"{'gallery':<11}{'threshold':>10}{'TPIR':>8}{'FPIR':>8}{'TPIR@1%':>9}")
    for name, threshold, tpir, fpir, at_one in rows:
        print(f"{name:<11}{threshold:>10.4f}{tpir:>8.3f}{fpir:>8.4f}{at_one:>9.3f}")
    drawn = rows[1:]
    if drawn:
        fpirs = [row[3] for row in drawn]
        print(
            f"random galleries ({len(drawn)}): TPIR mean {statistics.mean(r[2] for r in drawn):.3f}"
            f", FPIR mean {statistics.mean(fpirs):.4f} (above the target in "
            f"{sum(f > args.target_fpir for f in fpirs)} of {len(drawn)}, max {max(fpirs):.4f})"
            f", TPIR at FPIR 0.01 with hindsight mean {statistics.mean(r[4] for r in drawn):.3f}"
            f" (min {min(r[4] for r in drawn):.3f}, max {max(r[4] for r in drawn):.3f})"
        )


if __name__ == "__main__":
    main()
