"""load_image: every odd input ends as 8-bit upright RGB or as one of three typed errors."""

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recognition.engine import CorruptImage, ImageError, ImageTooLarge, NotAnImage, load_image
from recognition.lifecycle import http_status, outcome_of

MAX_PIXELS = 40_000_000
EXIF_ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a few bytes: decoding
    it would fail, so only a header check can tell it is too large."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data)
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, world", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", b"\x00" * 4096],
    ids=["empty", "text", "pdf", "zeros"],
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(NotAnImage) as caught:
        load_image(data, MAX_PIXELS)
    assert http_status(outcome_of(caught.value)) == 415
    assert isinstance(caught.value, ImageError)
    assert str(caught.value) == caught.value.message
    assert caught.value.message.endswith(".") and "\n" not in caught.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(single_face_photo: Path, fmt: str) -> None:
    data = encode(Image.open(single_face_photo).convert("RGB"), fmt)
    with pytest.raises(CorruptImage) as caught:
        load_image(data[: len(data) // 2], MAX_PIXELS)
    assert http_status(outcome_of(caught.value)) == 400


@pytest.mark.parametrize(
    "width, height",
    # past PIL's own error limit, past its warning limit, and past only ours
    [(100_000, 100_000), (10_000, 10_000), (8_000, 8_000)],
)
def test_pixel_bomb_refused_from_its_header(width: int, height: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape either
        with pytest.raises(ImageTooLarge) as caught:
            load_image(png_claiming(width, height), MAX_PIXELS)
    assert http_status(outcome_of(caught.value)) == 400


def test_pixel_limit_is_the_callers(single_face_photo: Path) -> None:
    data = single_face_photo.read_bytes()
    with pytest.raises(ImageTooLarge, match="200x300"):
        load_image(data, max_pixels=200 * 300 - 1)
    assert load_image(data, max_pixels=200 * 300).size == (200, 300)


def test_cmyk_jpeg() -> None:
    red = Image.new("CMYK", (32, 32), (0, 255, 255, 0))
    loaded = load_image(encode(red, "JPEG", quality=95), MAX_PIXELS)
    assert np.abs(pixels(loaded) - (255, 0, 0)).max() <= 8


def test_palette_with_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 1)
    loaded = pixels(load_image(encode(image, "PNG", transparency=0), MAX_PIXELS))
    assert tuple(loaded[0, 0]) == (0, 0, 255)
    assert tuple(loaded[1, 1]) == (255, 255, 255)


def test_palette_without_transparency() -> None:
    image = Image.new("RGB", (8, 8), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    loaded = pixels(load_image(encode(image, "GIF"), MAX_PIXELS))
    assert np.abs(loaded - (10, 200, 30)).max() <= 2


def test_rgba_is_composited_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (0, 0, 255, 255))
    image.putpixel((1, 0), (0, 0, 0, 128))
    loaded = pixels(load_image(encode(image, "PNG"), MAX_PIXELS))
    assert tuple(loaded[0, 0]) == (0, 0, 255)
    assert tuple(loaded[1, 1]) == (255, 255, 255)
    assert np.abs(loaded[0, 1] - 127).max() <= 1


def test_greyscale_with_alpha() -> None:
    image = Image.new("LA", (4, 4), (0, 0))
    image.putpixel((0, 0), (40, 255))
    loaded = pixels(load_image(encode(image, "PNG"), MAX_PIXELS))
    assert tuple(loaded[0, 0]) == (40, 40, 40)
    assert tuple(loaded[2, 2]) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_greyscale(fmt: str) -> None:
    loaded = pixels(load_image(encode(Image.new("L", (16, 16), 77), fmt), MAX_PIXELS))
    assert np.abs(loaded - 77).max() <= 1


def test_bilevel() -> None:
    image = Image.new("1", (4, 4), 0)
    image.putpixel((0, 0), 1)
    loaded = pixels(load_image(encode(image, "PNG"), MAX_PIXELS))
    assert tuple(loaded[0, 0]) == (255, 255, 255) and tuple(loaded[1, 1]) == (0, 0, 0)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 100, 65535, 32896]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit file
    loaded = pixels(load_image(data, MAX_PIXELS))
    assert loaded[0, :, 0].tolist() == [0, 100, 255, 128]


def test_exif_orientation_is_applied(single_face_photo: Path) -> None:
    upright = Image.open(single_face_photo).convert("RGB")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways stores it
    loaded = load_image(encode(stored, "PNG", exif=exif.tobytes()), MAX_PIXELS)
    assert loaded.size == upright.size
    assert np.array_equal(pixels(loaded), pixels(upright))


def test_sources(tmp_path: Path, single_face_photo: Path) -> None:
    data = single_face_photo.read_bytes()
    expected = pixels(load_image(data, MAX_PIXELS))
    with single_face_photo.open("rb") as handle:
        from_file = load_image(handle, MAX_PIXELS)
    for loaded in (
        load_image(bytearray(data), MAX_PIXELS),
        load_image(memoryview(data), MAX_PIXELS),
        load_image(single_face_photo, MAX_PIXELS),
        load_image(str(single_face_photo), MAX_PIXELS),
        load_image(io.BytesIO(data), MAX_PIXELS),
        from_file,
    ):
        assert np.array_equal(pixels(loaded), expected)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg", MAX_PIXELS)
    with pytest.raises(TypeError):
        load_image(io.StringIO("not binary"), MAX_PIXELS)
