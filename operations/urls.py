from django.urls import path
from django.views.static import serve

from operations import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("data.json", views.data, name="dashboard-data"),
    # The page's own script and the vendored chart library. The web tier has no static file
    # server (gunicorn alone); these few small files are served by Django itself.
    path("assets/<path:path>", serve, {"document_root": views.ASSETS_DIR}, name="dashboard-asset"),
]
