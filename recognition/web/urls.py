from django.urls import path

from recognition.api.urls import static_urlpatterns
from recognition.web import views

urlpatterns = [
    path("", views.index, name="upload"),
    path("healthz", views.healthz, name="healthz"),
    *static_urlpatterns,  # the API docs page's assets
]
