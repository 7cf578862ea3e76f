"""Decode untrusted bytes into an upright 8-bit RGB image, or raise a typed ImageError.

Everything the network sees goes through here (uploads, enrolment folders, the CLI), so every
odd file ends up as the same kind of image, and every failure as one of three errors.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib
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


def load_image(source: ImageSource, max_pixels: int) -> Image.Image:
    """Decode ``source`` (bytes, a path or a binary file object) to an RGB image.

    EXIF orientation is applied, and every colour mode is converted to 8-bit RGB (transparency
    is composited on white). The pixel count is checked from the header, before any pixel data
    is decoded. Raises NotAnImage, CorruptImage or ImageTooLarge; a path that can't be opened
    raises the usual OSError (that is the caller's mistake, not the file's).
    """
    data = _read_source(source)
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

    _check_size(image, max_pixels)  # header only: nothing is decoded yet
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise CorruptImage() from exc
    return to_rgb(_upright(image))


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
