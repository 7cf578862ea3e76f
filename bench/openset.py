"""Open-set answers over HTTP: a stranger must get `<stem>:Unknown` from a running stack.

    .venv/bin/python -m bench.openset prepare var/lfw_enrol        # first 3 photos per person
    make run GALLERY=var/lfw_enrol                                  # in another terminal
    .venv/bin/python -m bench.openset probe [--url http://127.0.0.1:8000/]

`prepare` links the first N photos (by name) of each person of lfw_dev/known into a folder to
enrol; `probe` sends every other photo of them and every stranger through `POST /` and prints
TPIR (enrolled people named right) and FPIR (strangers given a name), as `manage.py evaluate
--enroll-first` computes them on the engine alone.
"""

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from ami.local.harness import DATASETS_DIR

LFW_DEV = DATASETS_DIR / "lfw_dev"


def photos_by_person(root: Path) -> dict[str, list[Path]]:
    return {
        person.name: sorted(p for p in person.iterdir() if p.is_file())
        for person in sorted(root.iterdir())
        if person.is_dir()
    }


def prepare(target: Path, first: int) -> None:
    for person, photos in photos_by_person(LFW_DEV / "known").items():
        folder = target / person
        folder.mkdir(parents=True, exist_ok=True)
        for photo in photos[:first]:
            link = folder / photo.name
            if not link.exists():
                link.symlink_to(photo.resolve())
    print(f"{target}: enrol it with `make run GALLERY={target}`")


def answer(url: str, photo: Path) -> str:
    with open(photo, "rb") as image:
        reply = requests.post(url, files={"inputFile": (photo.name, image)}, timeout=300)
    if reply.status_code != 200:
        return f"({reply.status_code})"
    return reply.text.split(":", 1)[1]


def probe(url: str, first: int, threads: int) -> None:
    known = [
        (person, photo)
        for person, photos in photos_by_person(LFW_DEV / "known").items()
        for photo in photos[first:]
    ]
    strangers = [
        (None, photo)
        for photos in photos_by_person(LFW_DEV / "strangers").values()
        for photo in photos
    ]
    probes = known + strangers
    with ThreadPoolExecutor(threads) as pool:
        names = list(pool.map(lambda item: answer(url, item[1]), probes))
    right = sum(name == person for (person, _), name in zip(known, names, strict=False))
    named = sum(
        name not in ("Unknown",) and not name.startswith("(") for name in names[len(known) :]
    )
    refused = sum(name.startswith("(") for name in names)
    print(f"TPIR {right / len(known):.3f} ({right}/{len(known)} enrolled probes named right)")
    print(f"FPIR {named / len(strangers):.4f} ({named}/{len(strangers)} strangers given a name)")
    print(f"replies other than 200: {refused}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare_parser = commands.add_parser("prepare")
    prepare_parser.add_argument("target", type=Path)
    probe_parser = commands.add_parser("probe")
    probe_parser.add_argument("--url", default="http://127.0.0.1:8000/")
    probe_parser.add_argument("--threads", type=int, default=20)
    for sub in (prepare_parser, probe_parser):
        sub.add_argument("--enroll-first", type=int, default=3)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.target, args.enroll_first)
    else:
        probe(args.url, args.enroll_first, args.threads)


if __name__ == "__main__":
    main()
