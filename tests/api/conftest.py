"""One real stack for every API end-to-end test: moto, two Celery workers, gunicorn with two
processes; keys made with `manage.py createapikey`, two people enrolled over HTTP."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image

from ami.local.harness import Stack

MAX_UPLOAD_BYTES = 2 * 1024 * 1024
# Two people enrolled for the whole package, a third enrolled and deleted by a test.
ENROLLED = ("ben_afflek", "madonna")
EXAMPLES_PER_PERSON = 4


@dataclass
class Api:
    stack: Stack
    url: str
    manage_key: str
    recognize_key: str
    page_key: str

    def call(self, method: str, path: str, key: str | None = "", **kwargs) -> requests.Response:
        """`key` "" is the manage key, None sends none."""
        key = self.manage_key if key == "" else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        return requests.request(
            method, f"{self.url}/api/v1{path}", headers=headers, timeout=120, **kwargs
        )


def create_key(stack: Stack, name: str, *options: str) -> str:
    return stack.manage("createapikey", name, *options).stdout.strip().splitlines()[-1]


def photos(root: Path, person: str) -> list[Path]:
    return sorted((root / person).iterdir())


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def side_by_side(
    left: Path, right: Path, height: int = 320, right_height: int | None = None
) -> bytes:
    """A two-person photo: the two portraits scaled (to one height unless ``right_height`` is
    given) and pasted side by side, top-aligned."""
    heights = (height, right_height or height)
    images = [Image.open(path).convert("RGB") for path in (left, right)]
    images = [
        im.resize((round(im.width * h / im.height), h))
        for im, h in zip(images, heights, strict=True)
    ]
    canvas = Image.new("RGB", (sum(im.width for im in images), max(heights)), "white")
    canvas.paste(images[0], (0, 0))
    canvas.paste(images[1], (images[0].width, 0))
    return jpeg(canvas)


@pytest.fixture(scope="package")
def api(moto_server, tmp_path_factory, five_celebrity_dir) -> Api:
    stack = Stack(
        moto_server,
        tmp_path_factory.mktemp("api"),
        FACESITE_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
    )
    stack.manage("migrate")
    stack.manage("provision")
    manage_key = create_key(stack, "tests", "--scope", "manage")
    recognize_key = create_key(stack, "reader", "--scope", "recognize")
    page_key = create_key(stack, "page", "--scope", "recognize")
    stack.start_worker("worker-1")
    stack.start_worker("worker-2")
    url = stack.start_web(processes=2, FACESITE_PAGE_API_KEY=page_key)
    api = Api(stack, url, manage_key, recognize_key, page_key)
    train = five_celebrity_dir / "train"
    for person in ENROLLED:
        files = [
            ("image", (path.name, path.read_bytes()))
            for path in photos(train, person)[:EXAMPLES_PER_PERSON]
        ]
        reply = api.call("POST", f"/subjects/{person}/examples", files=files)
        assert reply.status_code == 201, reply.text
        assert len(reply.json()["added"]) >= EXAMPLES_PER_PERSON - 1, reply.text
    yield api
    stack.stop_all()
