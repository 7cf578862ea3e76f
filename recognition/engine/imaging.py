"""Decode untrusted bytes into an upright 8-bit RGB image, or raise a typed ImageError.

Everything the network sees goes through here (uploads, enrolment folders, the CLI), so every
odd file ends up as the same kind of image, and every failure as one of three errors.

Memory is bounded by the size limits, not by the image: `read_header` checks an image from its
header alone (the web tier's check; no pixel data is decoded), and `load_image` decodes large
images at a reduced size (JPEG's DCT scaling through `Image.draft`, an integer box `reduce` for
the rest), so a 40-megapixel upload becomes at most DECODE_MAX_SIDE pixels on its longer side.
"""

from __future__ import annotations

import io
import math
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CorruptImage, ImageTooLarge, NotAnImage

ImageSource = bytes | bytearray | memoryview | str | Path | BinaryIO

# What PIL raises for undecodable data besides OSError: its plugins surface malformed headers
# and streams as any of these.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError)

# warnings.catch_warnings swaps process-global state; serialising our own uses keeps two
# threads from restoring each other's filters in the wrong order.
_WARNINGS_LOCK = threading.Lock()

_WHITE = (255, 255, 255)

# The photo formats the service takes. Each has a header PIL reads without decoding pixels; any
# other format PIL could open is refused as not an image (it would also widen what untrusted
# bytes reach).
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF"})

# The longest side load_image decodes to. Detection runs on a copy of at most
# FACESITE_DETECT_MAX_SIDE (1280) pixels and a face chip is 150x150, so twice the detector's
# size loses nothing the engine uses, while a 40 MP decode (120 MB as RGB) becomes at most
# 2560x2560 (20 MB). Larger images come out between half this and this on their longer side.
DECODE_MAX_SIDE = 2560
# Where load_image leaves the reduction it applied, in the decoded image's info.
DECODE_SCALE = "facesite.decode_scale"


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int


def read_header(source: ImageSource, max_pixels: int) -> ImageHeader:
    """What the header of ``source`` says, once it is found to be a supported format within
    ``max_pixels``. Nothing is decoded, so memory does not grow with the image's pixels; a file
    whose pixel data is truncated or corrupt passes (only a decode finds that out). Raises
    NotAnImage, CorruptImage or ImageTooLarge, as load_image does."""
    image = _open(_read_source(source))
    _check_format(image)
    _check_size(image, max_pixels)
    return ImageHeader(str(image.format), image.width, image.height)


def load_image(
    source: ImageSource, max_pixels: int, max_side: int = DECODE_MAX_SIDE
) -> Image.Image:
    """Decode ``source`` (bytes, a path or a binary file object) to an RGB image.

    EXIF orientation is applied, and every colour mode is converted to 8-bit RGB (transparency
    is composited on white). The format and pixel count are checked from the header, before any
    pixel data is decoded. An image longer than ``max_side`` on a side is decoded at a reduced
    size: its longer side ends between ``max_side // 2`` and ``max_side`` pixels. Raises
    NotAnImage, CorruptImage or ImageTooLarge; a path that can't be opened raises the usual
    OSError (that is the caller's mistake, not the file's).
    """
    image = _open(_read_source(source))
    _check_format(image)
    _check_size(image, max_pixels)  # header only: nothing is decoded yet
    stored_side = max(image.size)
    if max(image.size) > max_side:
        # JPEG decodes straight to 1/2, 1/4 or 1/8 of its size (no other format can), to the
        # smallest of these at least the size asked for: asking for half of max_side lands
        # between half and all of it, with no reduce() left to do on a full-size copy.
        image.draft(None, _fitting(image.size, max_side // 2))
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise CorruptImage() from exc
    decoded = to_rgb(_upright(_reduce(image, max_side)))
    decoded.info[DECODE_SCALE] = stored_side / max(decoded.size)
    return decoded


def decode_scale(image: Image.Image) -> float:
    """How many of the stored image's pixels one pixel of this decoded copy spans (1.0 unless
    load_image decoded it at a reduced size): coordinates found in it, times this, are the
    original's."""
    return float(image.info.get(DECODE_SCALE, 1.0))


def _open(data: bytes) -> Image.Image:
    """The image's header, parsed: PIL reads no pixel data until load()."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            # PIL's own bomb check warns (and errors at twice its limit) while reading the header;
            # turning the warning into an exception makes both paths end as ImageTooLarge.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageTooLarge() from exc
    except UnidentifiedImageError as exc:
        raise NotAnImage() from exc
    except _DECODE_ERRORS as exc:
        raise CorruptImage() from exc
    return image


def _check_format(image: Image.Image) -> None:
    if image.format not in SUPPORTED_FORMATS:
        raise NotAnImage(f"Images in the {image.format} format are not supported.")


def _fitting(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled down, keeping its proportions, to at most ``max_side`` on each side."""
    scale = max_side / max(size)
    return max(1, math.floor(size[0] * scale)), max(1, math.floor(size[1] * scale))


def _reduce(image: Image.Image, max_side: int) -> Image.Image:
    """A decoded image shrunk by a whole factor (box filter) to at most ``max_side``."""
    factor = math.ceil(max(image.size) / max_side)
    if factor <= 1:
        return image
    try:
        return image.reduce(factor)
    except ValueError:
        # Palette, bilevel and 16-bit modes can't be box-filtered as they are.
        return to_rgb(image).reduce(factor)


def prepare_image(image: Image.Image, max_pixels: int) -> Image.Image:
    """An already opened image, made the same as load_image would: size checked, upright, RGB."""
    _check_size(image, max_pixels)
    return to_rgb(_upright(image))


def _check_size(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"The image is {width}x{height} pixels, more than the {max_pixels:,} allowed."
        )
    if width < 1 or height < 1:
        raise CorruptImage("The image has no pixels.")


def to_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB: alpha composited on white, 16-bit greyscale scaled to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # convert("L") would clip 16-bit values at 255 (an almost white picture): scale instead.
        # PIL opens 16-bit greyscale PNG and TIFF as one of these modes.
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257.0), 0, 255)
        return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")
    if mode == "P":
        mode = "RGBA" if "transparency" in image.info else "RGB"
        image = image.convert(mode)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    try:
        return image.convert("RGB")
    except ValueError as exc:  # a mode PIL can decode but not convert (e.g. LAB)
        raise NotAnImage(f"Images in the {image.mode} colour mode are not supported.") from exc


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag. An unreadable EXIF block is ignored: the pixels decoded
    fine, and rejecting a photo over broken metadata would help no one."""
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS + (KeyError, TypeError):
        return image


def _read_source(source: ImageSource) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str | Path):
        return Path(source).read_bytes()
    if hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, bytes | bytearray):
            raise TypeError("load_image needs a binary file object, not a text one")
        return bytes(data)
    raise TypeError(f"load_image takes bytes, a path or a binary file, not {type(source).__name__}")
