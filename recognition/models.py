"""What the recognition app stores: the upload history and the enrolled gallery."""

import uuid

from django.db import models


def file_stem(file_name: str) -> str:
    """`test_00.jpg` -> `test_00`: the output bucket's key and the first part of the reply."""
    return file_name.rsplit(".", 1)[0] if "." in file_name else file_name


class UploadRequest(models.Model):
    """One request with model work (a course upload or a service API call), from arrival to
    reply; completed by the response consumer."""

    class Kind(models.TextChoices):
        UPLOAD = "upload", "upload (POST /)"
        RECOGNIZE = "recognize", "API recognize"
        DETECT = "detect", "API detect"
        VERIFY = "verify", "API verify"
        EMBED = "embed", "API example"

    class Status(models.TextChoices):
        RECEIVED = "received", "received"
        STORED = "stored", "stored in S3"
        QUEUED = "queued", "queued"
        DONE = "done", "recognised"
        NO_FACE = "no_face", "no face found"
        FAILED = "failed", "failed"

    FINAL_STATUSES = (Status.DONE, Status.NO_FACE, Status.FAILED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    file_name = models.CharField(max_length=255, db_index=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.UPLOAD, db_index=True)
    s3_version = models.CharField(max_length=128, blank=True)
    gallery_version = models.CharField(max_length=64, blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.RECEIVED, db_index=True
    )
    name = models.CharField(max_length=255, blank=True)
    distance = models.FloatField(null=True, blank=True)
    faces = models.PositiveIntegerField(null=True, blank=True)
    # The status the worker's result asked for, and the one the client was actually sent (a
    # 504 when the result came after the wait).
    result_status = models.PositiveSmallIntegerField(null=True, blank=True)
    reply_status = models.PositiveSmallIntegerField(null=True, blank=True)
    worker_instance_id = models.CharField(max_length=64, blank=True, db_index=True)
    # The web process waiting for the result: the host:port of its wake socket.
    reply_to = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    # The worker's outcome (a recognition.lifecycle.Outcome value) and, for API calls, the JSON
    # result it sent: the reply is built from them in whichever process waits.
    outcome = models.CharField(max_length=32, blank=True)
    result = models.JSONField(null=True, blank=True)
    received_at = models.DateTimeField(db_index=True)
    stored_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    replied_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]
        verbose_name = "request"

    def __str__(self) -> str:
        return f"{self.file_name} ({self.status})"


class Identity(models.Model):
    """A person in the gallery; the label is the enrolment folder's name."""

    name = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "identities"

    def __str__(self) -> str:
        return self.name


class FaceSample(models.Model):
    """One enrolled face: its embedding (float32 bytes), where it came from, what made it."""

    identity = models.ForeignKey(Identity, on_delete=models.CASCADE, related_name="samples")
    embedder = models.CharField(max_length=64)
    embedding = models.BinaryField()
    source_image = models.CharField(max_length=512)
    # Set by enroll: further from the mean of its person's other examples than two photos of
    # one person usually are, so likely someone else (see enrollment.disagreeing_examples).
    disagrees = models.BooleanField(
        default=False,
        help_text="Far from this person's other examples: likely another person's face.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["identity__name", "source_image"]
        constraints = [
            models.UniqueConstraint(
                fields=["embedder", "source_image"], name="one_sample_per_image_and_embedder"
            )
        ]

    def __str__(self) -> str:
        return f"{self.identity.name}: {self.source_image}"


class GallerySnapshot(models.Model):
    """A versioned, content-addressed export of the gallery that worker processes load."""

    version = models.CharField(max_length=64, unique=True)
    embedder = models.CharField(max_length=64, db_index=True)
    identities = models.PositiveIntegerField()
    samples = models.PositiveIntegerField()
    data = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        get_latest_by = "created_at"

    def __str__(self) -> str:
        return f"{self.embedder} {self.version[:12]} ({self.identities} identities)"
