"""The engine's typed errors: callers map them to replies without parsing messages.

Light on purpose (no torch, no PIL): the web tier imports these to validate uploads. What a
reply carries for each (an HTTP status, say) is recognition.lifecycle's business, not the
engine's.
"""


class ImageError(Exception):
    """The input can't be used as a photo. ``message`` is one plain sentence fit for a user;
    ``code`` names the kind of problem (a recognition.lifecycle.Outcome value)."""

    code = "corrupt_image"
    default_message = "The file could not be read as an image."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class NotAnImage(ImageError):
    code = "not_an_image"
    default_message = "The file is not an image in a supported format."


class CorruptImage(ImageError):
    code = "corrupt_image"
    default_message = "The image is truncated or corrupt and could not be decoded."


class ImageTooLarge(ImageError):
    code = "too_many_pixels"
    default_message = "The image has too many pixels."


class EmbedderUnavailable(RuntimeError):
    """The configured embedder can't run on this machine (e.g. its weights file is absent)."""


class WeightsFormatError(EmbedderUnavailable):
    """A weights file is not the network this code expects (wrong, truncated or altered), so
    the embedder can't run either."""
