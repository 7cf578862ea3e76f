"""load_image: every odd input ends as 8-bit upright RGB or as one of three typed errors."""

import io
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recognition.engine import CorruptImage, ImageError, ImageTooLarge, NotAnImage, load_image
from recognition.engine.imaging import DECODE_MAX_SIDE, read_header
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


# --- the header check and the reduced decode ---------------------------------------------------


def big_photo(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A large image with a little structure (flat colour, a dark square in the middle), cheap
    to encode and to compress."""
    image = Image.new(mode, (width, height), "teal" if mode == "RGB" else 90)
    square = Image.new(mode, (width // 4, height // 4), "black" if mode == "RGB" else 0)
    image.paste(square, (width * 3 // 8, height * 3 // 8))
    return image


def test_read_header_reads_format_and_size_only() -> None:
    data = png_claiming(7000, 5000)  # its pixel data would not decode
    header = read_header(data, MAX_PIXELS)
    assert (header.format, header.width, header.height) == ("PNG", 7000, 5000)
    with pytest.raises(CorruptImage):
        load_image(data, MAX_PIXELS)


def test_read_header_refuses_what_load_image_refuses() -> None:
    with pytest.raises(NotAnImage):
        read_header(b"hello, world", MAX_PIXELS)
    with pytest.raises(ImageTooLarge):
        read_header(png_claiming(10_000, 10_000), MAX_PIXELS)


@pytest.mark.parametrize("fmt", ["TGA", "PCX", "ICO"])
def test_formats_outside_the_photo_formats_are_not_images(fmt: str) -> None:
    data = encode(Image.new("RGB", (16, 16), "red"), fmt)
    for check in (read_header, load_image):
        with pytest.raises(NotAnImage, match=f"{fmt} format") as caught:
            check(data, MAX_PIXELS)
        assert http_status(outcome_of(caught.value)) == 415


@pytest.mark.parametrize(
    "fmt, mode",
    [("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "L"), ("GIF", "P"), ("TIFF", "RGB")],
)
def test_large_images_are_decoded_reduced(fmt: str, mode: str) -> None:
    original = big_photo(6000, 4000, "RGB" if mode == "P" else mode)
    if mode == "P":
        original = original.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    loaded = load_image(encode(original, fmt), MAX_PIXELS, max_side=2560)
    assert loaded.mode == "RGB"
    assert DECODE_MAX_SIDE // 2 <= max(loaded.size) <= DECODE_MAX_SIDE
    assert abs(loaded.width / loaded.height - 1.5) < 0.01  # proportions kept
    # The same picture: the dark square is still in the middle, the corner still the background.
    reference = original.convert("RGB").resize(loaded.size, Image.Resampling.BOX)
    assert np.abs(pixels(loaded) - pixels(reference)).mean() < 4


def test_reduced_decode_keeps_orientation() -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    stored = big_photo(6000, 3000)
    loaded = load_image(encode(stored, "JPEG", exif=exif.tobytes()), MAX_PIXELS)
    assert loaded.height > loaded.width


def test_small_images_are_not_reduced(single_face_photo: Path) -> None:
    data = single_face_photo.read_bytes()
    assert load_image(data, MAX_PIXELS).size == Image.open(single_face_photo).size


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_large_image_is_still_corrupt(fmt: str) -> None:
    data = encode(big_photo(6000, 4000), fmt)
    assert read_header(data[: len(data) // 2], MAX_PIXELS).width == 6000
    with pytest.raises(CorruptImage):
        load_image(data[: len(data) // 2], MAX_PIXELS)


_PEAK_RSS_SCRIPT = """
import resource, sys
from pathlib import Path
from recognition.engine.imaging import load_image, read_header
data = Path(sys.argv[1]).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = {"header": read_header, "load": load_image}[sys.argv[2]](data, 40_000_000)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def peak_growth_mib(path: Path, check: str) -> int:
    """How far the peak RSS of a fresh process rises while it runs ``check`` on ``path``."""
    from facesite.config import BASE_DIR

    ran = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_SCRIPT, str(path), check],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(ran.stdout.strip())


@pytest.fixture(scope="module")
def forty_megapixels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("40mp")
    image = big_photo(8000, 5000)  # 40 MP, the most allowed
    paths = {fmt: folder / f"big.{fmt.lower()}" for fmt in ("JPEG", "PNG")}
    for fmt, path in paths.items():
        image.save(path, fmt)
    return paths


def test_memory_of_a_40_megapixel_image(forty_megapixels: dict[str, Path]) -> None:
    # A full RGB decode of 40 MP is 120 MB: the header check must cost next to nothing, the
    # JPEG's reduced decode a fraction of it (a PNG has to be inflated whole, then reduced).
    assert peak_growth_mib(forty_megapixels["PNG"], "header") < 10
    assert peak_growth_mib(forty_megapixels["JPEG"], "header") < 10
    assert peak_growth_mib(forty_megapixels["JPEG"], "load") < 40
