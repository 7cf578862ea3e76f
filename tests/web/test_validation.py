"""The web tier's image check reads headers only: it refuses by format and size, and leaves
truncated pixel data to the worker's decode."""

import io

import pytest
from PIL import Image

from recognition.web.uploads import UploadRefused, validate_image


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_a_truncated_image_passes_the_header_check() -> None:
    data = encoded(Image.new("RGB", (2000, 1500), "teal"), "PNG")
    validate_image(data[: len(data) // 2])  # the worker's decode answers 400 for it


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"plain text", 415),
        (encoded(Image.new("RGB", (8, 8)), "TGA"), 415),
        (encoded(Image.new("L", (9000, 5000)), "PNG"), 400),  # 45 MP
    ],
    ids=["text", "tga", "too-many-pixels"],
)
def test_refusals(data: bytes, status: int) -> None:
    with pytest.raises(UploadRefused) as refused:
        validate_image(data)
    assert refused.value.status == status
    assert refused.value.message.endswith(".") and "\n" not in refused.value.message
