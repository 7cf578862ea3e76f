"""Gallery snapshots travel to workers through S3: the web tier publishes the current one, and
each task names the version it expects, so an `enroll` reaches running workers on their next
task without a restart. Snapshots are content-addressed, so publishing is idempotent."""

import threading

from facesite import aws
from recognition.gallery.matching import Gallery

_published: set[str] = set()
_loaded: dict[str, Gallery] = {}
_lock = threading.Lock()


def snapshot_key(version: str) -> str:
    return f"gallery/{version}.npz"


def is_published(version: str) -> bool:
    """Whether this process already uploaded this version (uploads are idempotent anyway)."""
    return version in _published


def publish(version: str, data: bytes) -> None:
    """Upload this snapshot to the gallery bucket, where workers fetch it."""
    aws.client("s3").put_object(
        Bucket=aws.names().gallery_bucket, Key=snapshot_key(version), Body=data
    )
    with _lock:
        _published.add(version)


def load(version: str, embedder: str) -> Gallery:
    """The gallery a task asks for: cached per worker process, fetched once per version."""
    if not version:
        return Gallery.empty(embedder)
    with _lock:
        gallery = _loaded.get(version)
    if gallery is None:
        body = aws.client("s3").get_object(
            Bucket=aws.names().gallery_bucket, Key=snapshot_key(version)
        )
        gallery = Gallery.from_bytes(body["Body"].read())
        with _lock:
            # Keep only the newest: an old version is not asked for again once enroll has run.
            _loaded.clear()
            _loaded[version] = gallery
    if gallery.embedder != embedder:
        raise ValueError(
            f"gallery {version[:12]} was made by {gallery.embedder}, this worker runs {embedder}"
        )
    return gallery
