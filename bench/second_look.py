"""How far averaging in the mirror image moves a face's open-set score: what SECOND_LOOK_BAND
(recognition/engine/core.py) must cover for a face beyond it to keep its answer.

    .venv/bin/python -m bench.second_look [--gallery DIR] [--probes DIR]

Enrols --gallery (a folder per person, largest face, mirrored as enrolment does; default
five_celebrity/train), then for every face of every photo under --probes (default
five_celebrity/val) prints the quantiles of |score(mirror-averaged) - score(plain)| and the
share of faces the current band would give a second look at the gallery's operating point.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=Path, default=DATASETS / "five_celebrity" / "train")
    parser.add_argument("--probes", type=Path, default=DATASETS / "five_celebrity" / "val")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")
    import django

    django.setup()
    import numpy as np
    from PIL import Image

    from recognition.engine import Engine, get_engine
    from recognition.gallery.matching import Gallery

    # The first network alone: the mirror look is measured in its score units.
    configured = get_engine()
    engine = Engine(configured.detector, configured.embedder)
    labels, rows = [], []
    for path in sorted(args.gallery.glob("*/*")):
        faces = engine.faces(Image.open(path), mirror=True)
        if faces:
            labels.append(path.parent.name)
            rows.append(faces[0].embedding)
    gallery = Gallery(engine.embedder_name, labels, np.stack(rows))
    changes, near = [], []
    for path in sorted(p for p in args.probes.rglob("*") if p.is_file()):
        image = Image.open(path)
        plain = [face.embedding for face in engine.faces(image)]
        if not plain:
            continue
        mirrored = [face.embedding for face in engine.faces(image, mirror=True)]
        matches = gallery.identify(np.stack(plain))
        before = np.array([m.score for m in matches])
        after = np.array([m.score for m in gallery.identify(np.stack(mirrored))])
        changes.extend(np.abs(after - before))
        doubtful = set(engine.doubtful(matches))
        near.extend(index in doubtful for index in range(len(matches)))
    quantiles = np.quantile(changes, [0.5, 0.9, 0.99, 1.0])
    print(
        f"{len(changes)} faces, gallery {len(gallery.identities)} people, operating point "
        f"{gallery.operating_point.threshold:.4f} ({gallery.operating_point.method})"
    )
    print(
        "|score change| from the mirror image: median {:.3f}, 90% {:.3f}, 99% {:.3f}, "
        "max {:.3f}".format(*quantiles)
    )
    print(f"band {engine.second_look_band}: {np.mean(near):.1%} of these faces get a second look")


if __name__ == "__main__":
    main()
