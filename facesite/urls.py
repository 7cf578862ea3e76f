from django.contrib import admin
from django.urls import include, path

from facesite.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("recognition.api.urls")),
    path("metrics", metrics_view, name="metrics"),
    path("dashboard/", include("operations.urls")),
    path("", include("recognition.web.urls")),
]
