"""What the face commands share: the engine, or a one-line CommandError when it can't load."""

from django.core.management.base import CommandError

from recognition.engine import EmbedderUnavailable, Engine, get_engine


def engine_or_command_error() -> Engine:
    try:
        return get_engine()
    except EmbedderUnavailable as exc:
        raise CommandError(f"face engine unavailable: {exc}") from exc
