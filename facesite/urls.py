from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("recognition.api.urls")),
    path("", include("recognition.web.urls")),
]
