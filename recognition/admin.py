"""Read-only admin views: the request history and the enrolled gallery."""

from django.contrib import admin

from facesite.admin import ReadOnlyAdmin
from recognition.models import FaceSample, GallerySnapshot, Identity, UploadRequest


@admin.register(UploadRequest)
class UploadRequestAdmin(ReadOnlyAdmin):
    list_display = (
        "file_name",
        "kind",
        "status",
        "name",
        "distance",
        "reply_status",
        "worker_instance_id",
        "received_at",
        "total_ms",
    )
    list_filter = ("kind", "status", "reply_status", "result_status", "worker_instance_id")
    search_fields = ("id", "file_name", "name", "error")
    date_hierarchy = "received_at"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "file_name",
                    "kind",
                    "status",
                    "outcome",
                    "name",
                    "distance",
                    "faces",
                    "error",
                    "result",
                )
            },
        ),
        (
            "Stages",
            {
                "fields": (
                    "received_at",
                    "stored_at",
                    "queued_at",
                    "started_at",
                    "finished_at",
                    "replied_at",
                )
            },
        ),
        (
            "Where",
            {
                "fields": (
                    "worker_instance_id",
                    "reply_to",
                    "s3_version",
                    "gallery_version",
                    "result_status",
                    "reply_status",
                )
            },
        ),
    )

    @admin.display(description="total (ms)")
    def total_ms(self, row: UploadRequest) -> int | None:
        end = row.replied_at or row.finished_at
        return round((end - row.received_at).total_seconds() * 1000) if end else None


class FaceSampleInline(admin.TabularInline):
    model = FaceSample
    fields = ("source_image", "embedder", "disagrees", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False


@admin.register(Identity)
class IdentityAdmin(admin.ModelAdmin):
    list_display = ("name", "sample_count", "created_at")
    search_fields = ("name",)
    inlines = [FaceSampleInline]

    @admin.display(description="samples")
    def sample_count(self, identity: Identity) -> int:
        return identity.samples.count()


@admin.register(FaceSample)
class FaceSampleAdmin(ReadOnlyAdmin):
    """Enrolled examples; the filter finds the ones that disagree with the rest of their
    person (likely the wrong face), which an operator checks and deletes or re-enrols."""

    list_display = ("source_image", "identity", "embedder", "disagrees", "created_at")
    list_filter = ("disagrees", "embedder")
    search_fields = ("source_image", "identity__name")
    exclude = ("embedding",)


@admin.register(GallerySnapshot)
class GallerySnapshotAdmin(ReadOnlyAdmin):
    list_display = ("version", "embedder", "identities", "samples", "created_at")
    list_filter = ("embedder",)
    exclude = ("data",)
