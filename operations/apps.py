from django.apps import AppConfig


class OperationsConfig(AppConfig):
    """/metrics' database-backed series and the staff dashboard at /dashboard/."""

    name = "operations"
    verbose_name = "operations"

    def ready(self) -> None:
        from facesite.metrics import add_collector
        from operations.collector import DatabaseCollector

        add_collector(DatabaseCollector())
