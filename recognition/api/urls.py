from pathlib import Path

import ninja
from django.http import HttpRequest, HttpResponse
from django.urls import path, re_path
from django.views.decorators.http import require_GET
from django.views.static import serve

from recognition.api.views import api

# Swagger UI's script and style ship inside django-ninja; served from here, the docs page
# needs no network (gunicorn serves no other static files).
NINJA_STATIC = Path(ninja.__file__).parent / "static" / "ninja"


@require_GET
def docs(request: HttpRequest) -> HttpResponse:
    """A readable page of the OpenAPI schema (Swagger UI, from local assets)."""
    return api.docs.render_page(request, api)


urlpatterns = [
    path("v1/", api.urls),
    path("docs", docs, name="api-docs"),
]

static_urlpatterns = [
    re_path(r"^static/ninja/(?P<path>[\w./-]+)$", serve, {"document_root": NINJA_STATIC}),
]
